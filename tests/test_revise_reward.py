"""Revising a learnt reward (a summed duplicate) equals learning the revised reward at once."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bandit_core import BayesianLinearHead, make_policy, revise_reward
from bandit_core.head import HeadConfig
from bandit_core.policies import ExplorationFloor, PositionBias

DIM_USER, DIM_ARM = 4, 3


def _stream(seed: int, n: int = 40) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, DIM_USER)),
        [f"a{k}" for k in rng.integers(0, 5, size=n)],
        rng.random(n),
        rng.standard_normal((n, DIM_ARM)),
    )


def _arrays(policy: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in policy.to_state().arrays.items() if k != "head.pending"}


def _assert_same(a: Any, b: Any, tol: float = 1e-12) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert xa.keys() == xb.keys()
    for key in xa:
        if xa[key].dtype.kind == "f":
            np.testing.assert_allclose(xa[key], xb[key], rtol=0, atol=tol, err_msg=key)
        else:
            np.testing.assert_array_equal(xa[key], xb[key], err_msg=key)


def test_head_revision_equals_learning_the_new_reward() -> None:
    rng = np.random.default_rng(0)
    phi = rng.standard_normal((30, 6))
    r = rng.random(30)
    revised = BayesianLinearHead(HeadConfig(dim=6))
    direct = BayesianLinearHead(HeadConfig(dim=6))
    for i in range(30):
        revised.update(phi[i], r[i])
        direct.update(phi[i], r[i] + (0.7 if i == 11 else 0.0))
    revised.revise(phi[11], r[11], r[11] + 0.7)
    for name in ("precision_", "xty_", "yty_", "count_", "theta_"):
        np.testing.assert_allclose(getattr(revised, name), getattr(direct, name), atol=1e-12)
    a1, b1 = revised.noise_posterior()
    a2, b2 = direct.noise_posterior()
    np.testing.assert_allclose(a1, a2)
    np.testing.assert_allclose(b1, b2, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("shared_lints", {"dim_arm": DIM_ARM}),
        ("shared_linucb", {"dim_arm": DIM_ARM, "interactions": True}),
        ("linucb", {}),
        ("lints", {}),
        ("neural_linear", {"dim_arm": DIM_ARM, "hidden": (8,), "retrain_every": 25}),
    ],
)
def test_policy_revision_equals_learning_the_new_reward(name: str, options: dict[str, Any]) -> None:
    x, ids, r, f = _stream(1)
    revised = make_policy(name, dim_user=DIM_USER, **options)
    direct = make_policy(name, dim_user=DIM_USER, **options)
    j, extra = 33, 1.0  # after the neural policies' retrain at 25
    feats = f if "dim_arm" in options else None
    bumped = r.copy()
    bumped[j] += extra
    for i in range(len(ids)):
        revised.update(x[i], ids[i], r[i], None if feats is None else feats[i])
        direct.update(x[i], ids[i], bumped[i], None if feats is None else feats[i])
    revise_reward(revised, x[j], ids[j], r[j], bumped[j], None if feats is None else feats[j])
    _assert_same(revised, direct)


def test_wrappers_and_position_bias_forward_the_revision() -> None:
    x, ids, r, f = _stream(2, n=20)
    floor = ExplorationFloor(make_policy("shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM), 0.05)
    floor_direct = ExplorationFloor(
        make_policy("shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM), 0.05
    )
    pos = PositionBias(make_policy("shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM + 3), 3)
    pos_direct = PositionBias(
        make_policy("shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM + 3), 3
    )
    for i in range(20):
        bump = 0.5 if i == 7 else 0.0
        floor.update(x[i], ids[i], r[i], f[i])
        floor_direct.update(x[i], ids[i], r[i] + bump, f[i])
        pos.update(x[i], ids[i], r[i], f[i], position=i % 3)
        pos_direct.update(x[i], ids[i], r[i] + bump, f[i], position=i % 3)
    revise_reward(floor, x[7], ids[7], r[7], r[7] + 0.5, f[7])
    revise_reward(pos, x[7], ids[7], r[7], r[7] + 0.5, f[7], position=7 % 3)
    _assert_same(floor, floor_direct)
    _assert_same(pos, pos_direct)


def test_what_cannot_be_revised_exactly_is_refused() -> None:
    x, ids, r, f = _stream(3, n=10)
    discounted = make_policy("shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM, gamma=0.99)
    windowed = make_policy("linucb", dim_user=DIM_USER, window=50)
    ensemble = make_policy("ensemble", dim_user=DIM_USER, dim_arm=DIM_ARM, hidden=(4,))
    for policy, feats in ((discounted, f), (windowed, None), (ensemble, f)):
        for i in range(10):
            policy.update(x[i], ids[i], r[i], None if feats is None else feats[i])
        before = _arrays(policy)
        with pytest.raises(ValueError, match="revise"):
            revise_reward(policy, x[0], ids[0], r[0], r[0] + 1, None if feats is None else feats[0])
        after = _arrays(policy)
        for key in before:
            np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    lin = make_policy("linucb", dim_user=DIM_USER)
    with pytest.raises(ValueError, match="arm_id 'never'"):
        lin.revise_reward(x[0], "never", 0.0, 1.0)
    with pytest.raises(ValueError, match="new_reward"):
        lin.revise_reward(x[0], "never", 0.0, float("nan"))
    neural = make_policy("neural_linear", dim_user=DIM_USER, dim_arm=DIM_ARM, hidden=(4,))
    neural.update(x[0], ids[0], 0.25, f[0])
    with pytest.raises(ValueError, match="no stored observation"):
        neural.revise_reward(x[0], ids[0], 0.5, 1.0, f[0])  # 0.5 was never learnt
