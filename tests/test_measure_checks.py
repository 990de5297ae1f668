"""Measure settings are refused before any work: each measure's declared ``check``, called by scoring."""

from __future__ import annotations

import inspect

import pytest

import flatplug as fp
from flatplug import plugins
from flatplug.ext import MeasureInfo
from flatplug.measures import INFOS, MEASURES
from flatplug.scoring import DatasetSpec, ModelSpec, check_measures, resolve_measures, score
from conftest import shared_path, tiny_batch, tiny_mlp

PGD = {"name": "pgd", "eps": 8 / 255, "norm": "linf"}

BAD = [
    # (measure settings, the words the refusal must have)
    ({"hessian_trace": {"min_probes": 1}}, "measure 'hessian_trace': min_probes: expected an integer >= 2"),
    ({"hessian_trace": {"method": "hutch++", "probes": 2}}, "hutch++ splits the budget in thirds"),
    ({"hessian_eigenvalues": {"k": 5, "max_iter": 3}}, "max_iter: must be at least k=5"),
    ({"hessian_density": {"sigma": 0.0}}, "sigma: expected a positive kernel width"),
    ({"loss_landscape": {"steps": 4}}, "steps: expected an odd integer >= 3"),
    ({"sharpness": {"adversarial": {"norm": "linf"}}}, "adversarial: 'eps' (the attack's radius) is required"),
    ({"sharpness": {"kind": "average", "m": 8}}, "m-sharpness applies to kind='worst'"),
    ({"local_flatness": {"q": 3}}, "q: expected the gradient norm's order 1, 2"),
    ({"feature_robustness": {"grid": [0.1, -1.0]}}, "grid: expected a positive finite number"),
    ({"feature_displacement": {"confident": 1.5}}, "confident: expected a probability in (0, 1)"),
    ({"relative_flatness": {"variant": "pairwize"}}, "variant: expected one of 'pairwise', 'trace'"),
    ({"hessian_trace": {"tol": "0.1"}}, "tol: expected a non-negative relative standard error"),
]


def test_every_builtin_measure_declares_a_check_over_its_own_parameters():
    """Guards against a check naming a setting the measure does not have (scoring could not fill its default)."""
    for name, fn in MEASURES.items():
        check = INFOS[name].check
        assert check is not None, name
        measure_params = set(inspect.signature(fn).parameters)
        assert set(inspect.signature(check).parameters) <= measure_params, name


def test_defaults_and_zoo_settings_pass_the_checks():
    """Guards against a check refusing what a user gets with defaults only (plus the radius)."""
    check_measures(resolve_measures(list(MEASURES), PGD))
    check_measures(resolve_measures(None, PGD))
    check_measures({"sharpness": {"rho": 0.05}, "local_flatness": {"eps": 0.0}, "feature_robustness": {"delta": 0.1},
                    "feature_displacement": {"eps": 0.5, "norm": "l2"}})


@pytest.mark.parametrize("measures, words", BAD, ids=[next(iter(b[0])) + ":" + str(b[0]) for b in BAD])
def test_bad_values_are_refused_by_check_measures(measures, words):
    with pytest.raises((ValueError, TypeError)) as info:
        check_measures(resolve_measures(measures, PGD))
    assert words in str(info.value)


@pytest.mark.parametrize("measures, words", BAD[:6], ids=[str(b[0]) for b in BAD[:6]])
def test_the_measure_itself_refuses_the_same_values(measures, words):
    """Guards against the pre-flight check and the measure disagreeing about what is valid."""
    (name, params), = measures.items()
    params = {**resolve_measures({name: {}}, PGD)[name], **params}
    with pytest.raises((ValueError, TypeError)) as info:
        fp.measure(name, tiny_mlp(), [tiny_batch()], **params)
    assert words.split("measure 'hessian_trace': ")[-1] in str(info.value)


def test_a_bad_value_fails_score_before_any_model_is_loaded(tmp_path, monkeypatch):
    """Guards against a run loading and attacking models only to fail on a setting it could have checked."""
    zoo = shared_path("models", "zoo.json")
    cifar = shared_path("data", "cifar10", "test.tar.gz")
    loads = []
    monkeypatch.setattr(ModelSpec, "load", lambda self, *a, **k: loads.append(self) or pytest.fail("loaded"))
    with pytest.raises(ValueError, match="measure 'hessian_trace': min_probes: expected an integer >= 2, got 1"):
        score([ModelSpec.of("zoo", "marabou_small", manifest=str(zoo))], DatasetSpec("imagefolder", str(cifar), n=8),
              measures={"relative_flatness": {}, "hessian_trace": {"min_probes": 1}}, store=tmp_path / "r.db",
              quiet=True, device="cpu")
    assert not loads and not (tmp_path / "r.db").exists()


def test_a_third_party_check_is_called_with_defaults_filled_in():
    """Guards against plugins getting a weaker pre-flight than built-ins."""
    seen = []

    def curvature(model, data, *, scale: float = 1.0, mode: str = "fast"):
        raise AssertionError("never run by a pre-flight check")

    def check(*, scale, mode):
        seen.append((scale, mode))
        if scale <= 0:
            raise ValueError(f"scale: expected a positive number, got {scale}")

    class Mine:
        @fp.hookimpl
        def flatplug_register_measures(self, register):
            register("curvature", curvature, info=MeasureInfo(version="1", check=check))

    plugins.reset()
    try:
        plugins.get_plugins().register(Mine(), name="mine", version="1")
        check_measures({"curvature": {"scale": 2.0}})
        assert seen == [(2.0, "fast")]
        with pytest.raises(ValueError, match="measure 'curvature': scale: expected a positive number, got -1"):
            check_measures({"curvature": {"scale": -1}})
    finally:
        plugins.reset()
