"""Scoring at scale, checked on the CPU: out-of-memory fallback, shared forward passes, precision policy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flatplug as fp
from flatplug._resources import exact_precision, forward_precision, is_oom, suggest_batch_size
from flatplug.scoring import score
from flatplug.sources import ZooSource, load_imagefolder
from conftest import shared_path

MEASURES = {
    "relative_flatness": {},
    "hessian_eigenvalues": {"k": 2, "max_iter": 30, "tol": 1e-6},
    "local_flatness": {"steps": 3, "random_start": False},
}
ATTACK = {"name": "pgd", "eps": 2 / 255, "steps": 3, "step_size": 1 / 255, "random_start": False}


class OOMAbove(nn.Module):
    """A real zoo model that raises CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, inner: nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit, self.calls = inner, limit, 0

    def forward(self, x):
        if x.shape[0] > self.limit:
            self.calls += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated for a batch of {x.shape[0]})")
        return self.inner(x)


@pytest.fixture(scope="module")
def real():
    zoo, cifar = shared_path("models", "zoo.json"), shared_path("data", "cifar10", "test.tar.gz")
    loaded = ZooSource(zoo).load("marabou_small")
    x, y = load_imagefolder(cifar, n=48)
    return loaded, x, y


def test_out_of_memory_halves_the_batch_and_gives_the_small_batch_values(tmp_path, real):
    loaded, x, y = real
    wrapped = OOMAbove(loaded.module, limit=12)
    big = fp.LoadedModel("m", wrapped, "cifar10", metadata={"source": "zoo"})
    with pytest.warns(RuntimeWarning, match="out of memory"):
        frame_big = score([big], ("cifar", x, y), measures=MEASURES, attack=ATTACK, store=tmp_path / "a.db",
                          batch_size=48, device="cpu", quiet=True)
    assert wrapped.calls > 0
    small = fp.LoadedModel("m", loaded.module, "cifar10", metadata={"source": "zoo"})
    frame_small = score([small], ("cifar", x, y), measures=MEASURES, attack=ATTACK, store=tmp_path / "b.db",
                        batch_size=12, device="cpu", quiet=True)
    assert (frame_big["status"] == "ok").all(), frame_big["error"].tolist()
    a = frame_big.set_index("name")
    b = frame_small.set_index("name")
    for name in ("clean", "pgd", "relative_flatness"):
        assert a.loc[name, "value"] == pytest.approx(b.loc[name, "value"], rel=1e-6), name
    for name in ("hessian_eigenvalues", "local_flatness"):  # float summation order differs only
        assert a.loc[name, "value"] == pytest.approx(b.loc[name, "value"], rel=1e-4), name
    assert a.loc["hessian_eigenvalues", "details"]["batch_size"] == 12


def test_shared_forward_gives_the_values_of_separate_calls(tmp_path, real):
    loaded, x, y = real
    frame = score([loaded], ("cifar", x, y), measures={"relative_flatness": {"variant": "trace"}}, attack=ATTACK,
                  store=tmp_path / "s.db", batch_size=16, device="cpu", quiet=True).set_index("name")
    assert frame.loc["relative_flatness", "details"]["shared_forward"] is True
    direct = fp.measures.relative_flatness(loaded.module, (x, y), variant="trace")
    assert frame.loc["relative_flatness", "value"] == pytest.approx(direct.value, rel=1e-6)
    with torch.no_grad():
        clean = float((loaded.module(x).argmax(1) == y).float().mean())
    assert frame.loc["clean", "value"] == pytest.approx(clean, abs=1e-9)


def test_precision_policy_and_helpers():
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory")) and is_oom(RuntimeError("CUDA out of memory."))
    assert not is_oom(ValueError("out of range"))
    with pytest.raises(ValueError, match="bf16 autocast is for CUDA"):
        with forward_precision("cpu", "bf16"):
            pass
    with pytest.raises(ValueError, match="precision"):
        with forward_precision("cpu", "fp16"):
            pass
    before = torch.backends.cuda.matmul.allow_tf32
    with forward_precision("cpu", "tf32"), exact_precision():
        assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert suggest_batch_size(nn.Linear(3, 2), torch.rand(4, 3), "cpu") == 128
    with pytest.raises(ValueError, match="precision"):
        score([], ("c", torch.rand(2, 3), torch.zeros(2, dtype=torch.long)), precision="fp8")
