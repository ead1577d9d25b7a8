"""A client that sends a few contexts far out of scale (a feature at 1e6 where the
features are ~1) could take a trained linear model back to chance: each such row is a
leverage point that sets the fit in its direction by itself. Heads refuse rows out of
scale beside those they hold (``outlier_ratio``, :class:`bandit_core.HeadConfig`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bandit_core import make_policy
from bandit_core.envs import LinearEnvironment
from bandit_core.types import Candidates

N_ARMS, DIM = 5, 6


def _value(policy: object, env: LinearEnvironment, per_arm: bool) -> float:
    """Mean expected reward of the policy's choices on 500 seeded contexts."""
    rng = np.random.default_rng(2)
    total = 0.0
    for _ in range(500):
        x, cands = env.sample(rng)
        if per_arm:
            cands = Candidates(cands.ids, np.zeros((N_ARMS, 0)))
        total += float(env.expected_rewards(x, cands)[policy.select(x, cands, rng).arm])  # type: ignore[attr-defined]
    return total / 500


@pytest.mark.parametrize(
    "name", ["shared_linucb", "shared_lints", "lints", "hybrid_linucb", "logistic_ts"]
)
def test_contexts_far_out_of_scale_do_not_take_a_trained_model_back_to_chance(
    name: str,
) -> None:
    per_arm = name in ("lints", "hybrid_linucb")
    env = LinearEnvironment.make(np.random.default_rng(0), n_arms=N_ARMS, dim=DIM)
    options = (
        {"dim_user": DIM} if per_arm else {"dim_user": DIM, "dim_arm": N_ARMS, "interactions": True}
    )
    guarded, unguarded = (
        make_policy(name, **options),
        make_policy(name, **options, outlier_ratio=None),
    )
    rng = np.random.default_rng(1)
    for _ in range(1500):  # a few hundred rows per arm: a good model
        x, cands = env.sample(rng)
        arm = int(rng.integers(N_ARMS))
        reward = env.reward(env.expected_rewards(x, cands), arm, float(rng.uniform()))
        if name == "logistic_ts":  # clicks: 1 with the expected reward's probability
            reward = float(rng.uniform() < env.expected_rewards(x, cands)[arm])
        feats = np.zeros(0) if per_arm else cands.features[arm]
        for policy in (guarded, unguarded):
            policy.update(x, cands.ids[arm], reward, feats)
    trained = _value(guarded, env, per_arm)
    assert trained > 0.8, "the premise broke: the model did not learn"
    refused = 0
    for k in range(DIM):  # 30 rows: a context at 1e6 along each axis, for each arm
        for arm in range(N_ARMS):
            x = np.zeros(DIM)
            x[k] = 1e6
            feats = np.zeros(0) if per_arm else np.eye(N_ARMS)[arm]
            unguarded.update(x, str(arm), 0.0, feats)
            with pytest.raises(ValueError, match="outlier_ratio"):
                guarded.update(x, str(arm), 0.0, feats)
            refused += 1
    assert refused == DIM * N_ARMS
    assert _value(guarded, env, per_arm) == trained  # nothing learnt: the same choices
    damaged = _value(unguarded, env, per_arm)  # what the rows did without the check
    if name == "logistic_ts":  # its curvature fades where the rows saturate the sigmoid
        assert damaged < trained - 0.1  # 0.88 -> 0.72
    elif name != "hybrid_linucb":  # its per-arm blocks and shared part share the damage
        assert damaged < 0.3


def test_the_service_answers_poisoned_rewards_unlearnt_and_recovery_skips_them(
    tmp_path: Path,
) -> None:
    """Over HTTP: rewards of decisions whose context is far out of scale are stored and
    answered ``applied: false``, counted in ``banditops_head_update_failures_total``; the
    served head is the one that learnt only the ordinary rewards, and so is the head a
    restart recovers from the store (no snapshot: every reward replayed)."""
    from tests.serving_helpers import (
        DIM_USER,
        decision_body,
        drop_snapshots,
        head_difference,
        policy_file,
        running_client,
        served_policy,
        service_settings,
    )

    model = policy_file(tmp_path / "p.npz", warm=60)
    settings = service_settings(tmp_path, model_path=model, snapshot_every_rewards=10_000)
    rng = np.random.default_rng(4)

    def decide_and_reward(body: dict[str, object], reward: float) -> dict[str, object]:
        event = client.post("/v1/decisions", json=body)
        assert event.status_code == 200, event.text
        got = client.post(
            "/v1/rewards", json={"event_id": event.json()["event_id"], "reward": reward}
        )
        assert got.status_code == 200, got.text
        return dict(got.json())

    with running_client(settings) as client:
        for _ in range(20):
            assert decide_and_reward(decision_body(rng), 1.0)["applied"] is True
        clean = copy.deepcopy(served_policy(client))
        for k in range(DIM_USER):
            body = decision_body(rng)
            body["context"] = [1e6 if i == k else 0.0 for i in range(DIM_USER)]
            answer = decide_and_reward(body, 0.0)
            assert (answer["status"], answer["applied"]) == ("applied", False), answer
        metrics = client.get("/metrics").text
        line = next(
            x for x in metrics.splitlines() if x.startswith("banditops_head_update_failures_total")
        )
        assert float(line.split()[-1]) == DIM_USER
        assert head_difference(clean, served_policy(client)) == 0.0
    drop_snapshots(settings.store_url)  # a crash before any snapshot
    with running_client(settings) as client:
        served = client.app.state.service.loader.current.production
        assert len(served.replayed_ids) == 20 + DIM_USER  # every applied reward, tried
        assert served.applied_rewards == 20
        assert head_difference(clean, served.policy) <= 1e-9


def test_a_logistic_state_keeps_the_check_s_sums_and_an_older_one_starts_them_afresh() -> None:
    """The Laplace precision weighs each row by its curvature, so the logistic model keeps
    the plain sums of φ² the check judges by in its state (``squares``). A state saved
    before the check has none: it judges from its next 30 rows on. A tampered one is
    refused by name."""
    from bandit_core import load_policy
    from bandit_core.state import state_to_bytes

    policy = make_policy("logistic_ts", dim_user=3)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 3))
    policy.update_batch(x, ["a"] * 40, (rng.uniform(size=40) < 0.5).astype(float))
    far = np.array([0.0, 1e5, 0.0])
    state = policy.to_state()
    again: Any = load_policy(state_to_bytes(state))
    np.testing.assert_array_equal(again.squares_, policy.squares_)
    assert again.squares_rows_ == 40
    with pytest.raises(ValueError, match=r"phi\[1\] = 100000 is more than outlier_ratio=100"):
        again.update(far, "a", 0.0)
    older = copy.deepcopy(state)
    del older.arrays["squares"]
    old: Any = load_policy(state_to_bytes(older))
    assert old.squares_rows_ == 0 and old.count_ == 40
    before = copy.deepcopy(old)
    before.update(far, "a", 0.0)  # nothing to judge it by yet: learnt, as before the check
    old.update_batch(x[:30], ["a"] * 30, np.zeros(30))
    with pytest.raises(ValueError, match="outlier_ratio"):
        old.update(far, "a", 0.0)
    for bad in (np.zeros(3), np.full(5, -1.0), np.full(5, np.nan)):
        tampered = copy.deepcopy(state)
        tampered.arrays["squares"] = bad
        with pytest.raises(ValueError, match="state array 'squares'"):
            load_policy(state_to_bytes(tampered))
