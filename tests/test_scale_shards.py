"""The map-reduce head rebuild and OPE (``training.shards``) against the single-node path.

Real pipeline pieces throughout: a replay Parquet file, ``training.train.train`` for the
frozen network / policy, ``training.train.rebuild_head`` as the single-node reference,
and the estimators of ``validation.ope`` run once over all held-out rounds (with
``validation.ope.RidgeModel`` as the reward model's oracle).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from bandit_core import load_policy
from benchmarks.scale import synthetic_replay
from training import shards
from training.evaluate import logged_batch, support_of
from training.replay import load_replay
from training.train import TrainConfig, rebuild_head, train
from validation.gate import GateRule
from validation.ope import RidgeModel, check_feedback, policy_action_dist, round_terms
from validation.ope.moments import Moments

ROWS = 1200
HOLDOUT = 0.25
#: Above the propensity (0.03) at which the ``rare`` replay logs five of each row's six
#: items: the candidate's mass on them counts as unsupported.
SUPPORT_THRESHOLD = 0.05
HEAD_ARRAYS = ("precision_", "xty_", "yty_", "count_", "theta_", "inv_chol_")


def rel(a: Any, b: Any) -> float:
    """‖a − b‖ / ‖b‖ (0 when both are 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = float(np.linalg.norm(b))
    diff = float(np.linalg.norm(a - b))
    return diff if scale == 0.0 else diff / scale


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1200 uniformly logged decisions, 6 of 24 items offered each (sets vary per row),
    written in row groups of 500 so that shards straddle row groups."""
    path = tmp_path_factory.mktemp("replay") / "replay.parquet"
    return synthetic_replay(path, ROWS, seed=3, row_group=500)


def _shard_dicts(replay: Path, out: Path, part: str, ranges: list[tuple[int, int]]) -> list[Any]:
    return [
        {
            "replay": str(replay),
            "out_dir": str(out),
            "part": part,
            "index": i,
            "start": lo,
            "stop": hi,
        }
        for i, (lo, hi) in enumerate(ranges)
    ]


def _trained(replay: Path, out: Path, algorithm: str, options: dict[str, Any]) -> Any:
    config = TrainConfig(
        algorithm=algorithm, options=options, min_rows=10, holdout_fraction=HOLDOUT
    )
    return train(replay, config, out / "train")


def test_training_rows_decode_like_the_replay_loader(replay: Path) -> None:
    rows = shards.TrainingRows.from_table(
        shards.read_rows(replay, 450, 1010, shards._TRAIN_COLUMNS)
    )
    ref = load_replay(replay).subset(slice(450, 1010))
    assert np.array_equal(rows.contexts, ref.contexts)
    assert np.array_equal(rows.arm_features, ref.arm_features)
    assert rows.arm_ids == ref.arm_ids and np.array_equal(rows.rewards, ref.rewards)


def test_shard_ranges_cover_the_window_in_whole_blocks() -> None:
    assert shards.shard_ranges(0, 10, 3) == [(0, 4), (4, 7), (7, 10)]
    blocks = [(100, 164), (164, 228), (228, 292), (292, 356), (356, 360)]
    assert shards.shard_blocks(blocks, 4) == [
        [(100, 164), (164, 228)],
        [(228, 292)],
        [(292, 356)],
        [(356, 360)],
    ]
    assert shards.shard_blocks(blocks, 1) == [blocks]
    assert shards.shard_ranges(0, 5, 8) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    for bad in (lambda: shards.shard_ranges(0, 5, 0), lambda: shards.shard_blocks(blocks, 0)):
        with pytest.raises(ValueError, match="shards must be at least 1"):
            bad()


@pytest.mark.parametrize(
    ("algorithm", "options"),
    [
        ("shared_linucb", {"interactions": True}),
        ("linucb", {}),  # one head per arm, arms first seen in different shards
        ("shared_lints", {"gamma": 0.995}),  # discounted: S = γ^{n_b} S_a + S_b
        ("neural_linear", {"hidden": [8], "epochs": 2}),  # encoded by the frozen network
    ],
)
@pytest.mark.parametrize("n_shards", [1, 4])
def test_sharded_rebuild_equals_the_single_node_rebuild(
    replay: Path, tmp_path: Path, algorithm: str, options: dict[str, Any], n_shards: int
) -> None:
    trained = _trained(replay, tmp_path, algorithm, options)
    single = rebuild_head(trained.state_path, replay, tmp_path / "single.npz", HOLDOUT)
    cut = shards.split_point(ROWS, HOLDOUT)
    ranges = shards.shard_ranges(0, cut, n_shards)
    parts = [
        shards.shard_statistics(s, trained.state_path)
        for s in _shard_dicts(replay, tmp_path / "shards", "train", ranges)
    ]
    assert [p["rows"] for p in parts] == [hi - lo for lo, hi in ranges]
    state, _ = shards.reduce_head(trained.state_path, parts[::-1], tmp_path / "sharded.npz")
    ref, got = load_policy(single), load_policy(state)
    assert got.to_state().config == ref.to_state().config
    assert got.head.n_heads == ref.head.n_heads
    for name in HEAD_ARRAYS:
        assert rel(getattr(got.head, name), getattr(ref.head, name)) <= 1e-9, name
    if "arm_ids" in ref.to_state().arrays:
        assert list(got.to_state().arrays["arm_ids"]) == list(ref.to_state().arrays["arm_ids"])


@pytest.fixture(scope="module")
def poisoned_replay(replay: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``replay`` with five training rows whose context has one input at 1e5 where the
    others are ~1 (leverage points): in the first shard, a run of two in the second, one
    in the last (of four), and one in the held-out part."""
    import pyarrow.parquet as pq

    table = pq.read_table(replay)
    contexts = [list(c) for c in table.column("context").to_pylist()]
    for row, axis in ((100, 0), (300, 1), (301, 1), (800, 2), (1000, 3)):
        contexts[row][axis] = 1e5
    index = table.schema.get_field_index("context")
    field = table.schema.field(index)
    column = pa.array(contexts, type=field.type)
    path = tmp_path_factory.mktemp("poisoned") / "replay.parquet"
    pq.write_table(table.set_column(index, field, column), path, row_group_size=500)
    return path


@pytest.mark.parametrize(
    ("algorithm", "options"),
    [
        ("shared_linucb", {"interactions": True}),
        ("linucb", {}),
        ("shared_lints", {"gamma": 0.995}),
        ("neural_linear", {"hidden": [8], "epochs": 2}),
    ],
)
@pytest.mark.parametrize("named", [True, False], ids=["named-by-training", "judged-by-shards"])
def test_the_sharded_rebuild_leaves_out_the_rows_the_single_node_one_refuses(
    poisoned_replay: Path,
    tmp_path: Path,
    algorithm: str,
    options: dict[str, Any],
    named: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Which rows a head refuses as out of scale depends on every row before them: the
    first shard leaves them out itself, and a later shard that may hold one is read again
    after the rows before it. Before, the shards summed every row: a sharded retrain
    learnt the leverage points the service and the single-node retrain refuse."""
    trained = _trained(poisoned_replay, tmp_path, algorithm, options)
    single = rebuild_head(trained.state_path, poisoned_replay, tmp_path / "single.npz", HOLDOUT)
    cut = shards.split_point(ROWS, HOLDOUT)
    ranges = shards.shard_ranges(0, cut, 4)
    # named: as the DAG's mapped task, with the rows the training left out; else the
    # shards and the reduce find them themselves (a later shard read again)
    left_out = trained.refused_rows if named else []
    parts = [
        shards.shard_statistics(s, trained.state_path, left_out)
        for s in _shard_dicts(poisoned_replay, tmp_path / "shards", "train", ranges)
    ]
    with caplog.at_level("WARNING", logger="training.shards"):
        state, _ = shards.reduce_head(trained.state_path, parts, tmp_path / "sharded.npz")
    ref, got = load_policy(single), load_policy(state)
    for name in HEAD_ARRAYS:
        assert rel(getattr(got.head, name), getattr(ref.head, name)) <= 1e-9, name
    read_again = [r.getMessage() for r in caplog.records if "read again" in r.getMessage()]
    if algorithm != "linucb":  # one shared head: every poisoned training row refused
        assert float(np.sum(got.head.count_)) < cut - 1  # discounted or not, fewer rows
        assert round(float(np.sum(ref.head.count_))) == round(float(np.sum(got.head.count_)))
        assert sorted(trained.refused_rows) == [100, 300, 301, 800]
        if named:
            assert not read_again, read_again
        else:
            assert any("shard 1" in m for m in read_again)
            assert any("shard 3" in m for m in read_again)
            assert not any("shard 2" in m for m in read_again), read_again  # proved clean


@pytest.mark.parametrize("algorithm", ["shared_linucb", "linucb"])
def test_rows_the_training_left_out_are_left_out_of_the_sharded_head(
    replay: Path, tmp_path: Path, algorithm: str
) -> None:
    """A neural policy's training judges rows by the network before its training and
    leaves them out of its buffer, which the single-node rebuild learns; the trained
    network may judge them otherwise. The shards leave out exactly the rows the training
    names (``TrainResult.refused_rows``), in the first shard and later ones, and nothing
    else."""
    trained = _trained(
        replay,
        tmp_path,
        algorithm,
        {"interactions": True} if algorithm.startswith("shared") else {},
    )
    cut = shards.split_point(ROWS, HOLDOUT)
    ranges = shards.shard_ranges(0, cut, 4)
    left_out = [10, 250, 251, 899]
    whole = [
        shards.shard_statistics(s, trained.state_path)
        for s in _shard_dicts(replay, tmp_path / "whole", "train", ranges)
    ]
    parts = [
        shards.shard_statistics(s, trained.state_path, left_out)
        for s in _shard_dicts(replay, tmp_path / "less", "train", ranges)
    ]
    policy = load_policy(trained.state_path)
    full, *_ = shards.reduce_statistics(whole, policy)
    less, *_, refused = shards.reduce_statistics(parts, policy)
    assert refused == len(left_out)
    rows = load_replay(replay).subset(np.array(left_out))
    phi, keys = policy.head_features(rows.contexts, rows.arm_ids, rows.arm_features)
    expected = full.gram.copy()
    for i, key in enumerate(keys or [""] * len(left_out)):
        expected[full.keys.index(key)] -= np.outer(phi[i], phi[i])
    at = [less.keys.index(k) for k in full.keys]
    np.testing.assert_allclose(less.gram[at], expected, rtol=1e-10, atol=1e-9)
    assert int(less.rows.sum()) == cut - len(left_out)


def test_a_clean_window_reads_no_shard_again(
    replay: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trained = _trained(replay, tmp_path, "shared_linucb", {"interactions": True})
    ranges = shards.shard_ranges(0, shards.split_point(ROWS, HOLDOUT), 4)
    parts = [
        shards.shard_statistics(s, trained.state_path)
        for s in _shard_dicts(replay, tmp_path / "shards", "train", ranges)
    ]
    with caplog.at_level("WARNING", logger="training.shards"):
        state, _ = shards.reduce_head(trained.state_path, parts, tmp_path / "sharded.npz")
    assert not [r for r in caplog.records if "read again" in r.getMessage()]
    assert float(load_policy(state).head.count_[0]) == shards.split_point(ROWS, HOLDOUT)


def test_a_tampered_shard_is_refused_naming_its_array(replay: Path, tmp_path: Path) -> None:
    """A shard file whose statistics do not fit its heads, or hold NaN or a negative count,
    is refused before the merge, naming the array (a head short gave numpy's broadcast
    error; NaN reached the head's factorisation)."""
    trained = _trained(replay, tmp_path, "linucb", {})
    ranges = shards.shard_ranges(0, shards.split_point(ROWS, HOLDOUT), 2)
    parts = [
        shards.shard_statistics(s, trained.state_path)
        for s in _shard_dicts(replay, tmp_path / "shards", "train", ranges)
    ]
    path = Path(parts[1]["path"])
    with np.load(path, allow_pickle=False) as data:
        arrays = dict(data)
    nan_xty = arrays["xty"].copy()
    nan_xty[0, 0] = np.nan
    for name, bad, why in (
        ("gram", arrays["gram"][:-1], "must have shape"),
        ("xty", nan_xty, "must hold finite numbers"),
        ("count", -arrays["count"], "must not be negative"),
        ("peak", arrays["peak"][:-1], "must have shape"),  # decides what is read again
        ("peak", -arrays["peak"], "must hold finite numbers, not negative"),
    ):
        with path.open("wb") as fh:
            np.savez(fh, **{**arrays, name: bad})
        with pytest.raises(ValueError, match=rf"head statistics '{name}' {why}"):
            shards.reduce_head(trained.state_path, parts, tmp_path / "out.npz")
    with path.open("wb") as fh:  # written before the outlier check's arrays existed
        np.savez(fh, **{k: v for k, v in arrays.items() if k not in ("exact", "skip")})
    with pytest.raises(ValueError, match="lacks exact, skip: written by an older banditops"):
        shards.reduce_head(trained.state_path, parts, tmp_path / "out.npz")
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    shards.reduce_head(trained.state_path, parts, tmp_path / "out.npz")  # intact: merges


def test_the_reward_model_equals_ridge_on_all_training_rows(replay: Path, tmp_path: Path) -> None:
    cut = shards.split_point(ROWS, HOLDOUT)
    train_rows = load_replay(replay).subset(slice(0, cut))
    z = shards.reward_features(train_rows.contexts, train_rows.arm_features)
    oracle = RidgeModel(alpha=shards.RIDGE_ALPHA).fit(z, train_rows.rewards)
    parts = [
        Moments.of(np.column_stack([z[lo:hi], train_rows.rewards[lo:hi]]))
        for lo, hi in shards.shard_ranges(0, cut, 5)
    ]
    total = parts[0]
    for p in parts[1:]:
        total = total.merge(p)
    model = shards.RidgeRewardModel.from_moments(total)
    assert rel(model.coef, oracle.coef_) <= 1e-9
    assert model.intercept == pytest.approx(oracle.intercept_, rel=1e-9)


def _evaluate_sharded(
    replay: Path, out: Path, state: Path, model: Path, n_shards: int, baseline: Path | None
) -> dict[str, Any]:
    extra = {"seed": 11, "baseline_version": None, "support_threshold": SUPPORT_THRESHOLD}
    extra["baseline_state"] = None if baseline is None else str(baseline)
    parts = [
        shards.shard_evaluation({**s, **extra}, state, model)
        for s in _holdout_shards(replay, out, n_shards)
    ]
    assert len(parts) == min(n_shards, -(-(ROWS - shards.split_point(ROWS, HOLDOUT)) // 64))
    return {**shards.reduce_reports(parts[::-1]), "parts": parts}


def _holdout_shards(replay: Path, out: Path, n_shards: int, **blocking: int) -> list[Any]:
    """The held-out shards :func:`shards.plan` makes, in blocks of 64 rounds by default."""
    cut = shards.split_point(ROWS, HOLDOUT)
    blocking = {"rounds": 64} | blocking
    common = {"replay": str(replay), "out_dir": str(out), "part": "holdout"}
    return [
        {**common, "index": i, **run}
        for i, run in enumerate(shards.holdout_shards(replay, cut, ROWS, n_shards, **blocking))
    ]


def _reference(
    replay: Path, state: Path, baseline: Path, estimator: str
) -> dict[str, dict[str, float]]:
    """One pass over every held-out round: value, ESS, max weight, delta-method interval."""
    data = load_replay(replay)
    cut = shards.split_point(ROWS, HOLDOUT)
    train_rows, holdout = data.subset(slice(0, cut)), data.subset(slice(cut, None))
    z = shards.reward_features(train_rows.contexts, train_rows.arm_features)
    ridge = RidgeModel(alpha=1.0).fit(z, train_rows.rewards)
    batch = logged_batch(holdout)
    zc = shards.candidate_reward_features(batch.contexts, batch.candidates.features)
    q_hat = ridge.predict(zc.reshape(-1, zc.shape[-1])).reshape(zc.shape[:2])[:, :, None]
    # within the rewards the model was fitted on, as every reward model's predictions
    q_hat = np.clip(q_hat, train_rows.rewards.min(), train_rows.rewards.max())
    out = {}
    for role, path in (("candidate", state), ("production", baseline)):
        policy = load_policy(path)
        dist = policy_action_dist(policy, batch, np.random.default_rng(0))
        fb = check_feedback(
            batch.rewards, batch.actions, batch.pscore, dist, batch.positions, q_hat
        )
        terms = round_terms(estimator, fb)
        cols = terms.columns()
        m = cols.mean(axis=0)
        grad = np.zeros(cols.shape[1])  # ∇g of g(m) = num / den (+ base)
        if terms.den is not None:
            grad[0], grad[1] = 1.0 / m[1], -m[0] / m[1] ** 2
        else:
            grad[0] = 1.0
        if terms.base is not None:
            grad[-1] = 1.0
        influence = (cols - m) @ grad  # linearised per-round contribution
        se = float(np.sqrt(np.mean(influence**2) / cols.shape[0]))
        half = NormalDist().inv_cdf(0.975) * se
        w = terms.weights
        out[role] = {
            "value": terms.value(),
            "ci_low": terms.value() - half,
            "ci_high": terms.value() + half,
            "ess": float(w.sum() ** 2 / np.dot(w, w)),
            "max_weight": float(w.max()),
        }
    return out


def _deterministic_pair(replay: Path, tmp_path: Path, n_shards: int) -> tuple[Any, Path, Path]:
    """A production LinUCB and a shared-LinUCB candidate rebuilt from ``n_shards``
    training shards (deterministic: exact propensities, whatever the blocking): the
    baseline's training, the candidate's state and its reward model."""
    cand = _trained(replay, tmp_path / "c", "shared_linucb", {"interactions": True, "alpha": 0.3})
    base = _trained(replay, tmp_path / "b", "linucb", {"alpha": 0.1})
    cut = shards.split_point(ROWS, HOLDOUT)
    parts = [
        shards.shard_statistics(s, cand.state_path)
        for s in _shard_dicts(
            replay, tmp_path / "st", "train", shards.shard_ranges(0, cut, n_shards)
        )
    ]
    state, model = shards.reduce_head(cand.state_path, parts, tmp_path / "cand.npz")
    return base, state, model


@pytest.fixture(scope="module")
def rare_replay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As ``replay``, logged by a policy that plays five of the six items offered with
    propensity 0.03 each: logs that barely support most of what a candidate plays."""
    path = tmp_path_factory.mktemp("rare") / "replay.parquet"
    return synthetic_replay(path, ROWS, seed=3, row_group=500, rare=0.03)


def test_sharded_ope_equals_one_pass_over_the_held_out_rounds(
    rare_replay: Path, tmp_path: Path
) -> None:
    # candidate and production are deterministic (LinUCB: exact propensities), so their
    # action_dist on a round does not depend on how rounds are grouped
    replay = rare_replay
    base, state, model = _deterministic_pair(replay, tmp_path, 3)
    cut = shards.split_point(ROWS, HOLDOUT)
    reports = _evaluate_sharded(replay, tmp_path / "ope", state, model, 3, Path(base.state_path))
    assert reports["candidate"].data_fingerprint == reports["production"].data_fingerprint
    # the support check sums over shards to the single-node figure, at any threshold
    holdout = load_replay(replay).subset(slice(cut, None))
    batch = logged_batch(holdout)
    for threshold in (0.1, SUPPORT_THRESHOLD):
        one = support_of(load_policy(state), holdout, batch, threshold, seed=0)
        assert one is not None
        extra = {"support_threshold": threshold, "baseline_state": str(base.state_path)}
        extra |= {"seed": 11, "baseline_version": None}
        parts_t = [
            shards.shard_evaluation({**sh, **extra}, state, model)
            for sh in _holdout_shards(replay, tmp_path / f"ope-{threshold}", 3)
        ]
        assert shards.reduce_support(parts_t) == pytest.approx(one, rel=1e-12, abs=1e-15)
    assert one > 0.5  # the candidate mostly plays what the logs barely support
    # and the sharded gate refuses the candidate the logs do not support, with the figure
    rule = GateRule(tolerance=0.9, min_ess=1.0, support_threshold=SUPPORT_THRESHOLD)
    result = shards.reduce_evaluation(reports["parts"], rule, tmp_path / "evaluation")
    assert not result.gate.promote
    assert float(result.gate.to_tags()["gate.unsupported_mass"]) == pytest.approx(one)
    (support,) = [c for c in result.gate.checks if c.name == "support"]
    assert not support.passed and support.value == pytest.approx(one)
    # the gate's paired difference: the candidate minus production round by round
    diff = result.difference
    dr_c, dr_p = reports["candidate"]["dr"], reports["production"]["dr"]
    assert diff is not None and diff.value == pytest.approx(dr_c.value - dr_p.value, abs=1e-12)
    assert diff.ci_low < diff.value < diff.ci_high
    (lower,) = [c for c in result.gate.checks if c.name == "lower_bound"]
    assert "paired on the same rounds" in lower.reason
    for estimator in shards.SHARDED_ESTIMATORS:
        ref = _reference(replay, state, Path(base.state_path), estimator)
        for role in ("candidate", "production"):
            est = reports[role][estimator]
            assert est.n_rounds == ROWS - cut and est.n_resamples == 0
            for key, value in ref[role].items():
                assert getattr(est, key) == pytest.approx(value, rel=1e-9, abs=1e-12), (
                    role,
                    estimator,
                    key,
                )


def test_thompson_estimates_do_not_depend_on_the_shard_count(replay: Path, tmp_path: Path) -> None:
    """Monte-Carlo propensities come from a generator per fixed block of rounds."""
    cand = _trained(replay, tmp_path, "shared_lints", {"interactions": True, "n_sim": 50})
    cut = shards.split_point(ROWS, HOLDOUT)
    parts = [
        shards.shard_statistics(s, cand.state_path)
        for s in _shard_dicts(replay, tmp_path / "st", "train", shards.shard_ranges(0, cut, 2))
    ]
    state, model = shards.reduce_head(cand.state_path, parts, tmp_path / "cand.npz")
    one = _evaluate_sharded(replay, tmp_path / "one", state, model, 1, None)
    three = _evaluate_sharded(replay, tmp_path / "three", state, model, 3, None)
    assert one["candidate"].data_fingerprint == three["candidate"].data_fingerprint
    for role in ("candidate", "production"):
        for name in shards.SHARDED_ESTIMATORS:
            a, b = one[role][name], three[role][name]
            for key in ("value", "ci_low", "ci_high", "ess", "max_weight"):
                assert getattr(b, key) == pytest.approx(getattr(a, key), rel=1e-9, abs=1e-12)
    # the uniform production policy is worth the logged click rate under every estimator
    held = load_replay(replay).subset(slice(cut, None))
    assert one["production"]["ips"].value == pytest.approx(held.rewards.mean(), rel=1e-9)


def test_runs_that_cannot_be_sharded_stay_on_the_single_node_path() -> None:
    assert shards.why_single_node({"algorithm": "ensemble"}) is not None
    assert shards.why_single_node({"algorithm": "shared_lints", "options": {"window": 50}})
    assert shards.why_single_node({"algorithm": "neural_linear", "options": {}}) is None


def test_wrapped_or_headless_policies_are_not_rebuilt_from_statistics() -> None:
    from bandit_core import ExplorationFloor, make_policy

    linear = make_policy("shared_linucb", dim_user=4, dim_arm=3)
    assert shards.why_not_rebuildable(linear) is None
    assert shards.why_not_rebuildable(ExplorationFloor(linear, 0.01)) is not None
    assert shards.why_not_rebuildable(make_policy("uniform", dim_user=4)) is not None


def test_the_plan_cuts_the_training_rows_only_when_asked(replay: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from training.runspec import plan
    from training.settings import PipelineSettings

    settings = PipelineSettings(
        workspace=tmp_path / "ws",
        database_url="sqlite:///unused.db",
        mlflow_tracking_uri="sqlite:///unused-mlflow.db",
    )
    planned_spec = plan(
        {"window_start": "2026-01-01", "window_end": "2026-01-02", "shards": 3},
        run_key="manual__x",
        interval_end=datetime(2026, 1, 3, tzinfo=UTC),
        settings=settings,
    )
    spec = replace(
        planned_spec,
        train={"algorithm": "shared_linucb", "options": {}, "holdout_fraction": HOLDOUT},
    ).to_dict()
    info = {"path": str(replay), "rows": ROWS}
    planned = shards.plan(spec, info, "train")
    cut = shards.split_point(ROWS, HOLDOUT)
    assert [(p["start"], p["stop"]) for p in planned] == shards.shard_ranges(0, cut, 3)
    assert {p["part"] for p in planned} == {"train"} and [p["index"] for p in planned] == [0, 1, 2]
    assert shards.plan({**spec, "shards": 1}, info, "train") == []
    ensemble = {**spec, "train": {"algorithm": "ensemble", "options": {}}}
    assert shards.plan(ensemble, info, "train") == []
    with pytest.raises(ValueError, match="part must be"):
        shards.plan(spec, info, "test")
    # a window with one slate: single-node training learns each shown position, the
    # shards one row per decision — so no shards
    frame = pd.read_parquet(replay)
    frame["ranking"] = [None] * len(frame)
    frame.at[7, "ranking"] = [0, 1]
    with_slate = tmp_path / "slate.parquet"
    frame.to_parquet(with_slate)
    assert shards.holds_slates(with_slate) and not shards.holds_slates(replay)
    assert shards.plan(spec, {**info, "path": str(with_slate)}, "train") == []


def test_held_out_shards_are_cut_by_distinct_candidates_too(replay: Path, tmp_path: Path) -> None:
    """The shards' blocks are the single-node evaluation's (``block_bounds``): a window
    whose rounds offer many distinct candidates (clients sending fresh ids) gets short
    blocks, never one union of 256 rounds' candidates; the estimates still equal one pass
    over all rounds, for any number of shards."""
    base, state, model = _deterministic_pair(replay, tmp_path, 2)
    cut = shards.split_point(ROWS, HOLDOUT)
    held = load_replay(replay).subset(slice(cut, None))
    blocks = shards.holdout_blocks(replay, cut, ROWS, actions=10)
    assert blocks[0][0] == cut and blocks[-1][1] == ROWS
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    for lo, hi in blocks:
        union = {a for ids in held.candidate_ids[lo - cut : hi - cut] for a in ids}
        assert len(union) <= 10 or hi - lo == 1
    assert len(blocks) > 2 * len(shards.holdout_blocks(replay, cut, ROWS))
    extra = {"seed": 11, "baseline_version": None, "support_threshold": SUPPORT_THRESHOLD}
    extra["baseline_state"] = str(base.state_path)
    ref = _reference(replay, state, Path(base.state_path), "dr")
    for n_shards in (1, 3):
        planned = _holdout_shards(replay, tmp_path / f"ope{n_shards}", n_shards, actions=10)
        assert [b for s in planned for b in s["blocks"]] == [list(b) for b in blocks]
        before = np.cumsum([0] + [len(s["blocks"]) for s in planned])[:-1]
        assert [s["first_block"] for s in planned] == before.tolist()
        got = shards.reduce_reports(
            [shards.shard_evaluation({**s, **extra}, state, model) for s in planned]
        )
        for role in ("candidate", "production"):
            for key, value in ref[role].items():
                assert getattr(got[role]["dr"], key) == pytest.approx(value, rel=1e-9), (role, key)
