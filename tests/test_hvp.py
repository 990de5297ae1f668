"""HessianOperator against the dense autograd Hessian, and Lanczos against torch.linalg.eigh."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ThreeDOutput, dense_hessian, tiny_batch, tiny_mlp
from flatplug._state import preserved
from flatplug.hvp import HessianOperator
from flatplug.lanczos import lanczos, tridiagonal_quadrature

# float64 products of a 39 x 39 Hessian: agreement to rounding (a few hundred ulps of ||H||)
RTOL = 1e-10


@functools.lru_cache(maxsize=None)
def full_hessian() -> torch.Tensor:
    """Dense Hessian of the default tiny net on the default batch (computed once per session)."""
    return dense_hessian(tiny_mlp(), *tiny_batch())


def three_batches(x, y):
    return [(x[:5], y[:5]), (x[5:11], y[5:11]), (x[11:], y[11:])]


def close(a: torch.Tensor, b: torch.Tensor, scale: float) -> bool:
    return float((a - b).abs().max()) <= RTOL * max(scale, 1.0)


@pytest.mark.parametrize("layout", ["one", "three", "three-cached", "one-uncached"])
def test_matvec_matches_dense_hessian(layout):
    model, (x, y) = tiny_mlp(), tiny_batch()
    dense = full_hessian()
    data = (x, y) if layout.startswith("one") else three_batches(x, y)
    cache = {"one": "auto", "three": "auto", "three-cached": True, "one-uncached": False}[layout]
    g = torch.Generator().manual_seed(3)
    with preserved(model):
        op = HessianOperator(model, data, cache_graph=cache)
        assert op.dim == dense.shape[0] == 39
        for _ in range(3):
            v = torch.randn(op.dim, generator=g, dtype=torch.float64)
            assert close(op.matvec(v), dense @ v, float(dense.abs().max() * v.abs().max()) * op.dim)
        assert op.hvp_count == 3


def test_gradient_and_loss_are_the_mean_over_all_samples():
    model, (x, y) = tiny_mlp(), tiny_batch()
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = torch.cat([t.reshape(-1) for t in grads])
    for data in [(x, y), three_batches(x, y)]:
        with preserved(model):
            op = HessianOperator(model, data)
            assert abs(op.loss() - float(loss.detach())) <= 1e-12
            assert torch.allclose(op.gradient(), expected, rtol=0, atol=1e-12)
            # after products, too (streaming records them on the way)
            op2 = HessianOperator(model, data)
            op2.matvec(torch.ones(op2.dim, dtype=torch.float64))
            assert torch.allclose(op2.gradient(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spec", ["names", "module", "tensors", "module-name"])
def test_parameter_subsets(spec):
    model, (x, y) = tiny_mlp(), tiny_batch()
    params, names = {
        "names": (["2.weight", "0.bias"], ["0.bias", "2.weight"]),
        "module": (model[2], ["2.weight", "2.bias"]),
        "tensors": ([model[0].weight], ["0.weight"]),
        "module-name": ("0", ["0.weight", "0.bias"]),
    }[spec]
    dense = dense_hessian(model, x, y, names)
    with preserved(model):
        op = HessianOperator(model, three_batches(x, y), params=params)
        assert op.param_names == names
        assert op.dim == dense.shape[0]
        eye = torch.eye(op.dim, dtype=torch.float64)
        cols = torch.stack([op.matvec(e) for e in eye], 1)
        assert close(cols, dense, float(dense.abs().max()) * op.dim)


def test_custom_loss_scales_the_hessian():
    model, (x, y) = tiny_mlp(), tiny_batch()
    dense = full_hessian()
    v = torch.linspace(-1, 1, 39, dtype=torch.float64)
    with preserved(model):
        op = HessianOperator(model, (x, y), loss_fn=lambda z, t: 3.0 * F.cross_entropy(z, t, reduction="none"))
        assert close(op.matvec(v), 3.0 * dense @ v, 3.0 * float(dense.abs().max()) * 39)


def test_unused_parameter_gives_zero_rows():
    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_mlp()
            self.spare = nn.Parameter(torch.ones(2, dtype=torch.float64))

        def forward(self, x):
            return self.net(x)

    model, (x, y) = WithSpare(), tiny_batch()
    dense = dense_hessian(model, x, y)  # zero rows/columns for `spare`
    with preserved(model):
        op = HessianOperator(model, (x, y))
        assert op.dim == 41
        eye = torch.eye(op.dim, dtype=torch.float64)
        cols = torch.stack([op.matvec(e) for e in eye], 1)
        assert close(cols, dense, float(dense.abs().max()) * op.dim)
        assert op.param_names[0] == "spare"  # own parameters come first in named_parameters()
        assert float(cols[:2].abs().max()) == 0.0 and float(cols[:, :2].abs().max()) == 0.0


def test_float32_model_with_float64_data():
    model, (x, y) = tiny_mlp(), tiny_batch()
    dense = full_hessian()
    model32 = tiny_mlp().float()
    v = torch.linspace(-1, 1, 39, dtype=torch.float64)
    with preserved(model32):
        op = HessianOperator(model32, (x, y))
        assert op.dtype == torch.float32
        hv = op.matvec(v)
    assert hv.dtype == torch.float32
    # float32 rounding: ~1e-7 relative per operation, a few hundred operations deep
    assert float((hv.double() - dense @ v).abs().max()) <= 1e-4 * float((dense @ v).abs().max())


def test_conv_batchnorm_net_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)
    ).double()
    with torch.no_grad():  # non-trivial running statistics, so eval mode differs from train mode
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    dense = dense_hessian(model, x, y)  # evaluates in eval mode
    buffers = [b.clone() for b in model.buffers()]
    v = torch.randn(dense.shape[0], generator=g, dtype=torch.float64)
    with preserved(model):
        op = HessianOperator(model, [(x[:4], y[:4]), (x[4:], y[4:])])
        assert close(op.matvec(v), dense @ v, float(dense.abs().max() * v.abs().max()) * op.dim)
    assert model.training and all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))


def test_unflatten_round_trip():
    model, batch = tiny_mlp(), tiny_batch()
    with preserved(model):
        op = HessianOperator(model, batch)
        v = torch.arange(op.dim, dtype=torch.float64)
        parts = op.unflatten(v)
    assert list(parts) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, p in model.named_parameters():
        assert parts[name].shape == p.shape
    assert torch.equal(torch.cat([t.reshape(-1) for t in parts.values()]), v)


def test_requires_grad_is_set_inside_and_restored_outside():
    model, batch = tiny_mlp(), tiny_batch()
    model[0].weight.requires_grad_(False)
    with preserved(model):
        op = HessianOperator(model, batch, params=model[0])
        assert [p.requires_grad for p in model.parameters()] == [True, True, False, False]
        op.matvec(torch.ones(op.dim, dtype=torch.float64))
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]
    assert all(p.grad is None for p in model.parameters())


def test_bad_inputs():
    model, (x, y) = tiny_mlp(), tiny_batch()
    with preserved(model):
        op = HessianOperator(model, (x, y))
        with pytest.raises(ValueError, match=r"v: expected a flat tensor of shape \[39\]"):
            op.matvec(torch.ones(5, dtype=torch.float64))
        with pytest.raises(ValueError, match="cache_graph"):
            HessianOperator(model, (x, y), cache_graph="yes")
        with pytest.raises(ValueError, match="no batches"):
            HessianOperator(model, []).matvec(torch.ones(39, dtype=torch.float64))
        with pytest.raises(ValueError, match="params"):
            HessianOperator(model, (x, y), params="nope")

    bad = ThreeDOutput()
    with preserved(bad):
        with pytest.raises(ValueError, match=r"logits of shape \[N, classes\]"):
            HessianOperator(bad, (x, y)).matvec(torch.ones(39, dtype=torch.float64))


# ----------------------------------------------------------------------------- Lanczos


def sym_with_spectrum(eigs: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


@pytest.mark.parametrize("which", ["largest", "smallest", "magnitude"])
def test_lanczos_extreme_eigenvalues(which):
    g = torch.Generator().manual_seed(0)
    b = torch.randn(60, 60, generator=g, dtype=torch.float64)
    a = b + b.T
    exact = torch.linalg.eigvalsh(a)
    key = {"largest": -exact, "smallest": exact, "magnitude": -exact.abs()}[which]
    expected = exact[torch.argsort(key)][:4]
    res = lanczos(lambda v: a @ v, 60, k=4, tol=1e-10, max_iter=60, which=which, generator=g,
                  return_eigenvectors=True)
    assert res.converged and res.stop_reason in ("converged", "invariant")
    assert torch.allclose(res.eigenvalues, expected, rtol=1e-8, atol=0)
    # residual estimates are the true residuals ||A y - theta y||
    true_res = (res.eigenvectors @ a - res.eigenvalues[:, None] * res.eigenvectors).norm(dim=1)
    assert torch.allclose(true_res, res.residuals, rtol=0, atol=1e-10 * float(exact.abs().max()))


def test_lanczos_restart_finds_repeated_eigenvalues():
    eigs = [5.0, 5.0, 5.0, 2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    a = sym_with_spectrum(eigs)
    g = torch.Generator().manual_seed(1)
    res = lanczos(lambda v: a @ v, 10, k=5, tol=1e-10, max_iter=10, generator=g)
    assert res.restarts >= 1
    assert torch.allclose(res.eigenvalues, torch.tensor(eigs[:5], dtype=torch.float64), atol=1e-10)
    # without restarts the Krylov space holds one copy of each distinct eigenvalue: 4 steps
    res = lanczos(lambda v: a @ v, 10, k=None, max_iter=10, restart=False, generator=g)
    assert res.stop_reason == "invariant" and res.iterations == 4
    assert torch.allclose(torch.sort(res.eigenvalues).values, torch.tensor([0.0, 1.0, 2.0, 5.0], dtype=torch.float64),
                          atol=1e-10)


def test_lanczos_stops_early_and_respects_max_iter():
    a = sym_with_spectrum([100.0] + [1.0 - i / 200 for i in range(199)])
    res = lanczos(lambda v: a @ v, 200, k=1, tol=1e-6, max_iter=200, generator=torch.Generator().manual_seed(0))
    assert res.stop_reason == "converged" and res.iterations < 20
    assert abs(float(res.eigenvalues[0]) - 100.0) <= 1e-6 * 100.0
    res = lanczos(lambda v: a @ v, 200, k=3, tol=1e-14, max_iter=7, generator=torch.Generator().manual_seed(0))
    assert res.iterations == 7 and res.stop_reason == "max_iter" and not res.converged


def test_gauss_quadrature_is_exact_for_low_degree_polynomials():
    a = sym_with_spectrum([3.0, 1.5, 1.0, 0.2, -0.5, -2.0, 0.7, 0.1, 2.5, -1.1, 0.0, 1.9], seed=4)
    v = torch.randn(12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v = v / v.norm()
    m = 4
    res = lanczos(lambda u: a @ u, 12, k=None, max_iter=m, v0=v, restart=False)
    nodes, weights = tridiagonal_quadrature(res.alpha, res.beta)
    assert abs(float(weights.sum()) - 1.0) <= 1e-14
    for p in range(2 * m):  # exact up to degree 2m - 1
        exact = float(v @ torch.linalg.matrix_power(a, p) @ v)
        assert abs(float((weights * nodes**p).sum()) - exact) <= 1e-10 * 3.0**p


def test_lanczos_bad_inputs():
    a = torch.eye(4, dtype=torch.float64)
    mv = lambda v: a @ v  # noqa: E731
    with pytest.raises(ValueError, match="k: expected an integer in 1..4"):
        lanczos(mv, 4, k=5)
    with pytest.raises(ValueError, match="k: expected"):
        lanczos(mv, 4, k=0)
    with pytest.raises(ValueError, match="tol"):
        lanczos(mv, 4, tol=0)
    with pytest.raises(ValueError, match="which"):
        lanczos(mv, 4, which="biggest")
    with pytest.raises(ValueError, match="max_iter"):
        lanczos(mv, 4, k=3, max_iter=2)
    with pytest.raises(ValueError, match="v0"):
        lanczos(mv, 4, v0=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(FloatingPointError):
        lanczos(lambda v: v * float("nan"), 4)


# ----------------------------------------------------------------------------- forward-over-reverse


def conv_bn_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A conv + BatchNorm + pooling net with non-trivial running statistics, left in train mode."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)
    ).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.train()
    g = torch.Generator().manual_seed(2)
    return model, torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("params", [None, "2"])
def test_forward_over_reverse_matches_dense_hessian(split, params):
    """torch.func's jvp-of-grad path gives the dense Hessian's products (guards a wrong tangent,
    a missing 1/N or a batch counted twice), on all parameters and on a subset."""
    model, (x, y) = tiny_mlp(), tiny_batch()
    names = None if params is None else ["2.weight", "2.bias"]
    dense = dense_hessian(model, x, y, names)
    data = three_batches(x, y) if split else (x, y)
    g = torch.Generator().manual_seed(5)
    with preserved(model):
        op = HessianOperator(model, data, params=params, hvp="forward-over-reverse")
        ref = HessianOperator(model, data, params=params, hvp="double-backward")
        for _ in range(3):
            v = torch.randn(op.dim, generator=g, dtype=torch.float64)
            hv = op.matvec(v)
            assert close(hv, dense @ v, float(dense.abs().max() * v.abs().max()) * op.dim)
            assert close(hv, ref.matvec(v), float(dense.abs().max() * v.abs().max()) * op.dim)
        assert op.hvp == "forward-over-reverse" and op.hvp_count == 3
        # the gradient and loss recorded on the way are the mean over all samples
        loss = torch.nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        assert abs(op.loss() - float(loss.detach())) <= 1e-12
        assert torch.allclose(op.gradient(), torch.cat([t.reshape(-1) for t in grads]), rtol=0, atol=1e-12)


def test_forward_over_reverse_on_batchnorm_in_eval_mode():
    """BatchNorm in eval mode uses its running statistics under functional_call too (guards the
    batch statistics leaking in), and the model's buffers and mode are left as they were."""
    model, x, y = conv_bn_net()
    dense = dense_hessian(model, x, y)  # evaluates in eval mode
    buffers = [b.clone() for b in model.buffers()]
    v = torch.randn(dense.shape[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with preserved(model):
        op = HessianOperator(model, [(x[:4], y[:4]), (x[4:], y[4:])], hvp="forward-over-reverse")
        assert close(op.matvec(v), dense @ v, float(dense.abs().max() * v.abs().max()) * op.dim)
        assert op.hvp == "forward-over-reverse"
    assert model.training and all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))


def test_forward_over_reverse_falls_back_to_double_backward():
    """A forward torch.func cannot transform (BatchNorm updating its statistics in train mode)
    falls back to the double backward with a warning, and the product is still the Hessian's
    (the train-mode Hessian, with batch statistics, as autograd gives it)."""
    model, x, y = conv_bn_net()
    params = dict(model.named_parameters())
    flat0 = torch.cat([p.detach().reshape(-1) for p in params.values()])
    sizes, shapes = [p.numel() for p in params.values()], [p.shape for p in params.values()]
    snapshot = {k: b.clone() for k, b in model.named_buffers()}

    def loss_of(flat):
        chunks = dict(zip(params, (c.reshape(s) for c, s in zip(torch.split(flat, sizes), shapes))))
        state = {**chunks, **{k: b.clone() for k, b in snapshot.items()}}  # fresh statistics each call
        return F.cross_entropy(torch.func.functional_call(model, state, (x,)), y)

    dense = torch.autograd.functional.hessian(loss_of, flat0)
    v = torch.randn(flat0.numel(), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    op = HessianOperator(model, (x, y), hvp="forward-over-reverse")
    with pytest.warns(RuntimeWarning, match="falling back to hvp='double-backward'"):
        hv = op.matvec(v)
    assert op.hvp == "double-backward"
    assert close(hv, dense @ v, float(dense.abs().max() * v.abs().max()) * op.dim)
    with torch.no_grad():
        for k, b in model.named_buffers():
            b.copy_(snapshot[k])


def test_hvp_mode_is_checked():
    model, batch = tiny_mlp(), tiny_batch()
    with pytest.raises(ValueError, match="hvp: expected one of 'auto', 'double-backward', 'forward-over-reverse'"):
        HessianOperator(model, batch, hvp="jvp")
    with preserved(model):
        assert HessianOperator(model, batch).hvp == "double-backward"  # auto: the faster one measured


def test_conv_net_products_in_channels_last_match_dense_hessian():
    """On a CPU, conv nets' image batches go through the operator in channels_last layout; the
    products must still be the dense Hessian's, with either way of computing them (guards a
    layout-dependent reshape in the flattening)."""
    model, x, y = conv_bn_net()
    dense = dense_hessian(model, x, y)
    v = torch.randn(dense.shape[0], generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    with preserved(model):
        for hvp in ("double-backward", "forward-over-reverse"):
            op = HessianOperator(model, (x, y), hvp=hvp)
            batch = next(op._iter())[0]
            assert op._channels_last
            assert batch.is_contiguous(memory_format=torch.channels_last)
            assert close(op.matvec(v), dense @ v, float(dense.abs().max() * v.abs().max()) * op.dim)


def test_weight_dependent_loss_keeps_its_weight_term_with_either_mode():
    """A loss_fn that closes over the model's weights (cross-entropy + a cubic weight penalty)
    gives the dense autograd Hessian of the whole loss with either mode: forward-over-reverse
    would silently drop the penalty's curvature (torch.func.functional_call swaps the parameters
    only inside the model's forward), so it detects the dependence and falls back to the double
    backward with a warning (guards that silent loss of the weight term)."""
    model, (x, y) = tiny_mlp(), tiny_batch()
    w = model[0].weight

    def weighted(logits, target):
        return F.cross_entropy(logits, target, reduction="none") + 0.3 * (w**3).sum()

    params = dict(model.named_parameters())
    names = list(params)
    sizes, shapes = [p.numel() for p in params.values()], [p.shape for p in params.values()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loss_of(flat):
        chunks = {n: c.reshape(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)}
        logits = torch.func.functional_call(model, chunks, (x,))
        return F.cross_entropy(logits, y) + 0.3 * (chunks["0.weight"] ** 3).sum()

    dense = torch.autograd.functional.hessian(loss_of, flat0)
    assert float((dense - dense_hessian(model, x, y)).abs().max()) > 0.1  # the penalty matters
    v = torch.randn(flat0.numel(), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    scale = float(dense.abs().max() * v.abs().max()) * flat0.numel()
    with preserved(model):
        assert close(HessianOperator(model, (x, y), loss_fn=weighted).matvec(v), dense @ v, scale)
        op = HessianOperator(model, (x, y), loss_fn=weighted, hvp="forward-over-reverse")
        with pytest.warns(RuntimeWarning, match="loss_fn depends on the parameters"):
            hv = op.matvec(v)
        assert op.hvp == "double-backward"
        assert close(hv, dense @ v, scale)
        # a custom loss of the logits alone keeps forward-over-reverse
        op = HessianOperator(model, (x, y), loss_fn=lambda z, t: F.cross_entropy(z, t, reduction="none"),
                             hvp="forward-over-reverse")
        assert close(op.matvec(v), dense_hessian(model, x, y) @ v, scale)
        assert op.hvp == "forward-over-reverse"


# -- cache_graph="auto" over several batches --------------------------------------------------
class _NoLen:
    """An iterable of batches without ``__len__`` (a generator-like stream that can be re-read)."""

    def __init__(self, batches):
        self._batches = batches

    def __iter__(self):
        return iter(self._batches)


@pytest.mark.parametrize("case", ["fits", "no room", "memory unreadable", "no length"])
def test_auto_keeps_the_graphs_of_several_batches_only_when_they_fit(case, monkeypatch):
    """With several batches ``cache_graph="auto"`` keeps all their graphs when the first batch's
    graph, times the batches left, fits in the allowed share of the available memory; with no
    room, memory it cannot read, or a data stream whose length is unknown it streams. Products
    equal the dense Hessian's either way."""
    import importlib

    hvp = importlib.import_module("flatplug.hvp")
    model, (x, y) = tiny_mlp(), tiny_batch()
    data = three_batches(x, y)
    if case == "no room":
        monkeypatch.setattr(hvp, "memory_available", lambda device: 0)
        monkeypatch.setattr(hvp, "reading", functools.partial(next, iter([(0, 0), (1 << 20, 0)])))  # 1 MiB a batch
    elif case == "memory unreadable":
        monkeypatch.setattr(hvp, "reading", lambda device: (None, None))
    elif case == "no length":
        data = _NoLen(data)
    dense = full_hessian()
    v = torch.randn(39, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with preserved(model):
        op = HessianOperator(model, data)
        assert close(op.matvec(v), dense @ v, float(dense.abs().max() * v.abs().max()) * 39)
        assert close(op.matvec(2 * v), dense @ (2 * v), float(dense.abs().max() * v.abs().max()) * 78)
        assert (op._cached is not None) == (case == "fits")


def test_memory_readings_follow_a_real_allocation():
    """On a CPU the allocator's reading grows by what a 256 MiB tensor takes (to the MiB) and falls
    back when it is freed; the resident memory grows by about as much once its pages are touched;
    small heap blocks count too; and ``memory_available`` is the machine's MemAvailable (read here
    independently)."""
    from pathlib import Path

    from flatplug._memory import growth, memory_available, memory_in_use, reading

    cpu = torch.device("cpu")
    if memory_in_use(cpu) is None or not Path("/proc/self/statm").exists():
        pytest.skip("no glibc mallinfo2 or no /proc here: the readings are None and the operator streams")
    mib = 1 << 20
    before = reading(cpu)
    block = torch.ones(64 * mib)  # 256 MiB, every page touched
    after = reading(cpu)
    assert 0 <= (after[0] - before[0]) - block.untyped_storage().nbytes() < mib
    assert 200 * mib <= after[1] - before[1] <= 320 * mib
    assert 256 * mib <= growth(before, after) <= 320 * mib
    del block
    assert abs(memory_in_use(cpu) - before[0]) < mib
    small = [torch.ones(1000) for _ in range(100)]  # heap blocks, from memory the allocator may already hold
    assert memory_in_use(cpu) - before[0] >= 100 * 4000
    del small
    meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()}
    assert abs(memory_available(cpu) - meminfo["MemAvailable"]) <= 64 * mib


def test_cuda_memory_available_counts_the_caching_allocators_unused_blocks(monkeypatch):
    """On CUDA the memory still available is the device's free memory plus the blocks PyTorch's
    caching allocator reserved and no tensor uses (the next graph is built from those first);
    the readings are CUDA's own calls, replaced here by fixed numbers (no GPU on CI)."""
    from flatplug import _memory

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 140 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 50 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 20 * gib)
    assert _memory.memory_available(torch.device("cuda", 0)) == 40 * gib
    assert _memory.memory_in_use(torch.device("cuda", 0)) == 20 * gib


def test_batch_count_is_known_without_a_pass_for_sized_sources():
    """``Batches.batch_count``: 1 for an (x, y) pair, the length of a list or a sized loader, the
    materialised length of a generator, None for a loader over an iterable dataset."""
    from torch.utils.data import DataLoader, IterableDataset, TensorDataset

    from flatplug._data import Batches

    x, y = torch.randn(10, 3), torch.arange(10) % 2
    assert Batches((x, y)).batch_count == 1
    assert Batches([(x[:5], y[:5]), (x[5:], y[5:])]).batch_count == 2
    assert Batches(DataLoader(TensorDataset(x, y), batch_size=4)).batch_count == 3
    assert Batches((x[i : i + 5], y[i : i + 5]) for i in (0, 5)).batch_count == 2

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))

    assert Batches(DataLoader(Stream(), batch_size=4)).batch_count is None
