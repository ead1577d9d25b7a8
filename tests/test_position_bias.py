"""Position bias: the :class:`PositionBias` model, and learning it through the HTTP API.

A position-aware model carries its own ``position_slots``; the service gives it the
one-hot of the position being filled when it decides, and learns a reward that names a
position with the features of the item shown there *and* that position's one-hot — online,
and again when a head is rebuilt from the store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bandit_core import (
    Candidates,
    PositionBias,
    load_policy,
    make_policy,
    policy_from_state,
    save_policy,
)
from bandit_core.policies.position import with_position, with_positions
from eventstore.engine import make_engine
from serving.models.recovery import rebuild_from_store
from serving.store.repository import EventStore
from tests.serving_helpers import (
    DIM_ARM,
    DIM_USER,
    decision_body,
    head_difference,
    running_client,
    served_policy,
    service_settings,
)

pytest_plugins = ["tests.serving_fixtures"]
TOKEN = {"Authorization": "Bearer tok"}
SLOTS = 3


def _position_model(seed: int = 0, warm: int = 40) -> PositionBias:
    """shared LinUCB on [x_user ; x_item ; e_position], warmed on seeded rows."""
    inner = make_policy("shared_linucb", dim_user=DIM_USER, dim_arm=DIM_ARM + SLOTS, alpha=0.5)
    policy = PositionBias(inner, SLOTS)
    rng = np.random.default_rng(seed)
    policy.update_batch(
        rng.standard_normal((warm, DIM_USER)),
        [f"item-{i}" for i in rng.integers(0, 6, size=warm)],
        rng.random(warm),
        rng.standard_normal((warm, DIM_ARM)),
        positions=rng.integers(0, SLOTS, size=warm),
    )
    return policy


# ---------------------------------------------------------------------- the model
def test_position_bias_learns_with_the_one_hot_of_the_position() -> None:
    rng = np.random.default_rng(3)
    wrapped = _position_model()
    plain = policy_from_state(wrapped.inner.to_state())
    x, feats = rng.standard_normal(DIM_USER), rng.standard_normal(DIM_ARM)
    wrapped.update(x, "item-2", 1.0, feats, position=2)
    plain.update(x, "item-2", 1.0, with_position(feats, 2, SLOTS))
    assert head_difference(wrapped.inner, plain) == 0.0
    # decisions at position j score [x_item ; e_j]
    cands = np.random.default_rng(4).standard_normal((4, DIM_ARM))
    ids = ("a", "b", "c", "d")
    at1 = wrapped.select(x, Candidates(ids, cands), np.random.default_rng(0), position=1)
    ref = plain.select(x, Candidates(ids, with_position(cands, 1, SLOTS)), np.random.default_rng(0))
    np.testing.assert_array_equal(at1.scores, ref.scores)
    assert wrapped.name == "shared_linucb+position"


def test_position_bias_state_round_trip_and_input_checks(tmp_path: Path) -> None:
    policy = _position_model()
    same = load_policy(save_policy(policy, tmp_path / "p.npz"))
    assert isinstance(same, PositionBias) and same.position_slots == SLOTS
    assert same.dim_item == DIM_ARM and head_difference(policy.inner, same.inner) == 0.0
    with pytest.raises(ValueError, match=r"dim_arm is the item width plus position_slots = 3"):
        PositionBias(make_policy("shared_linucb", dim_user=2, dim_arm=3), 3)
    with pytest.raises(ValueError, match="dim_arm = 0"):
        PositionBias(make_policy("linucb", dim_user=2), 1)
    with pytest.raises(ValueError, match=r"arm_features must have 3 columns .* got 6"):
        policy.update(np.zeros(DIM_USER), "a", 1.0, np.zeros(DIM_ARM + SLOTS))
    with pytest.raises(ValueError, match=r"arm_features must hold 2 row\(s\) .* \(1, 6\)"):
        policy.update_batch(np.zeros((2, DIM_USER)), ["a", "b"], [1.0, 0.0], np.zeros((1, 6)))
    with pytest.raises(ValueError, match=r"positions must be in \[0, position_slots = 3\)"):
        with_positions(np.zeros((2, DIM_ARM)), np.array([0, 3]), SLOTS)


# ---------------------------------------------------------------------- through the API
def test_rewards_naming_a_position_update_the_head_with_that_positions_features(
    store_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    """Slates of 3 from a position-aware model; rewards at positions 2, 1 and none (0)
    move the head by exactly Σ φφᵀ and Σ rφ with φ = [x ; x_item ; e_position] built by
    hand (≤ 1e-12), and a head rebuilt from the store equals the online one."""
    model_path = save_policy(_position_model(), tmp_path / "policy.npz")
    settings = service_settings(tmp_path, store_url, model_path=model_path, api_token="tok")
    with running_client(settings) as client:
        head = served_policy(client).inner.head
        precision0, xty0 = head.precision_[0].copy(), head.xty_[0].copy()
        gram, xty = np.zeros_like(precision0), np.zeros_like(xty0)
        for _ in range(4):
            body = {**decision_body(rng, n=6), "k": 3}
            got = client.post("/v1/decisions", headers=TOKEN, json=body)
            assert got.status_code == 200, got.text
            out = got.json()
            assert out["policy"] == "shared_linucb" and len(out["ranking"]) == 3
            features = {c["id"]: np.array(c["features"]) for c in body["candidates"]}
            x = np.array(body["context"])
            for position, value in ((2, 1.0), (1, 0.25), (None, 0.5)):
                reward = {"event_id": out["event_id"], "reward": value}
                if position is not None:
                    reward["position"] = position
                answer = client.post("/v1/rewards", json=reward, headers=TOKEN).json()
                assert answer["status"] == "applied" and answer["applied"] is True
                shown = out["ranking"][position or 0]
                e = np.zeros(SLOTS)
                e[position or 0] = 1.0
                phi = np.concatenate([x, features[shown], e])
                gram += np.outer(phi, phi)
                xty += value * phi
        np.testing.assert_allclose(head.precision_[0] - precision0, gram, rtol=0, atol=1e-12)
        np.testing.assert_allclose(head.xty_[0] - xty0, xty, rtol=0, atol=1e-12)
        assert client.get("/v1/model").json()["production"]["policy"] == "shared_linucb+position"
        # more positions than the model knows: 422 on k, naming the slots
        too_long = client.post(
            "/v1/decisions", headers=TOKEN, json={**decision_body(rng, n=6), "k": 4}
        )
        assert too_long.status_code == 422
        detail = too_long.json()["detail"][0]
        assert detail["loc"] == ["body", "k"] and "3 position slots" in detail["msg"]
        # single decisions are position 0 of a one-item slate
        single = client.post("/v1/decisions", headers=TOKEN, json=decision_body(rng, n=4))
        assert single.status_code == 200
        online = served_policy(client)
        version = client.app.state.service.loader.current.production.version
    engine = make_engine(store_url)
    try:
        rebuilt = rebuild_from_store(EventStore(engine), version, load_policy(model_path))
    finally:
        engine.dispose()
    assert head_difference(rebuilt.inner, online.inner) <= 1e-9  # type: ignore[attr-defined]


def test_a_position_blind_model_learns_the_item_shown_at_the_position(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Without position bias a reward at position 2 still belongs to the item shown there
    (not to position 0's), online and when rebuilt from the store."""
    inner = make_policy("shared_linucb", dim_user=DIM_USER, dim_arm=DIM_ARM, alpha=0.5)
    model_path = save_policy(inner, tmp_path / "plain.npz")
    settings = service_settings(tmp_path, None, model_path=model_path, api_token="tok")
    with running_client(settings) as client:
        body = {**decision_body(rng, n=5), "k": 3}
        out = client.post("/v1/decisions", headers=TOKEN, json=body).json()
        client.post(
            "/v1/rewards",
            json={"event_id": out["event_id"], "reward": 1.0, "position": 2},
            headers=TOKEN,
        )
        shown = next(c for c in body["candidates"] if c["id"] == out["ranking"][2])
        phi = np.concatenate([body["context"], shown["features"]])
        online = served_policy(client)
        np.testing.assert_allclose(online.head.xty_[0], phi, rtol=0, atol=1e-12)
        version = client.app.state.service.loader.current.production.version
        engine = client.app.state.service.engine
        rebuilt = rebuild_from_store(EventStore(engine), version, load_policy(model_path))
        assert head_difference(rebuilt, online) <= 1e-12
