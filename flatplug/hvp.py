"""Hessian-vector products of the mean loss over a data set, as a linear operator on flat vectors.

The Hessian is that of ``L(w) = (1/N) sum_i loss_i(w)`` over *all* N samples of ``data`` with
respect to the selected parameters (Pearlmutter 1994, "Fast exact multiplication by the Hessian").
Each product is the double backward ``d/dw <grad L(w), v>``; over several batches whose graphs
are not kept (below) the products are accumulated batch by batch (weight ``n_b / N``), so only
one batch's graph is alive at a time.

With a single batch (or ``cache_graph=True``) the first-order graph ``grad L`` is built once with
``create_graph=True`` and kept, so every further product costs one double backward instead of a
forward, a backward and a double backward. With several batches and ``cache_graph="auto"`` the
graphs of all batches are kept when they fit: after the first batch's graph is built, the memory
it took (CUDA's allocator; on a CPU glibc's heap in use and the resident memory, the larger
increase: :mod:`flatplug._memory`) times the number of batches
left must be at most ``AUTO_CACHE_SHARE`` of the memory still available (half on CUDA, a quarter
on a CPU, where running out kills the process); otherwise, or where memory cannot be read, the
products stream batch by batch (on ``resnet4b``, 2.1x a gradient per batch kept against 3.5x
streamed: ``benchmarks/hvp_cost.py``).

``hvp="forward-over-reverse"`` computes each product instead as the forward-mode derivative of
the gradient, ``torch.func.jvp`` over ``torch.func.grad`` of the loss as a function of the
parameters (``torch.func.functional_call``): no graph is kept, but every product redoes the
forward and backward passes. Measured on the CPU (``benchmarks/hvp_cost.py``) the double
backward with its kept graph is faster on both resnet4b and WideResNet-28-10 (1.8x and 2.3x a
gradient, against 3.3x and 3.4x; without a kept graph the two are within about 10% of each other,
either way round), so
``"auto"`` uses it; a model whose
forward the ``torch.func`` transforms cannot run (in-place updates of captured tensors, ``.item()``
on parameters, BatchNorm in train mode) falls back to the double backward with a warning.

On a CPU, image batches of a convolutional model are passed in channels_last memory layout when
its forward accepts that layout (:func:`flatplug._data.cpu_channels_last`): oneDNN's
convolutions are faster on it (on resnet4b a product and the gradient graph both take
about 16% less time); the numbers are the same up to float rounding. The gradient graph that
the double backward differentiates is recorded with :func:`flatplug._second_order.second_order_layers`,
whose convolutions and eval-mode BatchNorm layers have fast derivatives (on a CPU a product takes
0.87x the stock graph's time on resnet4b and 0.78x on oval_wide: ``benchmarks/hvp_cost.py``, its
"stock autograd graph" row; the BatchNorm part alone 0.83x on a WideResNet-16-4 at batch 32).

Callers wrap the operator's whole life in :func:`flatplug._state.preserved`: the operator turns
``requires_grad`` on for the selected parameters and off for the others, and ``preserved`` puts
the flags back.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Callable, ContextManager, Iterator

import torch
from torch import nn

from ._data import Batches, cpu_channels_last, model_device_dtype
from ._loss import LossFn, cross_entropy, per_sample_loss, resolve_loss
from ._memory import growth, memory_available, reading
from ._params import ParamSpec, select_params
from ._second_order import second_order_layers
from ._validation import check_logits

__all__ = ["HVP_MODES", "HessianOperator", "check_int"]

#: ways to compute a product (see the module docstring)
HVP_MODES = ("auto", "double-backward", "forward-over-reverse")

#: the share of the available memory that the kept graphs of several batches may take under
#: ``cache_graph="auto"``, by device type (a CPU that runs out of memory kills the process)
AUTO_CACHE_SHARE = {"cuda": 0.5, "cpu": 0.25}


def check_int(value: object, name: str, *, lo: int | None = 1) -> None:
    """An integer (not a bool) no smaller than ``lo``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo):
        need = "an integer" if lo is None else f"an integer >= {lo}"
        raise ValueError(f"{name}: expected {need}, got {value!r}")


class HessianOperator:
    """The Hessian of the mean loss over ``data`` w.r.t. ``params``, acting on flat vectors.

    ``data`` is ``(x, y)``, an iterable of batches, or a :class:`Batches`. ``params`` selects
    parameters by name, module or tensor (default: all). ``loss_fn(logits, y)`` returns
    per-sample losses (default cross-entropy). ``cache_graph``: ``"auto"`` keeps the gradient
    graph of a single batch, and those of several batches when they fit in memory (see the module
    docstring), ``True`` keeps it for all batches at once (memory permitting; it falls back to
    streaming on out-of-memory), ``False`` never keeps it.
    ``hvp``: ``"double-backward"`` (Pearlmutter's reverse-over-reverse), ``"forward-over-reverse"``
    (``torch.func.jvp`` of ``torch.func.grad``) or ``"auto"`` (the double backward, the faster of
    the two on every model measured so far). Both give the same products up to float rounding.
    A custom ``loss_fn`` that depends on the parameters other than through the logits (a weight
    penalty closing over the model) is invisible to ``torch.func.functional_call``: asked for
    forward-over-reverse, the operator detects it and falls back to the double backward with a
    warning.

    Flat vectors follow the order of ``param_names`` (that of ``model.named_parameters()``).
    """

    def __init__(
        self,
        model: nn.Module,
        data: object,
        *,
        params: ParamSpec = None,
        loss_fn: LossFn | None = None,
        cache_graph: bool | str = "auto",
        hvp: str = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if cache_graph not in (True, False, "auto"):
            raise ValueError(f"cache_graph: expected True, False or 'auto', got {cache_graph!r}")
        if hvp not in HVP_MODES:
            raise ValueError(f"hvp: expected one of {', '.join(map(repr, HVP_MODES))}, got {hvp!r}")
        self.hvp: str = "double-backward" if hvp == "auto" else hvp
        self.model = model
        self.batches = data if isinstance(data, Batches) else Batches(data)
        self.loss_fn = resolve_loss(loss_fn)
        named = select_params(model, params)
        self.param_names: list[str] = [n for n, _ in named]
        self.params: list[nn.Parameter] = [p for _, p in named]
        for p in self.params:
            if not p.is_floating_point():
                raise TypeError(f"params: parameter of dtype {p.dtype} is not floating point; select floating ones")
        chosen = {id(p) for p in self.params}
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
        self._shapes = [p.shape for p in self.params]
        self._sizes = [p.numel() for p in self.params]
        self.dim: int = sum(self._sizes)
        self.dtype: torch.dtype = self.params[0].dtype
        self.device: torch.device = self.params[0].device
        self._data_device, self._data_dtype = model_device_dtype(model)
        self._channels_last: bool | None = None  # decided on the first batch (cpu_channels_last)
        self.hvp_count = 0
        self.num_samples: int | None = None
        self._loss: float | None = None
        self._grad: torch.Tensor | None = None
        self._single = self.batches.batch_count == 1
        self._cache_setting = cache_graph
        self._want_cache = self.hvp == "double-backward" and cache_graph in (True, "auto")
        self._cached: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ helpers
    def _iter(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.batches.to(self._data_device, self._data_dtype):
            if self._channels_last is None:
                self._channels_last = cpu_channels_last(self.model, x)
            if self._channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _batch_loss_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = check_logits(self.model(x), y)
        return per_sample_loss(self.loss_fn, logits, y).sum()

    def _recording(self, create_graph: bool) -> ContextManager[object]:
        """Where a gradient graph to be differentiated again is recorded: convolutions and eval-mode
        BatchNorm layers switched to formulations with fast derivatives
        (:mod:`flatplug._second_order`)."""
        return second_order_layers(self.model) if create_graph else nullcontext()

    def _grads(self, loss: torch.Tensor, *, create_graph: bool) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params)]

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        if not isinstance(v, torch.Tensor) or v.shape != (self.dim,):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"v: expected a flat tensor of shape [{self.dim}], got {shape}")
        chunks = torch.split(v.to(self.device), self._sizes)
        return [c.reshape(s).to(p.dtype) for c, s, p in zip(chunks, self._shapes, self.params)]

    def _flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """One flat vector in ``param_names`` order. Each tensor is copied straight into its slot:
        weight gradients of a channels_last graph come in that layout, and ``reshape(-1)`` then
        ``cat`` would copy them twice (for WideResNet-28-10, 146 MB each time)."""
        out = torch.empty(self.dim, dtype=self.dtype, device=self.device)
        for slot, t in zip(torch.split(out, self._sizes), tensors):
            slot.view(t.shape).copy_(t)
        return out

    def _double_backward(self, grads: list[torch.Tensor], vs: list[torch.Tensor], *, retain: bool) -> list[torch.Tensor]:
        live = [(g, v) for g, v in zip(grads, vs) if g.requires_grad]
        if not live:  # the gradient does not depend on the parameters: H = 0
            return [torch.zeros_like(p) for p in self.params]
        out = torch.autograd.grad(
            [g for g, _ in live], self.params, grad_outputs=[v for _, v in live], retain_graph=retain, allow_unused=True
        )
        return [torch.zeros_like(p) if h is None else h for h, p in zip(out, self.params)]

    def _summed_grads(self, create_graph: bool, *, within_budget: bool = False
                      ) -> tuple[list[torch.Tensor], float, int] | None:
        """Gradients of the per-batch loss sums added over all batches, the loss sum and the sample
        count. ``within_budget``: None, with nothing kept, as soon as the first batch shows that
        the graphs of all batches would not fit (:meth:`_rest_fits`)."""
        total: list[torch.Tensor] | None = None
        loss_sum = 0.0
        count = 0
        before = reading(self.device) if within_budget else None
        with torch.enable_grad(), self._recording(create_graph):
            for i, (x, y) in enumerate(self._iter()):
                s = self._batch_loss_sum(x, y)
                g = self._grads(s, create_graph=create_graph)
                total = g if total is None else [a + b for a, b in zip(total, g)]
                loss_sum += float(s.detach())
                count += x.shape[0]
                if within_budget and i == 0 and not self._rest_fits(before):
                    return None
        assert total is not None  # Batches raises on empty data
        return total, loss_sum, count

    def _rest_fits(self, before: tuple[int | None, int | None]) -> bool:
        """After the first batch's graph is built: whether the graphs of the other batches, each
        taking what the first did, fit in ``AUTO_CACHE_SHARE`` of the memory still available."""
        batches = self.batches.batch_count
        share = AUTO_CACHE_SHARE.get(self.device.type)
        taken, available = growth(before, reading(self.device)), memory_available(self.device)
        if None in (batches, share, taken, available):
            return False
        return (batches - 1) * taken <= share * available

    def _build_cache(self) -> None:
        """First-order graph of the mean loss over all batches, kept for repeated products."""
        try:
            built = self._summed_grads(create_graph=True, within_budget=self._cache_setting == "auto"
                                       and not self._single)
        except torch.OutOfMemoryError:
            built = None  # (drops what was built)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            warnings.warn(
                "HessianOperator: the gradient graphs of all batches do not fit in memory; "
                "falling back to one batch at a time (cache_graph=False)",
                RuntimeWarning,
                stacklevel=3,
            )
            self._want_cache = False
            return
        if built is None:  # cache_graph="auto", several batches that would not fit: stream them
            self._want_cache = False
            return
        total, loss_sum, count = built
        self.num_samples = count
        self._cached = [g / count for g in total]
        self._loss = loss_sum / count
        self._grad = self._flat([g.detach() for g in self._cached])

    def _streamed(self, product: Callable[[torch.Tensor, torch.Tensor], tuple[list, list, float]]) -> torch.Tensor:
        """Mean ``H v`` over the batches from ``product(x, y) -> (hv, grad, loss_sum)`` of one batch
        (sums over its samples); records the mean gradient and loss on the way when not known yet."""
        acc: list[torch.Tensor] | None = None
        grad_acc: list[torch.Tensor] | None = None
        loss_sum = 0.0
        count = 0
        for x, y in self._iter():
            hv, g, s = product(x, y)
            acc = hv if acc is None else [a + b for a, b in zip(acc, hv)]
            if self._grad is None:
                grad_acc = g if grad_acc is None else [a + b for a, b in zip(grad_acc, g)]
            loss_sum += s
            count += x.shape[0]
        assert acc is not None  # Batches raises on empty data
        self.num_samples = count
        if self._grad is None and grad_acc is not None:
            self._grad = self._flat(grad_acc).div_(count)
            self._loss = loss_sum / count
        return self._flat(acc).div_(count)

    def _forward_over_reverse(self, vs: list[torch.Tensor]) -> torch.Tensor:
        """``H v`` as ``jvp(grad(loss))`` batch by batch; records the gradient and loss on the way."""
        from torch.func import functional_call, grad_and_value, jvp

        primals = {n: p.detach() for n, p in zip(self.param_names, self.params)}
        tangents = dict(zip(self.param_names, vs))

        def product(x: torch.Tensor, y: torch.Tensor) -> tuple[list, list, float]:
            def loss_of(selected: dict[str, torch.Tensor]) -> torch.Tensor:
                logits = check_logits(functional_call(self.model, selected, (x,)), y)
                return per_sample_loss(self.loss_fn, logits, y).sum()

            (g, s), (hv, _) = jvp(grad_and_value(loss_of), (primals,), (tangents,))
            return [hv[n] for n in self.param_names], [g[n] for n in self.param_names], float(s)

        return self._streamed(product)

    def _streamed_double_backward(self, vs: list[torch.Tensor]) -> torch.Tensor:
        """``H v`` by double backward one batch at a time (no cached graph)."""

        def product(x: torch.Tensor, y: torch.Tensor) -> tuple[list, list, float]:
            with torch.enable_grad():
                with self._recording(True):
                    s = self._batch_loss_sum(x, y)
                    g = self._grads(s, create_graph=True)
                hv = self._double_backward(g, vs, retain=False)
            return hv, [t.detach() for t in g], float(s.detach())

        return self._streamed(product)

    def _loss_reads_params(self) -> bool:
        """Whether a custom ``loss_fn`` depends on the selected parameters other than through the
        logits (e.g. a weight penalty closing over the model). ``functional_call`` swaps the
        parameters only inside the model's forward, so ``torch.func`` would not see that
        dependence: the loss is evaluated on detached logits of the first batch and checked for a
        graph back to any tensor that requires grad (the selected parameters do). Buffers are
        passed as copies so that BatchNorm in train mode leaves its statistics alone."""
        if self.loss_fn is cross_entropy:
            return False
        from torch.func import functional_call

        x, y = next(iter(self._iter()))
        with torch.no_grad():
            logits = functional_call(self.model, {n: b.clone() for n, b in self.model.named_buffers()}, (x,))
        with torch.enable_grad():
            return bool(per_sample_loss(self.loss_fn, check_logits(logits, y), y).requires_grad)

    def _fall_back(self, exc: BaseException | str) -> None:
        why = exc if isinstance(exc, str) else (
            f"torch.func cannot run this model's forward ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        )
        warnings.warn(f"HessianOperator: {why}; falling back to hvp='double-backward'", RuntimeWarning, stacklevel=4)
        self.hvp = "double-backward"
        self._want_cache = self._cache_setting in (True, "auto")

    # ------------------------------------------------------------------ public
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat ``v`` of length ``dim``; returns a flat tensor of ``dtype`` on ``device``."""
        vs = self._split(v)
        if self.hvp == "forward-over-reverse" and not self.hvp_count and self._loss_reads_params():
            self._fall_back("loss_fn depends on the parameters other than through the logits, which "
                            "torch.func.functional_call cannot differentiate")
        if self.hvp == "forward-over-reverse":
            try:
                out = self._forward_over_reverse(vs)
            except (RuntimeError, NotImplementedError) as exc:  # not functional-friendly: use autograd
                if self.hvp_count or isinstance(exc, torch.OutOfMemoryError):
                    raise
                self._fall_back(exc)
            else:
                self.hvp_count += 1
                return out
        if self._want_cache and self._cached is None:
            self._build_cache()
        self.hvp_count += 1
        if self._cached is not None:
            return self._flat(self._double_backward(self._cached, vs, retain=True))
        return self._streamed_double_backward(vs)

    __matmul__ = matvec

    def _first_order(self) -> None:
        if self._want_cache and self._cached is None:
            self._build_cache()
        if self._grad is not None:
            return
        summed = self._summed_grads(create_graph=False)
        assert summed is not None
        grad_acc, loss_sum, count = summed
        self.num_samples = count
        self._grad = self._flat(grad_acc) / count
        self._loss = loss_sum / count

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the mean loss over all samples."""
        self._first_order()
        assert self._grad is not None
        return self._grad.clone()

    def loss(self) -> float:
        """The mean loss over all samples."""
        self._first_order()
        assert self._loss is not None
        return self._loss

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into ``{parameter name: tensor shaped like the parameter}``."""
        return dict(zip(self.param_names, (c.detach() for c in self._split(v))))

    def release(self) -> None:
        """Drop the kept gradient graph (frees its memory; later products rebuild it)."""
        self._cached = None

    def __repr__(self) -> str:
        return (f"HessianOperator(dim={self.dim}, dtype={self.dtype}, device={self.device}, params={len(self.params)}, "
                f"hvp={self.hvp!r})")
