"""flatplug-art registers through the flatplug hooks, lazily (listing plugins does not import ART)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("art")

from art_support import classifier, one_thread  # noqa: E402,F401
from conftest import tiny_batch, tiny_mlp  # noqa: E402

import flatplug as fp  # noqa: E402
import flatplug_art as fa  # noqa: E402
from flatplug import plugins  # noqa: E402

TRAINERS = {"art.lfr": fa.LFRTrainer, "art.sam": fa.SAMTrainer, "art.awp": fa.AWPTrainer, "art.fam": fa.FAMTrainer,
            "art.flat-adversarial": fa.FlatAdversarialTrainer}
METHODS = ("art.pgd-at+sam", "art.pgd-at+asam", "art.pgd-at+fam")
MEASURES = ("art.relative_flatness", "art.hessian_eigenvalues", "art.hessian_trace", "art.sharpness",
            "art.local_flatness")


def test_everything_is_registered_by_the_art_plugin():
    registered = {(r.kind, r.name): r.plugin for r in plugins.all_registered()}
    for name in [*TRAINERS, *METHODS, "art.flat-classifier"]:
        assert registered[("trainers", name)] == "art"
    for name in MEASURES:
        assert registered[("measures", name)] == "art"
    for core in ("standard", "pgd-at", "lfr", "sam", "asam", "awp", "fam"):
        assert registered[("trainers", core)] == "flatplug"  # no clash with the core's names


def test_registered_trainers_build_the_art_classes():
    clf = classifier(0)
    for name, cls in TRAINERS.items():
        kwargs = {"rho": 0.1} if name == "art.sam" else {"eps": 0.1}
        if name == "art.fam":
            kwargs = {"lam": 0.1}
        assert type(plugins.get("trainers", name)(clf, **kwargs)) is cls
    built = plugins.get("trainers", "art.flat-classifier")(
        clf.model, clf.loss, (1, 28, 28), 10, optimizer=clf.optimizer, clip_values=(0, 1), method="sam", rho=0.1)
    assert type(built) is fa.FlatPyTorchClassifier and built.flat_method.rho == 0.1


def test_art_trainer_names_are_not_methods_for_fp_train():
    with pytest.raises(TypeError, match="'art.lfr' builds the ART LFRTrainer as LFRTrainer\\(classifier, ...\\)"):
        fp.train(tiny_mlp(), [tiny_batch()], method="art.lfr", epochs=1, eps=0.1, quiet=True)


def test_listing_plugins_does_not_import_art():
    code = ("import sys, flatplug as fp; names = fp.list_plugins('trainers') + fp.list_plugins('measures'); "
            "assert 'art.lfr' in names and 'art.hessian_trace' in names; print('art' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", MEASURES)
def test_art_measures_are_refused_by_scoring_before_any_work(name, tmp_path):
    """Scoring hands measures the zoo's torch modules; the art.* measures take an ART classifier, so
    every model failed with "data must be a pair (x, y) of numpy arrays". fp.score now refuses them up
    front, naming the core measure to use; fp.measure on an ART classifier still computes them."""
    x, y = tiny_batch(8, 5, 3)
    store = tmp_path / "s.db"
    model = fp.LoadedModel("m", tiny_mlp().float(), "custom", metadata={"source": "test"})
    core = name.split(".", 1)[1]
    with pytest.raises(ValueError, match=f"score the core measure '{core}' instead"):
        fp.score([model], (x.float(), y), measures=[name], store=store, device="cpu", quiet=True)
    assert not store.exists()
