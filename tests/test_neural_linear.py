"""Neural-linear Thompson sampling: the two speeds, the rebuild, state and checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bandit_core import (
    MAX_ABS_INPUT,
    BayesianLinearHead,
    Candidates,
    NeuralLinear,
    load_policy,
    make_policy,
    save_policy,
)
from bandit_core.head import HeadConfig
from bandit_core.linalg import factor_is_accurate, inverse_cholesky
from bandit_core.policies.neural import NeuralLinearConfig
from bandit_core.state import state_to_bytes
from tests.policy_factories import state_arrays

DU, DA = 3, 2
SMALL = {
    "dim_user": DU,
    "dim_arm": DA,
    "hidden": (16, 8),
    "retrain_every": 25,
    "epochs": 3,
    "max_train_steps": 20,
    "batch_size": 16,
    "device": "cpu",
}


def _rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, DU))
    feats = rng.standard_normal((n, DA))
    ids = [f"arm-{i}" for i in rng.integers(0, 4, size=n)]
    rewards = np.sin(x[:, 0] * feats[:, 0]) + 0.1 * rng.standard_normal(n)
    return x, ids, rewards, feats


def _net_params(policy: NeuralLinear) -> list[torch.Tensor]:
    return [p.detach().clone() for p in policy.network.parameters()]


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(1e-300, float(np.max(np.abs(b)))))


@pytest.mark.parametrize("head_inputs", [False, True])
def test_rebuild_equals_a_head_built_directly_on_the_new_features(head_inputs: bool) -> None:
    policy = NeuralLinear(**SMALL, head_inputs=head_inputs, interactions=head_inputs)
    x, ids, r, feats = _rows(np.random.default_rng(0), 60)  # two retrainings, 10 rows after
    policy.update_batch(x, ids, r, feats)
    assert policy.n_retrains_ == 2
    policy.retrain()  # on demand: trains again and rebuilds
    policy.rebuild_head(chunk_size=7)  # several chunks, and a ragged last one
    phi = policy.encode(policy.buffer_.inputs)
    direct = BayesianLinearHead(policy.config.head_config(policy.dim_phi))
    direct.rebuild(phi, policy.buffer_.rewards)
    for name in ("precision_", "xty_", "theta_", "inv_chol_", "yty_", "count_"):
        assert _relative_error(getattr(policy.head, name), getattr(direct, name)) <= 1e-9, name
    for ours, theirs in zip(policy.head.noise_posterior(), direct.noise_posterior(), strict=True):
        assert _relative_error(ours, theirs) <= 1e-9


def test_a_buffered_row_out_of_scale_is_left_out_of_the_rebuilt_head() -> None:
    """A state saved before the heads' outlier check (``outlier_ratio`` loads as its
    default) can hold a leverage point in its buffer. The rebuild leaves it out, as
    learning the rows one at a time does, and keeps it buffered; before, the sums took it
    in (and the in-order fallback raised with the head reset)."""
    options = {**SMALL, "retrain_every": 10_000}
    unchecked = NeuralLinear(**options, outlier_ratio=None)
    x, ids, r, feats = _rows(np.random.default_rng(4), 80)
    x[60, 1] = 1e6
    unchecked.update_batch(x, ids, r, feats)
    state = unchecked.to_state()
    state.config["outlier_ratio"] = 100.0  # what an old state loads as
    upgraded: Any = load_policy(state_to_bytes(state))
    assert upgraded.head.count_[0] == 80 and upgraded.config.outlier_ratio == 100.0
    left_out = upgraded.rebuild_head(chunk_size=7)
    assert left_out.tolist() == [60] and upgraded.buffer_.inputs.shape[0] == 80
    keep = np.arange(80) != 60
    direct = BayesianLinearHead(upgraded.config.head_config(upgraded.dim_phi))
    direct.rebuild(upgraded.encode(upgraded.buffer_.inputs[keep]), upgraded.buffer_.rewards[keep])
    for name in ("precision_", "xty_", "theta_", "inv_chol_", "yty_", "count_"):
        assert _relative_error(getattr(upgraded.head, name), getattr(direct, name)) <= 1e-9, name


def test_after_a_retrain_the_old_statistics_are_gone() -> None:
    policy = NeuralLinear(**SMALL)
    x, ids, r, feats = _rows(np.random.default_rng(1), 25)
    policy.update_batch(x[:24], ids[:24], r[:24], feats[:24])
    assert policy.n_retrains_ == 0 and policy.head.count_[0] == 24
    stale = policy.head.precision_[0].copy()
    stale_phi = policy.encode(policy.buffer_.inputs)
    policy.update(x[24], ids[24], r[24], feats[24])  # 25th observation: slow path
    assert policy.n_retrains_ == 1
    head = policy.head
    assert head.count_[0] == 25  # not 24 + 25: nothing of the old head was kept
    new_phi = policy.encode(policy.buffer_.inputs)
    lam = policy.config.lambda_prior
    np.testing.assert_allclose(
        head.precision_[0], lam * np.eye(policy.dim_phi) + new_phi.T @ new_phi, rtol=1e-10
    )
    old_plus_new = stale + np.outer(stale_phi[-1], stale_phi[-1])
    assert not np.allclose(head.precision_[0], old_plus_new)
    np.testing.assert_allclose(
        head.xty_[0], new_phi.T @ policy.buffer_.rewards, rtol=1e-10, atol=1e-12
    )


def test_the_fast_path_updates_the_head_without_touching_the_network() -> None:
    policy = NeuralLinear(**SMALL)
    x, ids, r, feats = _rows(np.random.default_rng(2), 30)
    policy.update_batch(x[:27], ids[:27], r[:27], feats[:27])  # one retraining, then 2 fast rows
    params = _net_params(policy)
    precision = policy.head.precision_[0].copy()
    xty = policy.head.xty_[0].copy()
    policy.update(x[27], ids[27], r[27], feats[27])
    for before, after in zip(params, policy.network.parameters(), strict=True):
        assert torch.equal(before, after)
    phi = policy.encode(policy.features.build_rows(x[27:28], feats[27:28], ids[27:28]))[0]
    np.testing.assert_allclose(
        policy.head.precision_[0], precision + np.outer(phi, phi), rtol=1e-12
    )
    np.testing.assert_allclose(policy.head.xty_[0], xty + r[27] * phi, rtol=1e-12, atol=1e-14)
    assert policy.since_retrain_ == 3 and len(policy.buffer_) == 28


def test_retraining_happens_every_n_observations_and_changes_the_network() -> None:
    policy = NeuralLinear(**SMALL)
    x, ids, r, feats = _rows(np.random.default_rng(3), 75)
    params = _net_params(policy)
    for i in range(75):
        policy.update(x[i], ids[i], r[i], feats[i])
    assert policy.n_retrains_ == 3 and policy.since_retrain_ == 0
    assert not all(
        torch.equal(a, b) for a, b in zip(params, policy.network.parameters(), strict=True)
    )
    assert np.isfinite(policy.last_train_loss_)


def test_batch_update_equals_row_by_row_updates() -> None:
    x, ids, r, feats = _rows(np.random.default_rng(4), 60)
    one, batch = NeuralLinear(**SMALL), NeuralLinear(**SMALL)
    for i in range(60):
        one.update(x[i], ids[i], r[i], feats[i])
    batch.update_batch(x, ids, r, feats)
    for a, b in zip(one.network.parameters(), batch.network.parameters(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_allclose(batch.head.theta_, one.head.theta_, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(batch.buffer_.inputs, one.buffer_.inputs)


def test_state_round_trip_continues_learning_identically(tmp_path: Path) -> None:
    x, ids, r, feats = _rows(np.random.default_rng(5), 80)
    policy = NeuralLinear(**SMALL)
    policy.update_batch(x[:40], ids[:40], r[:40], feats[:40])
    restored = load_policy(save_policy(policy, tmp_path / "nl.npz"))
    assert isinstance(restored, NeuralLinear)
    for p in (policy, restored):
        p.update_batch(x[40:], ids[40:], r[40:], feats[40:])  # crosses a retraining
    for a, b in zip(policy.network.parameters(), restored.network.parameters(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(policy.head.theta_, restored.head.theta_)
    cands = Candidates(("p", "q", "r"), np.random.default_rng(6).standard_normal((3, DA)))
    a = policy.select_batch(x[:10], cands, np.random.default_rng(7))
    b = restored.select_batch(x[:10], cands, np.random.default_rng(7))
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.arms, b.arms)


def test_the_seed_decides_the_initial_network() -> None:
    a, b, c = (
        NeuralLinear(**SMALL, seed=1),
        NeuralLinear(**SMALL, seed=1),
        NeuralLinear(**SMALL, seed=2),
    )
    first = next(iter(a.network.parameters()))
    assert torch.equal(first, next(iter(b.network.parameters())))
    assert not torch.equal(first, next(iter(c.network.parameters())))


def test_thompson_probabilities_follow_the_posterior() -> None:
    """With a sharp posterior on a clearly better arm the policy exploits it; the head's
    posterior mean ranks the candidates as the rewards do."""
    policy = NeuralLinear(**{**SMALL, "hidden": (16,), "retrain_every": 50, "max_train_steps": 200})
    rng = np.random.default_rng(8)
    cands = Candidates(("lo", "hi"), np.array([[-1.0, 0.0], [1.0, 0.0]]))
    for _ in range(200):
        arm = int(rng.integers(2))
        policy.update(
            rng.standard_normal(DU),
            cands.ids[arm],
            2.0 * arm + 0.05 * rng.standard_normal(),
            cands.features[arm],
        )
    batch = policy.select_batch(rng.standard_normal((200, DU)), cands, rng)
    assert batch.probabilities[:, 1].mean() > 0.95  # seeded; the gap is 2 with noise 0.05
    assert np.all(batch.arms[batch.probabilities[:, 1] == 1.0] == 1)


def test_ucb_mode_scores_the_head_mean_plus_alpha_times_the_width() -> None:
    """mode="ucb": the score of every candidate is μᵀφ + α √(φᵀA⁻¹φ) on the learned φ, the
    choice is its argmax and the probabilities are exact (1 on the argmax)."""
    policy = NeuralLinear(**SMALL, mode="ucb", alpha=0.7)
    x, ids, r, feats = _rows(np.random.default_rng(10), 60)
    policy.update_batch(x, ids, r, feats)  # two retrainings and fast updates after them
    rng = np.random.default_rng(11)
    cands = Candidates(("p", "q", "r"), rng.standard_normal((3, DA)))
    contexts = rng.standard_normal((20, DU))
    batch = policy.select_batch(contexts, cands, rng)
    head = policy.head
    for i, context in enumerate(contexts):
        z = policy.features.build_rows(np.repeat(context[None], 3, 0), cands.features, cands.ids)
        phi = policy.encode(z)
        width = np.sqrt(np.einsum("kd,de,ke->k", phi, np.linalg.inv(head.precision_[0]), phi))
        expected = phi @ np.linalg.solve(head.precision_[0], head.xty_[0]) + 0.7 * width
        np.testing.assert_allclose(batch.scores[i], expected, rtol=1e-9)
        assert batch.arms[i] == int(np.argmax(expected))
        np.testing.assert_array_equal(batch.probabilities[i], np.eye(3)[batch.arms[i]])
    one = policy.select(contexts[0], cands, np.random.default_rng(12))
    assert one.arm == batch.arms[0] and one.propensity == 1.0


def test_ucb_mode_survives_a_state_round_trip(tmp_path: Path) -> None:
    policy = NeuralLinear(**SMALL, mode="ucb", alpha=2.0)
    x, ids, r, feats = _rows(np.random.default_rng(13), 30)
    policy.update_batch(x, ids, r, feats)
    restored = load_policy(save_policy(policy, tmp_path / "ucb.npz"))
    assert isinstance(restored, NeuralLinear)
    assert (restored.config.mode, restored.config.alpha) == ("ucb", 2.0)
    cands = Candidates(("p", "q"), np.random.default_rng(14).standard_normal((2, DA)))
    a = policy.select_batch(x[:10], cands, np.random.default_rng(15))
    b = restored.select_batch(x[:10], cands, np.random.default_rng(15))
    np.testing.assert_array_equal(a.scores, b.scores)


def test_head_inputs_put_the_encoder_input_next_to_the_learned_features() -> None:
    policy = NeuralLinear(**SMALL, head_inputs=True, interactions=True)
    z = policy.features.build_rows(np.ones((2, DU)), np.full((2, DA), 2.0), ["a", "b"])
    assert z.shape == (2, DU + DA + DU * DA)
    phi = policy.encode(z)
    assert policy.dim_phi == 8 + 1 + z.shape[1] == phi.shape[1]
    np.testing.assert_array_equal(phi[:, 9:], z)
    np.testing.assert_array_equal(phi[:, 8], 1.0)


def test_head_config_carries_the_prior() -> None:
    cfg = NeuralLinearConfig(dim_user=2, lambda_prior=23.0, a0=12.0, b0=30.0)
    assert cfg.head_config(4) == HeadConfig(dim=4, lambda_prior=23.0, a0=12.0, b0=30.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hidden": ()}, "'hidden' parameter of NeuralLinearConfig"),
        ({"hidden": (8, 0)}, "'hidden' parameter"),
        ({"loss": "hinge"}, "'loss' parameter of NeuralLinearConfig must be one of 'mse', 'bce'"),
        ({"retrain_every": 0}, "'retrain_every' parameter"),
        ({"learning_rate": -1.0}, "'learning_rate' parameter"),
        ({"lambda_prior": 0.0}, "'lambda_prior' parameter of BayesianLinearHead"),
        ({"device": "tpu:9"}, "'device' option"),
        ({"n_sim": 0}, "'n_sim' parameter"),
        ({"mode": "greedy"}, "'mode' parameter of NeuralLinearConfig must be one of 'ts', 'ucb'"),
        ({"alpha": -1.0}, "'alpha' parameter"),
        ({"colour": "red"}, "Unknown option(s) 'colour'"),
    ],
)
def test_bad_options_raise_value_errors_naming_them(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_policy("neural_linear", dim_user=DU, **options)


def test_bce_rejects_rewards_outside_zero_one() -> None:
    policy = NeuralLinear(**{**SMALL, "loss": "bce"})
    with pytest.raises(ValueError, match=r"rewards must lie in \[0, 1\] with loss='bce'; got 2.0"):
        policy.update(np.zeros(DU), "a", 2.0, np.zeros(DA))


def test_wrong_feature_widths_are_rejected() -> None:
    policy = NeuralLinear(**SMALL)
    with pytest.raises(ValueError, match="context must have length 3"):
        policy.select(np.zeros(2), Candidates(("a",), np.zeros((1, DA))), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"candidates.features must have 2 columns"):
        policy.select(np.zeros(DU), Candidates(("a",), np.zeros((1, 3))), np.random.default_rng(0))


def _assert_same(policy: NeuralLinear, twin: NeuralLinear) -> None:
    """Equal states and bit-identical decisions from the same generator."""
    mine, theirs = state_arrays(policy), state_arrays(twin)
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        np.testing.assert_array_equal(mine[key], value, err_msg=key)
    cands = Candidates(("arm-0", "arm-1", "arm-2"), np.ones((3, DA)))
    contexts = np.random.default_rng(3).standard_normal((5, DU))
    picks = [
        [p.select(x, cands, np.random.default_rng(9)).probabilities for x in contexts]
        for p in (policy, twin)
    ]
    np.testing.assert_array_equal(np.array(picks[0]), np.array(picks[1]))


def _rebuilt_row_by_row(policy: NeuralLinear) -> BayesianLinearHead:
    """A head that learnt the policy's stored rows, re-encoded, one batch (as the head
    rebuild's fallback learns them where the summed statistics lose the prior)."""
    head = BayesianLinearHead(policy.head.config)
    head.update_batch(policy.encode(policy.buffer_.inputs), policy.buffer_.rewards)
    return head


def test_huge_interactions_are_learnt_and_retrained_on() -> None:
    """User × arm interactions of inputs at MAX_ABS_INPUT give the head features whose
    summed precision is numerically singular (Gram entries near 1e24 hide the prior's
    λ = 1). Before, the retraining they triggered failed at the head's rebuild, the
    batch was refused whole, and (the next row triggering the same rebuild) every later
    reward too, for good (numerics pass). The rebuild now learns the rows one at a time
    there, as the online head does: the batch is learnt and the policy goes on."""
    huge = np.full(DU, MAX_ABS_INPUT), np.full(DA, MAX_ABS_INPUT)
    fell_back = 0
    for seed in range(4):
        options = {**SMALL, "interactions": True, "retrain_every": 10, "seed": seed}
        policy = make_policy("neural_linear", **options)
        x, ids, rewards, feats = _rows(np.random.default_rng(seed), 30)
        policy.update_batch(x[:25], ids[:25], rewards[:25], feats[:25])  # two retrainings
        policy.update_batch(
            np.tile(huge[0], (5, 1)), ["arm-0"] * 5, np.zeros(5), np.tile(huge[1], (5, 1))
        )
        assert policy.n_retrains_ == 3 and policy.head.count_[0] == 30
        expected = _rebuilt_row_by_row(policy)
        np.testing.assert_allclose(policy.head.theta_, expected.theta_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(policy.head.inv_chol_, expected.inv_chol_, rtol=1e-9, atol=1e-12)
        precision = policy.head.precision_[0]
        try:
            fell_back += not factor_is_accurate(precision, inverse_cholesky(precision))
        except ValueError:
            fell_back += 1
        policy.update_batch(x[25:], ids[25:], rewards[25:], feats[25:])  # and it goes on
        assert policy.head.count_[0] == 35
    assert fell_back >= 2, "the premise broke: huge interactions no longer defeat the sums"


def test_a_retrain_call_after_huge_interactions_learnt_online_succeeds() -> None:
    """The same rows learnt by the fast path, then a retrain on demand: it failed (the
    head's rebuild), now the head holds every row."""
    options = {**SMALL, "interactions": True, "retrain_every": 1_000}
    for seed in range(4):
        policy = make_policy("neural_linear", **{**options, "seed": seed})
        x, ids, rewards, feats = _rows(np.random.default_rng(seed), 20)
        x[:10], feats[:10] = MAX_ABS_INPUT, MAX_ABS_INPUT
        for i in range(len(ids)):  # the fast path only, row by row: rank-one updates
            policy.update(x[i], ids[i], rewards[i], feats[i])
        policy.retrain()
        assert policy.head.count_[0] == 20
        expected = _rebuilt_row_by_row(policy)
        np.testing.assert_allclose(policy.head.theta_, expected.theta_, rtol=1e-9, atol=1e-12)
