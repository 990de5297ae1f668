"""GPU resources: batch sizes from free memory, out-of-memory detection, and precision policy.

Forward-only work and attacks may use TF32 or bfloat16 autocast (``precision``); second-order
quantities (Hessian products, sharpness, relative flatness) always run in the model's own
dtype with TF32 off, never silently in reduced precision.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ._data import accepts_channels_last, has_conv2d

PRECISIONS = ("fp32", "tf32", "bf16")


def is_oom(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (the typed one, or the older RuntimeError message)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_cuda_memory(device: torch.device | str) -> None:
    if torch.cuda.is_available() and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def suggest_batch_size(model: nn.Module, sample: torch.Tensor, device: torch.device | str, *,
                       default: int = 128, limit: int = 1024, fraction: float = 0.5) -> int:
    """A batch size for measures that backpropagate: ``default`` on the CPU; on CUDA, the largest
    power of two whose forward + backward (probed at batch 8) fits in ``fraction`` of free memory."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return default
    probe = 8
    x = sample[:1].expand(probe, *sample.shape[1:]).to(device).clone().requires_grad_(True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.enable_grad():
        out = model(x)
        (g,) = torch.autograd.grad(out.float().logsumexp(1).sum(), x, create_graph=True)
        g.sum().backward(inputs=[x])  # a second-order pass, as the measures do
    per_sample = max((torch.cuda.max_memory_allocated(device) - base) / probe, 1.0)
    del x, out, g
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    fits = int(fraction * free / per_sample)
    size = 1
    while size * 2 <= min(fits, limit):
        size *= 2
    return max(size, 1)


def check_precision(precision: str, device: torch.device | str | None) -> None:
    """Refuse a precision this run cannot use: an unknown name, or bf16 autocast off CUDA
    (``device`` None: not known yet, a remote executor's workers choose it)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"precision: bf16 autocast is for CUDA devices, and this run is on {device}; use fp32 "
                         "(tf32 is the same as fp32 off CUDA)")


@contextlib.contextmanager
def forward_precision(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """TF32 or bfloat16 autocast for forward-only work and attacks on CUDA (``fp32``: unchanged)."""
    check_precision(precision, device)
    device = torch.device(device)
    if precision == "fp32" or device.type != "cuda":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with ctx:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def exact_precision() -> Iterator[None]:
    """Full precision for second-order quantities: TF32 off, autocast off."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def prefer_channels_last(model: nn.Module, device: torch.device | str, sample: torch.Tensor) -> nn.Module:
    """Convolutional models on CUDA run faster with channels_last memory layout.

    The weights are converted (so convolutions return channels_last activations) only when the
    forward still runs on ``sample`` (a batch on ``device``) that way: a forward that reshapes
    activations with ``.view`` fails on that layout, and such a model keeps its own layout.
    """
    if torch.device(device).type == "cuda" and has_conv2d(model):
        return channels_last_if_accepted(model, sample)
    return model


def channels_last_if_accepted(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """``model`` with channels_last weights if its forward runs on two samples of ``sample`` that
    way (without gradients, in eval mode, modes put back); else with contiguous weights again."""
    model = model.to(memory_format=torch.channels_last)
    if not accepts_channels_last(model, sample):
        model = model.to(memory_format=torch.contiguous_format)
    return model
