"""Measured propensity errors: the reported standard error, adaptive draws, OPE flags."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from bandit_core import Candidates, make_policy
from eventstore.engine import make_engine
from eventstore.schema import decisions
from tests.serving_helpers import decision_body, policy_file, running_client, service_settings
from training.evaluate import evaluate
from training.replay import extract_replay, load_replay
from validation.gate import GateRule
from validation.ope.propensity_error import flag_propensity_error

pytest_plugins = ["tests.serving_fixtures"]


def _trained(name: str, **options: object) -> object:
    policy = make_policy(name, dim_user=3, dim_arm=2, **options)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((4, 2))
    for _ in range(80):
        x = rng.standard_normal(3)
        arm = int(rng.integers(4))
        r = float(rng.random() < 1 / (1 + np.exp(-x[0] * (arm - 1.5))))
        policy.update(x, str(arm), r, feats[arm])
    return policy, Candidates(tuple("0123"), feats)  # type: ignore[return-value]


#: a small MC-dropout network in Thompson mode (it reported no error: "exact")
_DROPOUT = {"hidden": (8,), "retrain_every": 40, "epochs": 2, "dropout": 0.3, "mode": "ts"}


@pytest.mark.parametrize(
    ("name", "options"), [("shared_lints", {}), ("logistic_ts", {}), ("dropout", _DROPOUT)]
)
def test_reported_standard_error_matches_the_spread_of_estimates(
    name: str, options: dict[str, object]
) -> None:
    policy, cands = _trained(name, n_sim=200, **options)  # type: ignore[misc]
    x = np.array([0.3, -1.0, 0.5])
    n = 400
    batch = policy.select_batch(np.tile(x, (n, 1)), cands, np.random.default_rng(1))
    assert batch.propensity_se is not None
    # estimates of one arm's probability across independent decisions
    arm = int(np.bincount(batch.arms).argmax())
    estimates = batch.probabilities[:, arm]
    rows = batch.arms == arm
    spread = estimates.std(ddof=1)
    reported = np.sqrt(np.mean(batch.propensity_se[rows] ** 2))
    assert 0.7 * spread < reported < 1.3 * spread, (spread, reported)
    d = policy.select(x, cands, np.random.default_rng(2))
    assert d.propensity_se is not None and d.propensity_se >= 0.0


def test_a_floor_over_a_monte_carlo_policy_reports_the_error_of_its_propensities() -> None:
    """The floors (overlap, exploration, cold start) and the exposure cap mix exact parts
    with the inner policy's Monte-Carlo probabilities; they dropped its standard error, so
    every retrained version (floored by default) logged none. The mixture's error is the
    inner one scaled by the inner policy's share; an arm the floor served instead has the
    binomial error at the draws the chosen arm's error implies (an estimate: still within
    the spread of its estimates here)."""
    policy, cands = _trained("shared_lints", n_sim=200, floor=0.15)  # type: ignore[misc]
    x = np.array([0.3, -1.0, 0.5])
    batch = policy.select_batch(np.tile(x, (3000, 1)), cands, np.random.default_rng(1))
    assert batch.propensity_se is not None
    checked = 0
    for arm in range(len(cands)):
        rows = batch.arms == arm
        if rows.sum() < 100:
            continue
        spread = batch.propensities[rows].std(ddof=1)
        reported = np.sqrt(np.mean(batch.propensity_se[rows] ** 2))
        assert 0.75 * spread < reported < 1.3 * spread, (arm, spread, reported)
        checked += 1
    assert checked >= 3  # the floor served arms the inner policy did not choose
    one = policy.select(x, cands, np.random.default_rng(2))
    assert one.propensity_se is not None and one.policy.endswith("+overlap")


def test_adaptive_draws_reach_the_target_relative_error_within_the_cap() -> None:
    policy, cands = _trained("shared_lints", n_sim=50, target_rel_error=0.02, max_sim=40_000)  # type: ignore[misc]
    x = np.array([0.3, -1.0, 0.5])
    batch = policy.select_batch(np.tile(x, (50, 1)), cands, np.random.default_rng(3))
    rel = batch.propensity_se / batch.propensities
    # sized for the arm the pilot drew: met where the decision drew it too (most rows)
    assert (rel <= 0.02 * 1.05).mean() > 0.6 and np.median(rel) <= 0.02 * 1.05, rel
    fixed, _ = _trained("shared_lints", n_sim=50)  # type: ignore[misc]
    plain = fixed.select_batch(np.tile(x, (50, 1)), cands, np.random.default_rng(3))
    assert np.median(plain.propensity_se / plain.propensities) > 0.02 * 1.05
    # the cap binds: with max_sim = n_sim nothing more is drawn
    capped, _ = _trained("shared_lints", n_sim=50, target_rel_error=0.001, max_sim=52)  # type: ignore[misc]
    again = capped.select_batch(np.tile(x, (50, 1)), cands, np.random.default_rng(3))
    np.testing.assert_array_equal(again.probabilities, plain.probabilities)


def test_exact_policies_report_no_standard_error() -> None:
    policy = make_policy("lints", dim_user=3)
    d = policy.select(np.ones(3), Candidates.from_any(["a", "b"]), np.random.default_rng(0))
    assert d.propensity_se is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_rel_error": 0.0}, r"'target_rel_error' parameter of SharedLinTSConfig"),
        ({"target_rel_error": 1.5}, r"'target_rel_error' parameter of SharedLinTSConfig"),
        ({"n_sim": 100, "max_sim": 50}, r"'max_sim' parameter of SharedLinTSConfig must be at"),
    ],
)
def test_monte_carlo_options_are_validated(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_policy("shared_lints", dim_user=3, dim_arm=2, **options)


def test_rows_with_large_propensity_error_are_flagged() -> None:
    pscore = np.array([0.5, 0.02, 0.3, 0.01])
    se = np.array([0.01, 0.01, np.nan, 0.0])
    np.testing.assert_array_equal(
        flag_propensity_error(pscore, se, max_rel_error=0.1), [False, True, False, False]
    )
    with pytest.raises(ValueError, match=r"propensity_se must have shape \(4,\)"):
        flag_propensity_error(pscore, se[:3])
    with pytest.raises(ValueError, match=r"pscore must lie in \(0, 1\]"):
        flag_propensity_error([0.0], [0.1])
    with pytest.raises(ValueError, match="max_rel_error must be a float > 0"):
        flag_propensity_error(pscore, se, max_rel_error=0.0)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("shared_lints", {"n_sim": 20}),
        ("shared_lints", {"n_sim": 20, "floor": 0.05, "cold_start_floor": 0.02}),
        ("shared_linucb", {}),
    ],
)
def test_served_propensity_errors_are_logged_and_flagged_offline(
    tmp_path: Path, rng: np.random.Generator, name: str, options: dict[str, float]
) -> None:
    """A Monte-Carlo propensity's standard error is stored with its decision (it was
    returned by the policy and dropped), carried by the replay, and the offline
    evaluation flags the held-out rows whose weight it makes uncertain; an exact policy
    logs none and nothing is flagged."""
    settings = service_settings(
        tmp_path, model_path=policy_file(tmp_path / "p.npz", name, **options), reward_window_s=0.2
    )
    start = datetime.now(UTC)
    answered: list[float | None] = []
    with running_client(settings) as client:
        for step in range(60):
            made = client.post("/v1/decisions", json=decision_body(rng, n=5)).json()
            answered.append(made["propensity_se"])
            reward = {"event_id": made["event_id"], "reward": float(step % 3 == 0)}
            assert client.post("/v1/rewards", json=reward).status_code == 200
    engine = make_engine(settings.store_url)
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(decisions.c.propensity, decisions.c.propensity_se).order_by(decisions.c.id)
        ).all()
    engine.dispose()
    monte_carlo = name == "shared_lints"  # its floored version too
    assert len(stored) == 60
    assert answered == [se for _, se in stored]  # the client is told what is logged
    assert any(se for _, se in stored) == monte_carlo
    for p, se in stored:
        if monte_carlo:  # of 20 draws
            assert se is not None and 0.0 <= se < 0.5 and 0.0 < p <= 1.0
        else:
            assert se is None
    time.sleep(0.3)  # every reward window closed
    manifest = extract_replay(
        settings.store_url,
        start,
        datetime.now(UTC),
        tmp_path / "replay",
        reward_window=timedelta(seconds=0.2),
    )
    data = load_replay(manifest.path)
    assert np.isfinite(data.propensity_ses).all() == monte_carlo
    result = evaluate(
        tmp_path / "p.npz", None, manifest.path, rule=GateRule(min_ess=0.0), n_resamples=20
    )
    flags = result.propensity
    assert flags is not None and flags.rows == 12  # the held-out 20 %
    _, holdout = data.split(0.2)
    expected = flag_propensity_error(holdout.propensities, holdout.propensity_ses)
    assert flags.flagged == int(expected.sum()) and flags.monte_carlo == (12 if monte_carlo else 0)
    assert (flags.flagged > 0) == monte_carlo  # 20 draws: se / p > 0.1 below p = 0.98
    noted = [n for n in result.candidate.notes if "Monte-Carlo propensity" in n]
    assert len(noted) == int(monte_carlo) and noted == [
        n for n in result.production.notes if "Monte-Carlo propensity" in n
    ]
    assert result.metrics()["ope.propensity_flagged_rows"] == flags.flagged
    assert result.to_dict()["propensity_error"]["flagged"] == flags.flagged
