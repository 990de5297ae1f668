"""Gradient masking, flagged (issue 12): both rules on real zoo models, and on a model built to mask.

Oracles: robust accuracies from a PGD written here from scratch (no random start), the gradients
of a model whose output is a hard argmax (exactly zero), and the documented rule constants.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatplug as fp
from conftest import plain_pgd, shared_path
from flatplug.report import build_report, summary_table
from flatplug.scoring import MASKING_MARGIN, VANISHING_FRACTION, ModelSpec
from flatplug.sources import ZooSource, load_imagefolder

EPS = 8 / 255


class HardArgmax(nn.Module):
    """A real zoo model followed by a hard argmax: the same predictions, and every input gradient exactly
    zero (``0 * logits`` keeps the graph, so gradient attacks run and find nothing to follow)."""

    def __init__(self, inner: nn.Module, scale: float = 20.0):
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        logits = self.inner(x)
        return F.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype) * self.scale + 0.0 * logits


def plain_pgd_accuracy(model, x, y, eps, steps, alpha):
    """Robust accuracy under L-inf PGD without random start, written from scratch with plain torch."""
    adv = plain_pgd(model, x, y, eps, steps, alpha)
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def real():
    zoo = shared_path("models", "zoo.json")
    x, y = load_imagefolder(shared_path("data", "cifar10", "test.tar.gz"), n=48)
    return zoo, x, y


def _attacks(weak_steps: int, weak_alpha: float, strong_steps: int):
    return [{"name": "pgd", "eps": EPS, "steps": weak_steps, "step_size": weak_alpha, "random_start": False},
            {"name": "pgd", "eps": EPS, "steps": strong_steps, "step_size": 2.5 * EPS / strong_steps,
             "random_start": False}]


def _masking(frame):
    rows = frame[frame["kind"] == "attack"].sort_values("created")
    return [r["details"].get("gradient_masking") for _, r in rows.iterrows()]


def test_two_attacks_are_recorded_and_the_gap_rule_matches_plain_pgd(tmp_path, real):
    """Guards against a masking check that ignores the stronger attack, compares the wrong pair, or uses
    another margin than the documented one: the flag must equal (weak - strong > MASKING_MARGIN) computed
    from a PGD written here, both when it fires (a 1-step, tiny-step PGD) and when it does not (PGD-10)."""
    zoo, x, y = real
    model = ZooSource(zoo).load("marabou_small").module
    spec = ModelSpec.of("zoo", "marabou_small", manifest=str(zoo))
    strong = plain_pgd_accuracy(model, x, y, EPS, 20, 2.5 * EPS / 20)
    for weak_steps, weak_alpha, fires in ((1, EPS / 8, True), (10, 2.5 * EPS / 10, False)):
        weak = plain_pgd_accuracy(model, x, y, EPS, weak_steps, weak_alpha)
        assert (weak - strong > MASKING_MARGIN) is fires, (weak, strong)  # the setting exercises the rule
        frame = fp.score([spec], ("cifar", x, y), measures=[], attack=_attacks(weak_steps, weak_alpha, 20),
                         store=tmp_path / f"m{weak_steps}.db", device="cpu", quiet=True)
        assert (frame["status"] == "ok").all(), frame["error"].tolist()
        attacks = frame[frame["kind"] == "attack"]
        assert len(attacks) == 2
        values = sorted(attacks["value"])
        assert values == pytest.approx(sorted([weak, strong]), abs=1.5 / len(y))
        first, second = _masking(frame)
        assert first["rule"] == "vanishing gradients" and first["vanishing_fraction"] == 0.0
        assert second["rule"] == "stronger attack" and second["margin"] == MASKING_MARGIN
        assert second["gap"] == pytest.approx(weak - strong, abs=1.5 / len(y))
        assert second["flagged"] is fires
        table = summary_table(tmp_path / f"m{weak_steps}.db")
        assert table.loc[0, "gradient_masking"] == float(fires)


def test_a_model_with_a_hard_argmax_output_is_flagged_and_an_honest_one_is_not(tmp_path, real):
    """Guards against a vanishing-gradient rule that never fires (or fires on confident honest models):
    the argmax model's gradients are exactly zero on every sample, the zoo model's nowhere."""
    zoo, x, y = real
    loaded = ZooSource(zoo).load("oval_base")
    masked = fp.LoadedModel("oval_base_argmax", HardArgmax(loaded.module), "cifar10", metadata={"source": "test"})
    x_req = x[:8].clone().requires_grad_(True)
    loss = F.cross_entropy(masked.module(x_req), y[:8])
    (g,) = torch.autograd.grad(loss, x_req)
    assert torch.count_nonzero(g) == 0  # the model really hides its gradients
    frame = fp.score([loaded, masked], ("cifar", x, y), measures=[],
                     attack={"name": "pgd", "eps": EPS, "steps": 5, "random_start": False},
                     store=tmp_path / "s.db", device="cpu", quiet=True)
    assert (frame["status"] == "ok").all(), frame["error"].tolist()
    by_model = {m: _masking(frame[frame["model"] == m])[0] for m in ("oval_base", "oval_base_argmax")}
    assert by_model["oval_base_argmax"]["vanishing_fraction"] == 1.0 > VANISHING_FRACTION
    assert by_model["oval_base_argmax"]["flagged"] is True
    assert by_model["oval_base"]["vanishing_fraction"] == 0.0 and by_model["oval_base"]["flagged"] is False
    # PGD learns nothing from zero gradients: the masked model keeps its clean accuracy under attack
    rows = frame[frame["model"] == "oval_base_argmax"].set_index("name")
    assert rows.loc["pgd", "value"] == rows.loc["clean", "value"]
    table = summary_table(tmp_path / "s.db").set_index("model")
    assert table.loc["oval_base_argmax", "gradient_masking"] == 1.0 and table.loc["oval_base", "gradient_masking"] == 0
    page = build_report(tmp_path / "s.db", tmp_path / "rep", n_boot=10).read_text()
    section = page.split('id="masking"')[1].split('id="landscapes"')[0]
    assert "Gradient masking flagged for oval_base_argmax." in section and "vanish on 100%" in section
