"""Rank correlations and their bootstrap intervals (flatplug._stats) against scipy and by hand.

Oracles: values worked out by hand for small cases, scipy.stats.spearmanr / kendalltau (tau-b),
and for the bootstrap the exact bootstrap distribution, enumerated over every one of the n**n
resamples of a 5-model table.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from flatplug._stats import Correlation, average_ranks, correlations, kendall_tau_b, spearman_rho
from flatplug.report import correlations as report_correlations


def test_report_exposes_the_same_function() -> None:
    assert report_correlations is correlations


def test_hand_computed_without_ties() -> None:
    # ranks differ by d = (0, 1, 1, 0): rho = 1 - 6*2/(4*15) = 0.8; pairs: 5 concordant, 1 discordant
    t = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [10.0, 30.0, 20.0, 40.0]})
    c = correlations(t, "x", "y", n_boot=0)
    assert c.n == 4 and c.reason is None
    assert c.spearman == pytest.approx(0.8, abs=1e-12)
    assert c.kendall == pytest.approx(4 / 6, abs=1e-12)
    assert math.isnan(c.spearman_ci[0]) and c.n_boot_valid == 0  # no resamples asked for


def test_hand_computed_with_ties() -> None:
    # x ranks (1.5, 1.5, 3, 4), y ranks (1, 2.5, 2.5, 4): rho = 3.75 / 4.5
    # tau-b: C=4, D=0, 6 pairs, one tied in x, one tied in y: 4 / sqrt(5 * 5)
    x, y = np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 2.0, 3.0])
    np.testing.assert_array_equal(average_ranks(x), [1.5, 1.5, 3.0, 4.0])
    np.testing.assert_array_equal(average_ranks(y), [1.0, 2.5, 2.5, 4.0])
    c = correlations({"a": x, "b": y}, "a", "b", n_boot=0)
    assert c.spearman == pytest.approx(3.75 / 4.5, abs=1e-12)
    assert c.kendall == pytest.approx(0.8, abs=1e-12)


def test_monotone_data_gives_exact_one_and_a_degenerate_interval() -> None:
    x = np.array([0.1, 0.5, 2.0, 3.0, 7.0, 11.0])
    t = pd.DataFrame({"x": x, "up": np.exp(x), "down": -x ** 3})
    up = correlations(t, "x", "up", n_boot=300, seed=1)
    assert (up.spearman, up.kendall) == (1.0, 1.0)
    # every resample of a monotone relation is monotone (ties come in both variables together)
    assert up.spearman_ci == (1.0, 1.0) and up.kendall_ci == (1.0, 1.0)
    down = correlations(t, "x", "down", n_boot=300, seed=1)
    assert (down.spearman, down.kendall) == (-1.0, -1.0) and down.kendall_ci == (-1.0, -1.0)
    # resamples that draw a single model are undefined and dropped: 6 of 6**6 outcomes
    assert 290 <= up.n_boot_valid <= 300


@pytest.mark.parametrize("n", [3, 4, 7, 12, 30])
def test_against_scipy(n: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(n)
    for trial in range(20):
        # small integer ranges force ties in both variables
        x = rng.integers(0, 4 if trial % 2 else 1000, n).astype(float)
        y = rng.integers(0, 3 if trial % 3 else 1000, n).astype(float) + 0.5 * x
        if np.all(x == x[0]) or np.all(y == y[0]):
            continue
        c = correlations({"x": x, "y": y}, "x", "y", n_boot=0)
        assert c.spearman == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert c.kendall == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)  # scipy's default is tau-b


def test_batched_statistics_match_scipy_row_by_row() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, (50, 9)).astype(float)
    y = rng.normal(size=(50, 9))
    rho, tau = spearman_rho(x, y), kendall_tau_b(x, y)
    for i in range(50):
        if np.all(x[i] == x[i, 0]):
            assert math.isnan(rho[i]) and math.isnan(tau[i])
            continue
        assert rho[i] == pytest.approx(stats.spearmanr(x[i], y[i]).statistic, abs=1e-12)
        assert tau[i] == pytest.approx(stats.kendalltau(x[i], y[i]).statistic, abs=1e-12)


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution() -> None:
    """The percentile endpoints sit at the 2.5% / 97.5% points of the enumerated bootstrap distribution.

    With B valid resamples the empirical CDF at any point has standard error sqrt(p(1-p)/B), so the
    exact CDF just below / at each endpoint must bracket 2.5% (97.5%) within 5 standard errors.
    """
    stats = pytest.importorskip("scipy.stats")
    x = np.array([0.3, 1.1, 0.7, 2.5, 1.9])
    y = np.array([0.2, 0.5, 0.9, 0.4, 1.6])
    n = len(x)
    exact_rho, exact_tau = [], []
    for idx in itertools.product(range(n), repeat=n):
        idx = list(idx)
        if len(set(idx)) == 1:  # a constant resample: undefined, dropped by the code as well
            continue
        exact_rho.append(stats.spearmanr(x[idx], y[idx]).statistic)
        exact_tau.append(stats.kendalltau(x[idx], y[idx]).statistic)
    n_boot = 4000
    c = correlations({"x": x, "y": y}, "x", "y", n_boot=n_boot, seed=7)
    assert c.n_boot_valid >= n_boot - 40  # a constant resample has probability 5/3125
    for dist, (lo, hi) in ((np.array(exact_rho), c.spearman_ci), (np.array(exact_tau), c.kendall_ci)):
        for endpoint, p in ((lo, 0.025), (hi, 0.975)):
            bound = 5 * math.sqrt(p * (1 - p) / c.n_boot_valid)
            below = np.mean(dist < endpoint - 1e-12)
            at_or_below = np.mean(dist <= endpoint + 1e-12)
            assert below <= p + bound and at_or_below >= p - bound, (endpoint, p, below, at_or_below)
    # and the point estimate lies inside its interval
    assert c.spearman_ci[0] <= c.spearman <= c.spearman_ci[1]
    assert c.kendall_ci[0] <= c.kendall <= c.kendall_ci[1]


def test_seeded_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    t = pd.DataFrame({"x": rng.normal(size=10), "y": rng.normal(size=10)})
    a, b = correlations(t, "x", "y", seed=5), correlations(t, "x", "y", seed=5)
    assert a == b
    assert correlations(t, "x", "y", seed=6).spearman_ci != a.spearman_ci


def test_missing_values_are_left_out() -> None:
    t = pd.DataFrame({"x": [1.0, 2.0, np.nan, 4.0, 5.0, np.inf], "y": [2.0, 1.0, 3.0, 4.0, np.nan, 1.0]})
    c = correlations(t, "x", "y", n_boot=0)
    # complete pairs: (1, 2), (2, 1), (4, 4): ranks x (1, 2, 3), y (2, 1, 3): rho = 1 - 6*2/(3*8) = 0.5
    assert c.n == 3 and c.spearman == pytest.approx(0.5, abs=1e-12)
    assert c.kendall == pytest.approx(1 / 3, abs=1e-12)  # C=2, D=1 of 3 pairs


@pytest.mark.parametrize("xs, ys, pattern", [
    ([1.0, 2.0], [2.0, 1.0], r"only 2 models .* at least 3"),
    ([1.0], [2.0], r"only 1 model with"),
    ([], [], r"only 0 models"),
    ([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, np.nan, 3.0], r"only 2 models"),
    ([3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0], r"measure is the same \(3\) for all 4 models"),
    ([1.0, 2.0, 3.0], [0.5, 0.5, 0.5], r"acc is the same \(0.5\) for all 3 models"),
])
def test_undefined_cases_give_nan_and_a_reason(xs, ys, pattern) -> None:
    c = correlations(pd.DataFrame({"measure": xs, "acc": ys}), "measure", "acc")
    assert isinstance(c, Correlation)
    assert math.isnan(c.spearman) and math.isnan(c.kendall)
    assert all(math.isnan(v) for v in (*c.spearman_ci, *c.kendall_ci))
    assert c.reason is not None
    import re

    assert re.search(pattern, c.reason), c.reason


def test_bad_arguments() -> None:
    t = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1.0, 3.0, 2.0], "name": ["a", "b", "c"]})
    with pytest.raises(ValueError, match=r"no column 'z' in the table; columns are 'x', 'y', 'name'"):
        correlations(t, "x", "z")
    with pytest.raises(ValueError, match=r"column 'name' is not numeric"):
        correlations(t, "name", "y")
    with pytest.raises(ValueError, match=r"n_boot: expected a number of bootstrap resamples >= 0, got -1"):
        correlations(t, "x", "y", n_boot=-1)
    with pytest.raises(ValueError, match=r"seed: expected an integer"):
        correlations(t, "x", "y", seed=0.5)


def test_as_dict_flattens_the_intervals() -> None:
    c = correlations(pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, 2.0, 4.0, 3.0]}), "x", "y", n_boot=50)
    d = c.as_dict()
    assert d["spearman_lo"] == c.spearman_ci[0] and d["kendall_hi"] == c.kendall_ci[1]
    assert {"x", "y", "n", "spearman", "kendall", "reason", "n_boot_valid"} <= set(d)
