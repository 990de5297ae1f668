"""Float64-accumulated dot products and norms of long float32 vectors (``flatplug._vector``), the
Rademacher probes of the trace, and Lanczos leaving the caller's product untouched."""

from __future__ import annotations

import math

import torch

from flatplug._vector import BLOCK, dot64, norm64
from flatplug.lanczos import lanczos


def _vectors(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g) * torch.logspace(-3, 3, n)  # entries over six decades
    b = torch.randn(n, generator=g) + 0.25 * a
    return a, b


def test_dot_and_norm_match_exact_sums_over_several_blocks():
    """Against ``math.fsum`` (the correctly rounded sum of the exact float64 products; float32
    values multiply exactly in float64), across several blocks and a partial last one."""
    n = 3 * BLOCK + 123
    a, b = _vectors(n)
    exact_dot = math.fsum(x * y for x, y in zip(a.double().tolist(), b.double().tolist()))
    exact_norm = math.sqrt(math.fsum(x * x for x in a.double().tolist()))
    assert abs(dot64(a, b) - exact_dot) <= 1e-13 * abs(exact_dot)
    assert abs(norm64(a) - exact_norm) <= 1e-13 * exact_norm
    # the accuracy is the point: float32 accumulation is far off on the same vectors
    assert abs(float(torch.dot(a, b)) - exact_dot) > 1e3 * abs(dot64(a, b) - exact_dot)


def test_short_and_float64_vectors_take_the_plain_path():
    a, b = _vectors(100, seed=1)
    exact = math.fsum(x * y for x, y in zip(a.double().tolist(), b.double().tolist()))
    assert abs(dot64(a, b) - exact) <= 1e-13 * abs(exact)
    assert dot64(a.double(), b.double()) == float(torch.dot(a.double(), b.double()))
    assert norm64(a.double()) == float(a.double().norm())
    assert abs(norm64(a) - float(a.double().norm())) <= 1e-14 * float(a.double().norm())


def test_rademacher_probes_are_the_documented_draws():
    """The trace's probes are +-1 from ``randint(0, 2)`` int8 draws of a CPU generator, in the
    operator's dtype: written out here from the definition."""
    from types import SimpleNamespace

    from flatplug.measures.hessian_trace import _rademacher

    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        op = SimpleNamespace(device=torch.device("cpu"), dtype=dtype)
        got = _rademacher(1000, torch.Generator().manual_seed(7), op)
        bits = torch.randint(0, 2, (1000,), generator=torch.Generator().manual_seed(7), dtype=torch.int8)
        expected = torch.where(bits == 1, 1.0, -1.0).to(dtype)
        assert got.dtype == dtype and torch.equal(got, expected)


def test_lanczos_does_not_change_the_callers_product():
    """A matvec may hand back a tensor it keeps: the reorthogonalisation must not write into it."""
    g = torch.Generator().manual_seed(3)
    m = torch.randn(40, 40, generator=g, dtype=torch.float64)
    a = m + m.T
    held: list[tuple[torch.Tensor, torch.Tensor]] = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        out = a @ v
        held.append((out, out.clone()))
        return out

    res = lanczos(matvec, 40, k=2, tol=1e-8, max_iter=40)
    assert all(torch.equal(out, copy) for out, copy in held)
    top = torch.linalg.eigvalsh(a).flip(0)[:2]
    assert torch.allclose(res.eigenvalues, top, rtol=1e-7, atol=0)


def test_lanczos_on_a_long_float32_operator_finds_its_known_eigenvalues():
    """A float32 diagonal operator longer than several blocks (the blocked float64 path of every
    ``q.w`` and ``||w||``): the top three eigenvalues are the three largest diagonal entries."""
    n = 3 * BLOCK + 5
    g = torch.Generator().manual_seed(5)
    diag = torch.rand(n, generator=g) * 0.5  # bulk in [0, 0.5)
    diag[[17, n // 2, n - 1]] = torch.tensor([3.0, 2.0, 1.5])
    res = lanczos(lambda v: diag * v, n, k=3, tol=1e-6, max_iter=60, dtype=torch.float32,
                  generator=torch.Generator().manual_seed(0))
    assert res.converged
    assert torch.allclose(res.eigenvalues, torch.tensor([3.0, 2.0, 1.5], dtype=torch.float64), rtol=1e-5, atol=0)
