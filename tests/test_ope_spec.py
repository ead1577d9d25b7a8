"""The estimator spec table: every property it declares is checked against the estimator,
and every list that names estimators is derived from it."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from bandit_core import make_policy
from tests.test_ope_evaluate import trained_greedy, uniform_batch
from validation.ope import (
    DECOMPOSABLE,
    DEFAULT_ESTIMATORS,
    MODEL_BASED,
    SPECS,
    UNBIASED,
    check_feedback,
    effective_sample_size,
    evaluate_policy,
    round_terms,
)
from validation.ope.moments import TermSums

N, K = 400, 3


def _feedback(with_model: bool = True, rows: slice = slice(None), uniform: bool = False) -> object:
    """Seeded feedback on N rounds, K actions (a uniform logging policy if ``uniform``)."""
    rng = np.random.default_rng(3)
    pscore_all = np.full((N, K), 1.0 / K) if uniform else rng.dirichlet(np.ones(K), N)
    action = np.array([rng.choice(K, p=p) for p in pscore_all])
    pi = rng.dirichlet(np.ones(K), N)[:, :, None]
    q = rng.random((N, K, 1))
    reward = (rng.random(N) < q[np.arange(N), action, 0]).astype(float)
    return check_feedback(
        reward[rows],
        action[rows],
        pscore_all[np.arange(N), action][rows],
        pi[rows],
        estimated_rewards=q[rows] if with_model else None,
    )


def test_the_lists_are_derived_from_the_table() -> None:
    assert tuple(SPECS) == DEFAULT_ESTIMATORS
    assert frozenset(n for n, s in SPECS.items() if s.needs_reward_model) == MODEL_BASED
    assert frozenset(n for n, s in SPECS.items() if s.unbiased) == UNBIASED
    assert tuple(n for n, s in SPECS.items() if s.decomposable) == DECOMPOSABLE


@pytest.mark.parametrize("name", list(SPECS))
def test_options_are_the_functions_parameters(name: str) -> None:
    """Every parameter of the function besides the feedback (and the generator) is an
    option of the table; every option but the tuning grid is a parameter."""
    spec = SPECS[name]
    params = list(inspect.signature(spec.function).parameters)[1 + int(spec.needs_rng) :]
    tuning = {"lambda_grid"} if spec.tuned_weights is not None else set()
    assert set(params) == set(spec.options) - tuning


@pytest.mark.parametrize("name", list(SPECS))
def test_needs_reward_model_is_what_the_estimator_reads(name: str) -> None:
    rng = np.random.default_rng(1)
    uniform = SPECS[name].needs_rng  # replay evaluates on uniformly random logs only
    if SPECS[name].needs_reward_model:
        with pytest.raises(ValueError, match="estimated_rewards"):
            round_terms(name, _feedback(with_model=False, uniform=uniform), rng)
    else:
        plain = round_terms(
            name, _feedback(with_model=False, uniform=uniform), np.random.default_rng(1)
        )
        modelled = round_terms(name, _feedback(uniform=uniform), np.random.default_rng(1))
        assert plain.value() == modelled.value()


@pytest.mark.parametrize("name", DECOMPOSABLE)
def test_decomposable_estimators_merge_exactly_over_shards(name: str) -> None:
    whole = round_terms(name, _feedback())
    parts = [round_terms(name, _feedback(rows=slice(a, b))) for a, b in ((0, 150), (150, N))]
    merged = TermSums.of(parts[0]).merge(TermSums.of(parts[1]))
    assert merged.value() == pytest.approx(whole.value(), rel=1e-12, abs=1e-14)
    assert merged.ess() == pytest.approx(effective_sample_size(whole.weights), rel=1e-12)


def test_merged_ess_of_weights_whose_squares_overflow() -> None:
    """The shards' weight sums are kept over the largest weight: Σ w² of weights beyond
    10¹⁵⁴ overflowed, and the merged ESS was NaN."""
    from validation.ope.estimators import RoundTerms

    def terms(weights: list[float]) -> TermSums:
        w = np.asarray(weights)
        return TermSums.of(RoundTerms(num=np.zeros_like(w), weights=w))  # rewards 0

    merged = terms([1e300] * 4 + [1.0] * 50).merge(terms([1e300] * 6 + [2.0] * 40))
    assert merged.ess() == pytest.approx(10.0, rel=1e-12)
    assert merged.max_w == 1e300
    assert terms([0.0, 0.0]).merge(terms([0.0])).ess() == 0.0


@pytest.mark.parametrize(
    ("name", "option", "bad"),
    [("ips", "clip", 0.0), ("switch_dr", "lambda_", -1.0), ("dros", "lambda_grid", "10")],
)
def test_each_option_is_checked_by_its_table_entry(name: str, option: str, bad: object) -> None:
    with pytest.raises(ValueError, match=f"'{option}' parameter of {name}"):
        round_terms(name, _feedback(), **{option: bad})


def test_evaluate_policy_passes_each_estimators_options() -> None:
    batch = uniform_batch(300)
    report = evaluate_policy(
        trained_greedy(),
        batch,
        np.random.default_rng(0),
        n_resamples=20,
        options={"ips": {"clip": 1.5}, "switch_dr": {"lambda_": 2.0}},
    )
    assert report["ips"].params["clip"] == 1.5
    assert report["switch_dr"].params["lambda_"] == 2.0
    assert "tuned" not in report["switch_dr"].params
    assert report["dros"].params.get("tuned") == 1.0  # no option: λ tuned


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"best": {}}, "Unknown estimator 'best'"),
        ({"ips": {"lambda_": 1.0}}, "Unknown option"),
        ({"dros": {"lambda_": 1.0}}, "not evaluated here"),
        ({"ips": 3.0}, r"options\['ips'\] must be a mapping"),
    ],
)
def test_evaluate_policy_refuses_bad_options(options: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_policy(
            make_policy("uniform", dim_user=4),
            uniform_batch(50),
            np.random.default_rng(0),
            estimators=["ips", "snips"],
            n_resamples=10,
            options=options,  # type: ignore[arg-type]
        )
