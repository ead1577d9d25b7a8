"""A window holding a row the head cannot learn trains without it, named (one decision of
features near the input bound failed every nightly run of an interaction model)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bandit_core import load_policy, make_policy
from training.train import TrainConfig, rebuild_head, train

K = 4
ROWS = 400
DISCOUNT = {"gamma": 0.999}
DIM_USER, DIM_ARM = 3, 2


def _window(path: Path, huge: tuple[int, ...]) -> Path:
    """A uniformly logged replay window; the rows ``huge`` hold features at ±10⁶ (the
    bound the service accepts)."""
    rng = np.random.default_rng(5)
    ids = [f"arm-{a}" for a in range(K)]
    rows = []
    for t in range(ROWS):
        x = rng.standard_normal(DIM_USER)
        feats = rng.standard_normal((K, DIM_ARM))
        if t in huge:
            x, feats = np.full(DIM_USER, 1e6), np.full((K, DIM_ARM), -1e6)
        a = int(rng.integers(K))
        rows.append(
            {
                "event_id": f"e{t}",
                "context": x.tolist(),
                "candidate_ids": ids,
                "candidate_features": feats.tolist(),
                "chosen": a,
                "reward": float(rng.random() < 0.3),
                "propensity": 1.0 / K,
                "probabilities": [1.0 / K] * K,
                "model_version": "fallback",
            }
        )
    out = path / "replay.parquet"
    pd.DataFrame(rows).to_parquet(out)
    return out


@pytest.mark.parametrize("options", [DISCOUNT, {}], ids=["discounted", "out-of-scale"])
@pytest.mark.parametrize("algorithm", ["shared_lints", "shared_linucb"])
def test_a_row_the_head_refuses_is_left_out_named_not_the_run(
    tmp_path: Path, algorithm: str, options: dict[str, float], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: ``ValueError: precision matrix must be symmetric positive definite`` at
    train, every night while the row stayed in the window (and the linear-failure
    diagnostic refused the interactions of inputs near the bound). A discounted head
    refuses that row's update (each one factors the formed precision); an undiscounted
    one refuses it as out of scale beside the rows before it (``outlier_ratio``), as the
    online head did: before, the nightly rebuild learnt what the service had refused, a
    leverage point that sets the fit in its direction by itself."""
    replay = _window(tmp_path, huge=(100,))
    config = TrainConfig(algorithm, {"interactions": True, **options}, min_rows=100)
    with caplog.at_level(logging.WARNING, logger="training.train"):
        result = train(replay, config, tmp_path / "train")
    assert result.metrics["rows_refused"] == 1.0
    assert "'e100'" in caplog.text and "refused 1 of" in caplog.text
    assert json.loads((tmp_path / "train" / "train.json").read_text())["diagnostics"]
    # the head equals one that learnt the other rows in order, from the prior
    policy = load_policy(result.state_path)
    expected = make_policy(
        algorithm, dim_user=DIM_USER, dim_arm=DIM_ARM, interactions=True, **options
    )
    frame = pd.read_parquet(replay).iloc[: result.n_train].drop(index=100)
    chosen = frame["chosen"].to_numpy()
    feats = np.stack(
        [np.asarray(list(f[c])) for f, c in zip(frame["candidate_features"], chosen, strict=True)]
    )
    expected.update_batch(
        np.stack(frame["context"].map(list)),
        [ids[c] for ids, c in zip(frame["candidate_ids"], chosen, strict=True)],
        frame["reward"].to_numpy(),
        feats,
    )
    np.testing.assert_allclose(policy.head.theta_, expected.head.theta_, rtol=1e-7, atol=1e-9)
    # the head rebuild of the pipeline (the evaluated state, then the refit) does the same
    rebuilt = rebuild_head(result.state_path, replay, tmp_path / "rebuilt.npz")
    np.testing.assert_allclose(load_policy(rebuilt).head.theta_, policy.head.theta_, atol=1e-9)


@pytest.mark.parametrize("algorithm", ["shared_lints", "shared_linucb"])
def test_a_row_the_rebuild_cannot_factor_is_learnt_in_order_as_online(
    tmp_path: Path, algorithm: str
) -> None:
    """The same row in an undiscounted head: its rebuild from the summed statistics
    cannot be factored in float64, but the online head learnt that row by rank-one
    updates, and the retrain now learns it so too (it was left out, so the registered
    head was not the one the service would have built from the same rewards)."""
    replay = _window(tmp_path, huge=(100,))
    # the row at the bound is out of scale beside the others: the check that refuses
    # such rows (outlier_ratio) is off here, the numerics being what is tested
    options = {"interactions": True, "outlier_ratio": None}
    config = TrainConfig(algorithm, options, min_rows=100)
    result = train(replay, config, tmp_path / "train")
    assert result.metrics["rows_refused"] == 0.0
    policy = load_policy(result.state_path)
    frame = pd.read_parquet(replay).iloc[: result.n_train]
    online = make_policy(algorithm, dim_user=DIM_USER, dim_arm=DIM_ARM, **options)
    for row in frame.itertuples():
        features = np.asarray(list(row.candidate_features[row.chosen]))
        online.update(
            np.asarray(list(row.context)), row.candidate_ids[row.chosen], row.reward, features
        )
    np.testing.assert_allclose(policy.head.theta_, online.head.theta_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(policy.head.inv_chol_, online.head.inv_chol_, rtol=1e-7, atol=1e-9)


def test_a_neural_retrain_leaves_a_row_out_of_scale_out_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The head of a neural-linear policy refuses a row out of scale beside the others
    (``outlier_ratio``), as the service's head refused that reward: the nightly run
    leaves it out of the buffer and the head, named, and trains on the rest. Before the
    check it was learnt; with the check and no skipping, the whole run failed."""
    replay = _window(tmp_path, huge=(100,))
    options = {"hidden": [8], "epochs": 2, "retrain_every": 10_000, "device": "cpu"}
    config = TrainConfig("neural_linear", options, min_rows=100)
    with caplog.at_level(logging.WARNING, logger="training.train"):
        result = train(replay, config, tmp_path / "train")
    assert result.metrics["rows_refused"] == 1.0
    assert "'e100'" in caplog.text and "refused 1 of" in caplog.text
    policy = load_policy(result.state_path)
    assert len(policy.buffer_) == result.n_train - 1
    assert np.abs(policy.buffer_.inputs).max() < 1e3  # the row at 1e6 is not in it


def test_a_logistic_retrain_leaves_out_a_row_out_of_scale_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The logistic model refuses a row out of scale as the linear heads do: the nightly
    training leaves it out, named, and learns the others in order."""
    replay = _window(tmp_path, huge=(100,))
    config = TrainConfig("logistic_ts", {"interactions": True}, min_rows=100)
    with caplog.at_level(logging.WARNING, logger="training.train"):
        result = train(replay, config, tmp_path / "train")
    assert result.metrics["rows_refused"] == 1.0 and result.refused_rows == [100]
    assert "'e100'" in caplog.text
    frame = pd.read_parquet(replay).iloc[: result.n_train].drop(index=100)
    chosen = frame["chosen"].to_numpy()
    expected = make_policy("logistic_ts", dim_user=DIM_USER, dim_arm=DIM_ARM, interactions=True)
    expected.update_batch(
        np.stack(frame["context"].map(list)),
        [ids[c] for ids, c in zip(frame["candidate_ids"], chosen, strict=True)],
        frame["reward"].to_numpy(),
        np.stack(
            [
                np.asarray(list(f[c]))
                for f, c in zip(frame["candidate_features"], chosen, strict=True)
            ]
        ),
    )
    got: Any = load_policy(result.state_path)
    np.testing.assert_allclose(got.theta_, expected.theta_, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rows", [10, 28])
def test_a_window_too_small_for_the_diagnostic_trains_without_it(
    tmp_path: Path, rows: int, caplog: pytest.LogCaptureFixture
) -> None:
    """``--min-rows`` accepts windows down to one row; a window of 28 passed validation,
    then failed in the optional linear-failure diagnostic ("diagnose_linear_failure needs
    at least 5 rows on each side of the split"; audit, stop 54). It trains, without the
    diagnostic, and says why."""
    from benchmarks.scale import synthetic_replay

    replay = synthetic_replay(tmp_path / "replay.parquet", rows, seed=3)
    with caplog.at_level(logging.WARNING):
        result = train(replay, TrainConfig(algorithm="shared_lints"), tmp_path / "run")
    assert result.diagnostics == "" and "linear_failure" not in " ".join(result.metrics)
    assert "too few for the linear-failure diagnostic" in caplog.text
    load_policy(result.state_path)
