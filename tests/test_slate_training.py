"""Training and off-policy evaluation from slate logs: every shown position is a row.

Slates are decided and rewarded through the HTTP API (the uniform fallback logs them with
their marginal per-position propensities), the replay window is extracted from the store,
and the nightly steps — train, rebuild the head, evaluate — run on it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bandit_core import PositionBias, load_policy
from tests.serving_helpers import DIM_ARM, DIM_USER, running_client, service_settings
from training.evaluate import evaluate, logged_batch
from training.replay import extract_replay, load_replay
from training.train import TrainConfig, rebuild_head, train
from validation.gate import GateRule

TOKEN = {"Authorization": "Bearer tok"}
IDS = ("a", "b", "c", "d", "e")
K = 3
N_SLATES = 50


def _log_slates(tmp_path: Path, rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
    """``N_SLATES`` slates of 3 out of 5, rewards at seeded positions; returns the store URL
    and, per event, the decision's answer, its request and the rewards sent per position."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    logged: dict[str, Any] = {}
    with running_client(service_settings(tmp_path, url, api_token="tok")) as client:
        for _ in range(N_SLATES):
            body = {
                "context": rng.standard_normal(DIM_USER).round(6).tolist(),
                "candidates": [
                    {"id": i, "features": rng.standard_normal(DIM_ARM).round(6).tolist()}
                    for i in IDS
                ],
                "k": K,
            }
            out = client.post("/v1/decisions", json=body, headers=TOKEN).json()
            assert out["fallback"] is True and len(out["position_propensities"]) == K
            sent: dict[int, float] = {}
            for position in np.flatnonzero(rng.random(K) < 0.4).tolist():
                value = float(rng.integers(1, 5)) / 4.0
                reward = {"event_id": out["event_id"], "reward": value, "position": position}
                answer = client.post("/v1/rewards", json=reward, headers=TOKEN)
                assert answer.status_code == 200, answer.text
                sent[position] = value
            logged[out["event_id"]] = {"out": out, "body": body, "sent": sent}
    return url, logged


def _extract(url: str, out: Path, **options: Any) -> Path:
    now = datetime.now(UTC)
    manifest = extract_replay(
        url,
        now - timedelta(hours=1),
        now + timedelta(hours=1),
        out,
        as_of=now + timedelta(days=2),
        **options,
    )
    return Path(manifest.path)


@pytest.fixture
def slate_log(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, dict[str, Any]]:
    url, logged = _log_slates(tmp_path, rng)
    path = _extract(url, tmp_path / "replay")
    assert len(pd.read_parquet(path)) == N_SLATES  # the file keeps one row per decision
    # "drop": only rewarded positions become rows, and a slate rewarded anywhere stays
    dropped = load_replay(_extract(url, tmp_path / "dropped", missing_reward="drop"))
    sent = {(e, j): v for e, log in logged.items() for j, v in log["sent"].items()}
    got = zip(dropped.event_ids, dropped.row_positions.tolist(), dropped.rewards, strict=True)
    assert {(e, j): r for e, j, r in got} == sent
    return path, logged


def test_replay_has_one_row_per_shown_item_with_its_reward_and_position_propensity(
    slate_log: tuple[Path, dict[str, Any]],
) -> None:
    path, logged = slate_log
    data = load_replay(path)
    assert data.n_rows == N_SLATES * K and data.len_list == K
    assert sum(len(v["sent"]) for v in logged.values()) > 10  # several positions rewarded
    for i in range(data.n_rows):
        event = logged[data.event_ids[i]]
        j = int(data.row_positions[i])
        assert j == i % K  # a slate's rows are consecutive, in position order
        assert data.arm_ids[i] == event["out"]["ranking"][j]
        assert data.candidate_ids[i][data.chosen[i]] == data.arm_ids[i]
        shown = next(c for c in event["body"]["candidates"] if c["id"] == data.arm_ids[i])
        np.testing.assert_array_equal(data.arm_features[i], shown["features"])
        assert data.rewards[i] == event["sent"].get(j, 0.0)
        assert data.propensities[i] == event["out"]["position_propensities"][j]
    # a holdout cut in the middle of a slate moves to the next decision
    first, rest = data.split(0.25)  # round(150 · 0.75) = 112 = 37 slates + 1 row
    assert (first.n_rows, rest.n_rows) == (114, 36)
    batch = logged_batch(rest)
    assert batch.len_list == K and batch.positions.tolist() == [0, 1, 2] * 12


def test_training_learns_a_position_bias_from_every_position(
    slate_log: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The trained (and rebuilt) head is λI + Σφφᵀ, Σrφ over the training rows with
    φ = [x ; x_item ; e_position], built by hand; the model is a PositionBias of 3 slots."""
    path, _ = slate_log
    config = TrainConfig(
        algorithm="shared_linucb", options={"alpha": 0.5}, min_rows=20, holdout_fraction=0.25
    )
    result = train(path, config, tmp_path / "train")
    assert result.position_slots == K and result.n_train == 114
    data = load_replay(path).subset(slice(0, 114))
    onehot = np.eye(K)[data.row_positions]
    phi = np.hstack([data.contexts, data.arm_features, onehot])
    for state in (
        Path(result.state_path),
        rebuild_head(result.state_path, path, tmp_path / "rebuilt.npz", holdout_fraction=0.25),
    ):
        model = load_policy(state)
        assert isinstance(model, PositionBias) and model.position_slots == K
        head = model.inner.head  # type: ignore[attr-defined]
        lam = model.inner.config.lambda_prior  # type: ignore[attr-defined]
        expected = lam * np.eye(phi.shape[1]) + phi.T @ phi
        np.testing.assert_allclose(head.precision_[0], expected, rtol=0, atol=1e-10)
        np.testing.assert_allclose(head.xty_[0], phi.T @ data.rewards, rtol=0, atol=1e-10)
    # position bias off on request: the same rows, item features only
    blind = train(path, replace(config, position_slots=0), tmp_path / "b")
    assert blind.position_slots == 0
    assert not isinstance(load_policy(blind.state_path), PositionBias)
    # more slots than the window's slates, as a policy option (the retrain DAG's form)
    wide = TrainConfig(algorithm="shared_linucb", options={"position_slots": 5}, min_rows=20)
    assert (wide.position_slots, wide.options) == (5, {})
    assert load_policy(train(path, wide, tmp_path / "w").state_path).position_slots == 5  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="position_slots needs a policy that uses arm features"):
        TrainConfig(algorithm="linucb", position_slots=3).slots_for(load_replay(path))
    with pytest.raises(ValueError, match=r"must cover the longest slate of the window \(3\)"):
        train(path, replace(config, position_slots=2), tmp_path / "n")


@pytest.mark.parametrize("algorithm", ["shared_linucb", "shared_lints"])
def test_a_floored_shared_policy_learns_a_position_bias_too(
    slate_log: tuple[Path, dict[str, Any]], tmp_path: Path, algorithm: str
) -> None:
    """The retrain's policies carry overlap options (a cold-start floor at least): the
    position bias goes around the floored policy. It used to read the overlap's config as
    the model's and refuse every shared algorithm on a window holding one slate."""
    path, _ = slate_log
    options = {"cold_start_floor": 0.02, "floor": 0.01}
    result = train(path, TrainConfig(algorithm=algorithm, options=options), tmp_path / "t")
    model = load_policy(result.state_path)
    assert result.position_slots == K and isinstance(model, PositionBias)
    assert model.dim_item == load_replay(path).dim_arm


def test_offline_evaluation_is_position_wise(
    slate_log: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Uniform logging, uniform "production": the per-position marginals are 1/5 on both
    sides, so IPS is the mean reward of the held-out (event, position) rows exactly."""
    path, _ = slate_log
    config = TrainConfig(algorithm="shared_linucb", min_rows=20, holdout_fraction=0.25)
    result = train(path, config, tmp_path / "train")
    got = evaluate(
        result.state_path, None, path, holdout_fraction=0.25, rule=GateRule(), n_resamples=50
    )
    _, holdout = load_replay(path).split(0.25)
    ips = got.production.estimates["ips"].value
    assert ips == pytest.approx(float(holdout.rewards.mean()), abs=1e-12)
    assert got.production.n_rounds == holdout.n_rows == 36
    for report in (got.candidate, got.production):
        assert any("position-wise" in note for note in report.notes)
