"""Input checks: ``all_finite``'s fast path (one sum) agrees with ``isfinite(x).all()`` on every
float dtype, including the cases that fool a sum (a +inf and a -inf, finite values whose sum
overflows), and ``check_inputs`` still names what is wrong."""

from __future__ import annotations

import pytest
import torch

from flatplug._validation import all_finite, check_inputs

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_finite_agrees_with_the_elementwise_test(dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(16, 3, 8, 8, generator=g).to(dtype)
    cases = {"clean": base}
    for label, values in {"nan": [float("nan")], "+inf": [float("inf")], "-inf": [float("-inf")],
                          "+inf and -inf": [float("inf"), float("-inf")]}.items():
        bad = base.clone()
        for i, v in enumerate(values):
            bad.view(-1)[7 + 100 * i] = v
        cases[label] = bad
    big = torch.finfo(dtype).max
    cases["finite, sum overflows"] = torch.full((64,), big / 2, dtype=dtype)
    cases["finite, sum overflows, channels_last"] = torch.full((2, 3, 4, 4), big, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    cases["broadcast view"] = torch.tensor([1.0, float("nan")], dtype=dtype).expand(5, 2)
    for label, t in cases.items():
        assert all_finite(t) == bool(torch.isfinite(t).all()), label


def test_check_inputs_names_the_problem():
    x = torch.rand(4, 3, 5, 5)
    check_inputs(x, unit_range=True)
    bad = x.clone()
    bad[1, 0, 0, 0], bad[2, 1, 1, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="batch: 2 non-finite values"):
        check_inputs(bad, name="batch")
    with pytest.raises(ValueError, match=r"expected images in \[0, 1\], got min 0 and max 255; divide by 255"):
        check_inputs(torch.cat([torch.zeros(1, 3, 5, 5), torch.full((1, 3, 5, 5), 255.0)]), unit_range=True)
    with pytest.raises(ValueError, match="got min -1 and max 1; undo any normalisation"):
        check_inputs(torch.tensor([[-1.0, 0.5], [0.25, 1.0]]), unit_range=True)
