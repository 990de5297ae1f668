"""Float64-accumulated dot products, norms and projections of long float32 vectors
(``flatplug._vector``), the chunked Lanczos basis (``flatplug._basis``), the Rademacher probes of
the trace, Lanczos leaving the caller's product untouched and keeping a long float32 basis
orthogonal."""

from __future__ import annotations

import math

import torch

import pytest

from flatplug._basis import FIRST_ROWS, Basis
from flatplug._vector import BLOCK, dot64, norm64, project64
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


def test_project64_matches_exact_sums_for_one_matrix_and_for_chunks():
    """Against ``math.fsum`` row by row, over several column blocks and a partial last one, for
    one matrix and for the same rows split in two matrices; float64 inputs take a plain product."""
    n = 2 * BLOCK + 77
    a, b = _vectors(n, seed=2)
    w = b.clone()
    w[5] = 1e4  # one large entry: float32 accumulation would carry it through every later sum
    rows = torch.stack([a, b, -a + 3 * b])
    exact = torch.tensor([math.fsum(x * y for x, y in zip(r.double().tolist(), w.double().tolist())) for r in rows],
                         dtype=torch.float64)
    scale = (rows.double().abs() @ w.double().abs())  # sum |x y| per row: the natural error scale
    for got in (project64(rows, w), project64([rows[:1], rows[1:]], w)):
        assert got.dtype == torch.float64 and got.shape == (3,)
        assert ((got - exact).abs() <= 1e-14 * scale).all()
    assert torch.equal(project64(rows.double(), w.double()), rows.double() @ w.double())


def test_basis_grows_in_chunks_and_matches_the_dense_basis():
    """Rows, the projection removed by ``orthogonalise`` and ``combine`` against a dense [40, 50]
    orthonormal matrix; chunks of FIRST_ROWS, then as many rows as before, up to the capacity."""
    g = torch.Generator().manual_seed(4)
    dense = torch.linalg.qr(torch.randn(50, 40, generator=g, dtype=torch.float64))[0].T  # [40, 50]
    basis = Basis(50, 40, torch.float64, torch.device("cpu"))
    for i, r in enumerate(dense):
        row = basis.append(3.0 * r, 3.0)
        assert torch.allclose(row, r, rtol=0, atol=1e-15) and len(basis) == i + 1
    assert [c.shape[0] for c in basis._chunks] == [FIRST_ROWS, FIRST_ROWS, 40 - 2 * FIRST_ROWS]
    assert all(torch.equal(basis.row(j), basis.row(j)) and torch.allclose(basis.row(j), dense[j], atol=1e-15)
               for j in range(40))
    w = torch.randn(50, generator=g, dtype=torch.float64)
    for rows in (40, 20, 3):
        got = w.clone()
        basis.orthogonalise(got, rows)
        q = dense[:rows]
        assert torch.allclose(got, w - q.T @ (q @ w), rtol=0, atol=1e-13)
    coeff = torch.randn(37, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(basis.combine(coeff), coeff.T @ dense[:37], rtol=0, atol=1e-13)
    with pytest.raises(IndexError, match="full"):
        basis.append(w, 1.0)
    with pytest.raises(IndexError):
        basis.row(40)


def test_lanczos_keeps_a_long_float32_basis_orthogonal():
    """2M float32 entries, outliers over a bulk near zero: the basis the operator sees stays
    orthonormal to 1e-6 (measured in float64) and the top eigenvalue is right to 1e-5. With float32
    projection coefficients over the whole vector the basis lost 1.4e-3 of its orthogonality here
    and the top eigenvalue 3.8e-4 (``notes/reorthogonalisation.py`` measures the 36.5M case)."""
    n = 2_000_000
    g = torch.Generator().manual_seed(0)
    diag = torch.randn(n, generator=g) * 0.05
    diag[:30] = torch.logspace(2, 0, 30)
    seen: list[torch.Tensor] = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        seen.append(v.double())
        return diag * v

    res = lanczos(matvec, n, k=1, tol=1e-3, max_iter=12, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    q = torch.stack(seen)
    assert (q @ q.T - torch.eye(len(seen), dtype=torch.float64)).abs().max() <= 1e-6
    assert abs(res.eigenvalues[0].item() - 100.0) <= 1e-5 * 100.0


def test_lanczos_repeats_a_gram_schmidt_pass_only_when_it_lost_most_of_the_norm(monkeypatch):
    """One pass per step on a well-conditioned operator. On a float32 operator with eigenvalues from
    1e6 down to a bulk below 1e-3, the recurrence leaves rounding errors (about eps * 1e6) along the
    converged directions, which the first pass removes with most of the norm: a second pass runs on
    some steps. Either way the basis the operator sees stays orthonormal. (The iteration restarts at
    almost every step there, since every later ``beta`` is below float32's resolution of that
    operator, and runs to ``max_iter``: the same as before the DGKS rule.)"""
    calls = [0]
    orthogonalise = Basis.orthogonalise

    def counted(self, w, rows=None):
        calls[0] += 1
        return orthogonalise(self, w, rows)

    monkeypatch.setattr(Basis, "orthogonalise", counted)
    g = torch.Generator().manual_seed(0)
    m = torch.randn(200, 200, generator=g, dtype=torch.float64)
    seen: list[torch.Tensor] = []

    def dense(v: torch.Tensor) -> torch.Tensor:
        seen.append(v.clone())
        return (m + m.T) @ v

    res = lanczos(dense, 200, k=3, tol=1e-10, max_iter=100)
    q = torch.stack(seen)
    assert calls[0] == res.iterations and res.restarts == 0
    assert (q @ q.T - torch.eye(len(seen), dtype=torch.float64)).abs().max() <= 1e-13

    calls[0] = 0
    seen.clear()
    n = 5000
    diag = torch.rand(n, generator=g) * 1e-3
    diag[:5] = torch.tensor([1e6, 3e5, 1e5, 1.0, 0.5])

    def wide(v: torch.Tensor) -> torch.Tensor:
        seen.append(v.double())
        return diag * v

    res = lanczos(wide, n, k=3, tol=1e-6, max_iter=60, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    q = torch.stack(seen)
    assert calls[0] > res.iterations + 2 * res.restarts  # some steps took a second pass
    assert (q @ q.T - torch.eye(len(seen), dtype=torch.float64)).abs().max() <= 1e-6
    assert torch.allclose(res.eigenvalues, torch.tensor([1e6, 3e5, 1e5], dtype=torch.float64), rtol=1e-6, atol=0)
