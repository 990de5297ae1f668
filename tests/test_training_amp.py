"""fp.train(amp=True): bfloat16 autocast on CUDA, and a clear error elsewhere.

The CPU suite can check only the refusal: the loop raises before it would enter ``torch.autocast("cuda")`` for a
CPU model (which torch would silently disable, training in float32 while the user asked for bfloat16). What the
autocast path computes needs a GPU: the CUDA test below checks that the step's forward runs in bfloat16 and that
the resulting SGD step equals one written by hand under ``torch.autocast("cuda", dtype=torch.bfloat16)``; it is
skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatplug as fp


def tiny(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def data(n: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_amp_on_a_cpu_model_is_a_clear_error_and_trains_nothing():
    """Guards against dropping the device check: torch.autocast("cuda") on CPU tensors only warns and trains in
    float32, so amp=True would silently not do what it says."""
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"amp: mixed precision is for CUDA models; move the model to a GPU or "
                                         r"pass amp=False"):
        fp.train(model, [data()], method="standard", epochs=1, optimizer=opt, amp=True, quiet=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_amp_false_runs_the_step_without_autocast():
    """The default path computes in the model's own dtype (no autocast is active during the step)."""
    model = tiny()
    seen = []
    model[0].register_forward_hook(
        lambda mod, inp, out: seen.append((torch.is_autocast_enabled(), out.dtype)) if mod.training else None)
    fp.train(model, [data()], method="standard", epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
             quiet=True)
    assert seen and all(s == (False, torch.float32) for s in seen)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="amp=True is bfloat16 autocast on CUDA: needs a GPU")
def test_amp_step_runs_in_bfloat16_and_matches_a_hand_written_autocast_step():
    """Guards against amp=True not entering autocast (forward in float32), autocasting to float16 or on the wrong
    device, and a step that is not plain SGD on the autocast loss: the amp step must be 100x closer to the
    hand-written autocast step than to the float32 step (bfloat16 rounding of the inputs alone moves it ~1e-4)."""
    lr = 1.0
    x, y = data()
    x, y = x.cuda(), y.cuda()
    model, reference, plain = tiny(3).cuda(), tiny(3).cuda(), tiny(3).cuda()
    dtypes = []
    # the training step's forward passes (the loop's eval-mode logits check before training runs in float32)
    model[0].register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype) if mod.training else None)
    fp.train(model, [(x, y)], method="standard", epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
             amp=True, quiet=True)
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    opt = torch.optim.SGD(reference.parameters(), lr=lr)
    reference.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(reference(x), y, reduction="none").mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    fp.train(plain, [(x, y)], method="standard", epochs=1, optimizer=torch.optim.SGD(plain.parameters(), lr=lr),
             quiet=True)
    err = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), reference.parameters()))
    gap = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), plain.parameters()))
    assert gap > 1e-6 and err <= 0.01 * gap, (err, gap)
