"""The blocked evaluation (``validation.ope.evaluate.evaluate_policy_in_blocks``) against
the dense arrays it replaces, and the retrain's evaluation of a window whose clients sent
fresh candidate ids (it needed tens of GB: the kernel killed the nightly run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bandit_core import make_policy
from benchmarks.scale import synthetic_replay
from training import evaluate as training_evaluate
from training.evaluate import blocks_of, logged_batch
from training.replay import load_replay
from validation.gate import GateRule
from validation.ope import check_feedback
from validation.ope.estimate import estimate
from validation.ope.evaluate import (
    default_reward_model,
    evaluate_policy_in_blocks,
    policy_action_dist,
)
from validation.ope.reward_models import fold_ids


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 uniformly logged decisions, 6 of 24 items offered each (the sets vary)."""
    return synthetic_replay(tmp_path_factory.mktemp("blocks") / "replay.parquet", 600, seed=5)


def _policy(data: object) -> object:
    policy = make_policy("shared_linucb", dim_user=data.dim_user, dim_arm=data.dim_arm, alpha=0.3)  # type: ignore[attr-defined]
    policy.update_batch(data.contexts, data.arm_ids, data.rewards, data.arm_features)  # type: ignore[attr-defined]
    return policy


def test_blocks_give_the_dense_estimates(replay: Path) -> None:
    """Every estimator, point and interval, equals the dense arrays' with the same reward
    model (``[context ; arm features]``, the same folds): a block computes the three
    per-round numbers the estimators read."""
    data = load_replay(replay)
    policy = _policy(data)
    parts = blocks_of(data)
    assert len(parts) > 2  # 256-round blocks
    blocks = [logged_batch(data.subset(p)) for p in parts]
    got = evaluate_policy_in_blocks(policy, blocks, np.random.default_rng(3), n_resamples=200)

    rng = np.random.default_rng(3)
    dense = logged_batch(data)
    model = default_reward_model()
    fold = fold_ids(dense.n_rounds, model.n_folds, rng)
    dist = np.concatenate([_widen(policy_action_dist(policy, b, rng), b, dense) for b in blocks])
    q = model.fit_predict(
        dense.contexts, dense.actions, dense.rewards, dense.candidates.features, folds=fold
    )
    fb = check_feedback(dense.rewards, dense.actions, dense.pscore, dist, dense.positions, q)
    assert set(got.estimates) == {"ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros"}
    for name, est in got.estimates.items():
        ref = estimate(name, fb, rng, n_resamples=200)
        for key in ("value", "ci_low", "ci_high", "ess", "max_weight"):
            assert getattr(est, key) == pytest.approx(getattr(ref, key), rel=1e-9, abs=1e-12)
        assert est.params.get("lambda_") == ref.params.get("lambda_")


def _widen(dist: np.ndarray, block: object, dense: object) -> np.ndarray:
    """A block's (n, K_block, L) distribution over the dense batch's actions."""
    cols = [dense.candidates.ids.index(a) for a in block.candidates.ids]  # type: ignore[attr-defined]
    out = np.zeros((dist.shape[0], len(dense.candidates), dist.shape[2]))  # type: ignore[attr-defined]
    out[:, cols, :] = dist
    return out


def test_fresh_candidate_ids_cannot_blow_up_the_retrain_evaluation(
    replay: Path, tmp_path: Path
) -> None:
    """Rows offering 1,000 ids each that no other row offers: the window's dense arrays
    pass the limit, the evaluation runs in blocks of bounded size and still decides."""
    frame = pd.read_parquet(replay)
    flood = frame.iloc[-5:].copy()
    width = len(frame["candidate_features"].iloc[0][0])
    for i in flood.index:
        flood.at[i, "event_id"] = f"flood-{i}"  # decisions of their own
        flood.at[i, "candidate_ids"] = [f"fresh-{i}-{j}" for j in range(1000)]
        flood.at[i, "candidate_features"] = [[0.1] * width for _ in range(1000)]
        flood.at[i, "chosen"] = 0
        flood.at[i, "arm_id"] = f"fresh-{i}-0"
        flood.at[i, "propensity"] = 0.001
        flood.at[i, "probabilities"] = [0.001] * 1000
    flooded = tmp_path / "flooded.parquet"
    pd.concat([frame, flood], ignore_index=True).to_parquet(flooded)
    _, holdout = load_replay(flooded).split(0.2)
    assert training_evaluate.dense_entries(holdout) > 100 * holdout.n_rows
    data = load_replay(flooded)
    state = tmp_path / "policy.npz"
    from bandit_core import save_policy

    save_policy(_policy(data), state)
    limit = training_evaluate.dense_entries(holdout) - 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_evaluate, "DENSE_ENTRIES", limit)
        result = training_evaluate.evaluate(
            state, None, flooded, rule=GateRule(min_ess=1.0), n_resamples=50
        )
    assert any("blocks" in note for note in result.candidate.notes)
    assert all(np.isfinite(e.value) for e in result.candidate.estimates.values())
    assert result.candidate.data_fingerprint == result.production.data_fingerprint
    sizes = [
        len({a for ids in holdout.subset(b).candidate_ids for a in ids}) for b in blocks_of(holdout)
    ]
    assert max(sizes) <= training_evaluate.BLOCK_ACTIONS + 1000


def test_block_bounds_cut_by_rounds_and_by_distinct_candidates() -> None:
    rows = [["a", "b"], ["b", "c"], ["d"], ["a", "e", "f", "g"], ["a"], ["b"]]
    # by rounds only: three rounds a block, numbered from ``start``
    assert training_evaluate.block_bounds(rows, start=10, rounds=3, actions=99) == [
        (10, 13),
        (13, 16),
    ]
    # by distinct candidates: {a,b,c} then {d} (+ the next four would make five) then a
    # round of four alone (over the bound only with the next one), then {a,b}
    assert training_evaluate.block_bounds(rows, rounds=99, actions=3) == [
        (0, 2),
        (2, 3),
        (3, 4),
        (4, 6),
    ]
    assert training_evaluate.block_bounds([], start=5) == []
    assert training_evaluate.block_bounds([[]]) == [(0, 1)]
    with pytest.raises(ValueError, match="rounds and actions must be at least 1"):
        training_evaluate.block_bounds(rows, actions=0)


def test_block_bounds_cut_where_an_item_comes_with_other_features() -> None:
    rows = [["a", "b"], ["b", "c"], ["a"], ["c"]]
    same = [[[0.0], [1.0]], [[1.0], [2.0]], [[0.0]], [[2.0]]]
    assert training_evaluate.block_bounds(rows, candidate_features=same) == [(0, 4)]
    moved = [[[0.0], [1.0]], [[1.0], [2.0]], [[0.5]], [[2.0]]]  # a's price changed
    assert training_evaluate.block_bounds(rows, candidate_features=moved) == [(0, 2), (2, 4)]


def test_items_sent_with_per_request_features_are_judged_on_each_row_s(
    replay: Path, tmp_path: Path
) -> None:
    """Clients may send each candidate's features with the request (a price, a
    freshness). One candidate table for the window scored every row with each item's
    features from its first appearance: the policy was judged on stale features (a model
    worth 0.83 estimated at 0.37, and rejected: audit, stop 54). IPS of a greedy policy
    is then exactly the mean over the held-out rows of 1{it picks the logged item on that
    row's own features} · r / p."""
    from bandit_core import Candidates, save_policy

    frame = pd.read_parquet(replay)
    rng = np.random.default_rng(8)
    feats, rewards = [], []
    for row in frame.itertuples():
        f = np.stack([np.asarray(r, dtype=np.float64) for r in row.candidate_features])
        f[:, 0] = rng.normal(scale=2.0, size=f.shape[0])  # per request
        feats.append([list(r) for r in f])
        click = 1.0 / (1.0 + np.exp(-(3.0 * f[int(row.chosen), 0] - 1.0)))
        rewards.append(float(rng.random() < click))
    frame["candidate_features"] = feats
    frame["reward"] = rewards
    path = tmp_path / "per_request.parquet"
    frame.to_parquet(path)
    data = load_replay(path)
    assert training_evaluate.features_vary(data)
    policy = make_policy("shared_linucb", dim_user=data.dim_user, dim_arm=data.dim_arm, alpha=0.0)
    policy.update_batch(data.contexts, data.arm_ids, data.rewards, data.arm_features)
    state = save_policy(policy, tmp_path / "candidate.npz")
    result = training_evaluate.evaluate(
        state, None, path, rule=GateRule(min_ess=1.0), n_resamples=50
    )
    _, holdout = data.split(training_evaluate.HOLDOUT_FRACTION)
    terms = []
    for i in range(holdout.n_rows):
        ids, f = holdout.candidate_ids[i], holdout.candidate_features[i]
        choice = policy.select(holdout.contexts[i], Candidates(tuple(ids), f), rng)
        picked = choice.arm_id == holdout.arm_ids[i]
        terms.append(picked * holdout.rewards[i] / holdout.propensities[i])
    assert result.candidate.estimates["ips"].value == pytest.approx(np.mean(terms), rel=1e-9)
