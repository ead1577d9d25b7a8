"""evaluate_policy on bandit_core policies, LoggedBatch checks, and the OPEReport outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bandit_core import MAX_ABS_INPUT, Candidates, make_policy
from validation.ope import (
    DEFAULT_ESTIMATORS,
    CrossFitRewardModel,
    LoggedBatch,
    OPEReport,
    RidgeModel,
    evaluate_policy,
    policy_action_dist,
)

K = 4
DIM_USER = 3
DIM_ARM = 2


def candidates() -> Candidates:
    feats = np.random.default_rng(0).standard_normal((K, DIM_ARM))
    return Candidates.from_any(["a", "b", "c", "d"], feats)


def uniform_batch(n: int = 800, seed: int = 1, len_list: int = 1) -> LoggedBatch:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM_USER))
    actions = rng.integers(0, K, n)
    p_click = 0.2 + 0.15 * (actions == 1) + 0.05 * x[:, 0].clip(-1, 1)
    rewards = (rng.random(n) < p_click).astype(float)
    positions = rng.integers(0, len_list, n) if len_list > 1 else None
    return LoggedBatch(x, candidates(), actions, rewards, np.full(n, 1 / K), positions, len_list)


def trained_greedy() -> object:
    policy = make_policy("epsilon_greedy", dim_user=DIM_USER, dim_arm=DIM_ARM, epsilon=0.1)
    b = uniform_batch(400, seed=9)
    policy.update_batch(
        b.contexts,
        [b.candidates.ids[a] for a in b.actions],
        b.rewards,
        b.candidates.features[b.actions],
    )
    return policy


def test_uniform_policy_on_a_uniform_log_is_the_mean_reward() -> None:
    b = uniform_batch()
    report = evaluate_policy(
        make_policy("uniform", dim_user=DIM_USER), b, np.random.default_rng(0), n_resamples=100
    )
    assert list(report.estimates) == list(DEFAULT_ESTIMATORS)
    mean = b.rewards.mean()
    # every weight is 1: IPS and SNIPS are the logged mean exactly, the others close to it
    # (DM's interval holds the fitted model fixed, so it is not expected to cover it)
    assert report["ips"].value == pytest.approx(mean, rel=1e-12)
    assert report["snips"].value == pytest.approx(mean, rel=1e-12)
    for name in ("replay", "dr", "sndr"):
        assert report[name].ci_low <= mean <= report[name].ci_high, name
    assert report["ips"].ess == pytest.approx(b.n_rounds)
    assert report["ips"].max_weight == pytest.approx(1.0)


def test_every_estimate_is_finite_with_an_ordered_interval() -> None:
    report = evaluate_policy(
        trained_greedy(), uniform_batch(), np.random.default_rng(0), n_resamples=100
    )
    for name, est in report.estimates.items():
        assert math.isfinite(est.value) and est.ci_low <= est.ci_high, name
        assert est.n_rounds == 800 and est.n_resamples == 100 and est.level == 0.95
    assert report.estimates["switch_dr"].params["lambda_"] > 0


def test_action_dist_comes_from_select_batch_probabilities() -> None:
    policy = trained_greedy()
    b = uniform_batch(50)
    dist = policy_action_dist(policy, b, np.random.default_rng(0))
    expected = policy.select_batch(b.contexts, b.candidates, np.random.default_rng(0)).probabilities
    np.testing.assert_array_equal(dist[:, :, 0], expected)


def test_thompson_action_dist_is_its_monte_carlo_estimate() -> None:
    b = uniform_batch(20)

    def dist(n_sim: int, seed: int) -> np.ndarray:
        policy = make_policy("shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM, n_sim=n_sim)
        return policy_action_dist(policy, b, np.random.default_rng(seed))

    small = dist(50, 0)
    policy = make_policy("shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM, n_sim=50)
    expected = policy.select_batch(b.contexts, b.candidates, np.random.default_rng(0)).probabilities
    np.testing.assert_array_equal(small[:, :, 0], expected)
    np.testing.assert_allclose(small.sum(axis=1), 1.0)
    # Monte-Carlo noise shrinks with n_sim: two seeds agree better with more draws
    gap_small = np.abs(dist(50, 1) - dist(50, 2)).mean()
    gap_large = np.abs(dist(5000, 1) - dist(5000, 2)).mean()
    assert gap_large < gap_small / 3


def test_several_slots_share_the_policy_distribution() -> None:
    b = uniform_batch(300, len_list=3)
    dist = policy_action_dist(trained_greedy(), b, np.random.default_rng(0))
    assert dist.shape == (300, K, 3)
    np.testing.assert_array_equal(dist[:, :, 0], dist[:, :, 2])
    report = evaluate_policy(trained_greedy(), b, np.random.default_rng(0), n_resamples=50)
    assert set(report.estimates) == set(DEFAULT_ESTIMATORS)


def test_replay_is_skipped_with_a_note_on_non_uniform_logs() -> None:
    b = uniform_batch()
    skewed = LoggedBatch(b.contexts, b.candidates, b.actions, b.rewards, np.full(b.n_rounds, 0.3))
    report = evaluate_policy(trained_greedy(), skewed, np.random.default_rng(0), n_resamples=50)
    assert "replay" not in report.estimates
    assert any("replay skipped" in note for note in report.notes)
    with pytest.raises(
        ValueError, match="replay was requested but the log is not uniformly random"
    ):
        evaluate_policy(trained_greedy(), skewed, np.random.default_rng(0), estimators=["replay"])


def test_same_seed_same_report() -> None:
    one = evaluate_policy(
        trained_greedy(), uniform_batch(), np.random.default_rng(4), n_resamples=80
    )
    two = evaluate_policy(
        trained_greedy(), uniform_batch(), np.random.default_rng(4), n_resamples=80
    )
    assert one.to_dict() == two.to_dict()


def test_custom_reward_model_and_estimator_subset() -> None:
    model = CrossFitRewardModel(lambda: RidgeModel(alpha=10.0), n_folds=5)
    report = evaluate_policy(
        trained_greedy(),
        uniform_batch(),
        np.random.default_rng(0),
        estimators=["dm", "dr"],
        reward_model=model,
        n_resamples=50,
        level=0.8,
    )
    assert list(report.estimates) == ["dm", "dr"]
    assert report["dr"].level == 0.8
    assert "5-fold" in report.notes[0]


def test_logged_batch_accepts_arm_ids_and_fingerprints_its_content() -> None:
    b = uniform_batch(30)
    by_id = LoggedBatch(
        b.contexts, b.candidates, [b.candidates.ids[a] for a in b.actions], b.rewards, b.pscore
    )
    np.testing.assert_array_equal(by_id.actions, b.actions)
    assert by_id.fingerprint() == b.fingerprint()
    changed = LoggedBatch(b.contexts, b.candidates, b.actions, 1 - b.rewards, b.pscore)
    assert changed.fingerprint() != b.fingerprint()


def test_rewards_of_any_finite_scale_are_evaluated_but_contexts_keep_the_bound() -> None:
    """Revenue in cents may exceed MAX_ABS_INPUT: estimators only average rewards, and an
    estimate scales with them; contexts, which reward models factor, keep the bound."""
    b = uniform_batch(300, seed=4)
    rich = LoggedBatch(b.contexts, b.candidates, b.actions, 1e9 * b.rewards, b.pscore)
    plain = evaluate_policy(trained_greedy(), b, np.random.default_rng(0), n_resamples=50)
    scaled = evaluate_policy(trained_greedy(), rich, np.random.default_rng(0), n_resamples=50)
    for name in ("ips", "snips"):
        assert scaled.estimates[name].value == pytest.approx(1e9 * plain.estimates[name].value)
    huge = b.contexts.copy()
    huge[3, 1] = 2 * MAX_ABS_INPUT
    with pytest.raises(ValueError, match=r"contexts must be at most 1e\+06 in magnitude"):
        LoggedBatch(huge, b.candidates, b.actions, b.rewards, b.pscore)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"actions": np.full(30, 7)}, r"actions must index the 4 candidates; got 7 at index 0"),
        ({"actions": ["zz"] * 30}, r"actions\[0\] = 'zz' is not a candidate id"),
        ({"rewards": np.ones(29)}, "rewards must have length 30"),
        (
            {"positions": np.ones(30, dtype=int)},
            r"positions must be in \[0, len_list = 1\); got 1 at index 0",
        ),
        ({"contexts": np.full((30, DIM_USER), np.nan)}, "contexts must be finite"),
    ],
)
def test_logged_batch_rejects_bad_fields(change: dict, message: str) -> None:
    b = uniform_batch(30)
    fields = {
        "contexts": b.contexts,
        "candidates": b.candidates,
        "actions": b.actions,
        "rewards": b.rewards,
        "pscore": b.pscore,
    }
    with pytest.raises(ValueError, match=message):
        LoggedBatch(**{**fields, **change})


def test_report_round_trips_through_json(tmp_path: Path) -> None:
    report = evaluate_policy(
        trained_greedy(), uniform_batch(), np.random.default_rng(0), n_resamples=50
    )
    text = report.to_json(tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(text)
    again = OPEReport.from_json(text)
    assert again == report


def test_mlflow_metrics_are_a_flat_dict_of_floats() -> None:
    report = evaluate_policy(
        trained_greedy(), uniform_batch(), np.random.default_rng(0), n_resamples=50
    )
    metrics = report.to_mlflow_metrics()
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in metrics.items())
    assert metrics["ope.dr.value"] == report["dr"].value
    assert metrics["ope.dr.ci_low"] == report["dr"].ci_low
    assert metrics["ope.ips.ess"] == report["ips"].ess
    assert metrics["ope.replay.n_matched"] == report["replay"].params["n_matched"]
    assert metrics["ope.n_rounds"] == 800.0


def test_plot_writes_a_png(tmp_path: Path) -> None:
    report = evaluate_policy(
        trained_greedy(), uniform_batch(), np.random.default_rng(0), n_resamples=50
    )
    path = report.plot(tmp_path / "ope.png", truth=0.3)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_missing_estimator_in_report_names_the_available_ones() -> None:
    report = evaluate_policy(
        trained_greedy(),
        uniform_batch(),
        np.random.default_rng(0),
        estimators=["ips"],
        n_resamples=20,
    )
    with pytest.raises(KeyError, match="no 'dr' estimate in this report; it has: ips"):
        report["dr"]


def test_evaluate_policy_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="batch must be a LoggedBatch"):
        evaluate_policy(trained_greedy(), {}, np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown estimator 'ipw'"):
        evaluate_policy(
            trained_greedy(), uniform_batch(), np.random.default_rng(0), estimators=["ipw"]
        )
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator"):
        evaluate_policy(trained_greedy(), uniform_batch(), 0)  # type: ignore[arg-type]
