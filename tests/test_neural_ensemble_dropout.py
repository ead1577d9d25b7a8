"""Bootstrapped ensemble and MC dropout: uncertainty, exact propensities, batched passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bandit_core import BootstrappedEnsemble, Candidates, MCDropout, make_policy, policy_from_state
from bandit_core.exploration import greedy_probabilities
from bandit_core.nets import MemberMLP, dropout_masks

DU, DA = 2, 1
TOY = {
    "dim_user": DU,
    "dim_arm": DA,
    "hidden": (32,),
    "retrain_every": 10_000,  # training only on demand in these tests
    "epochs": 200,
    "max_train_steps": 400,
    "batch_size": 64,
    "learning_rate": 1e-2,
    "device": "cpu",
}
#: 1-D toy for the uncertainty tests: reward sin(3x) + N(0, 0.1²), spread averaged on a grid
SINE = {**TOY, "dim_user": 1, "dim_arm": 0, "epochs": 10_000, "max_train_steps": 600}
GRID = np.linspace(-1.0, 1.0, 41)[:, None]


def _toy(policy: BootstrappedEnsemble | MCDropout, n: int, seed: int) -> None:
    """Rewards 1 + x₀ − x₁ + noise 0.1 for arm "a" (feature 1.0)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (n, DU))
    r = 1.0 + x[:, 0] - x[:, 1] + 0.1 * rng.standard_normal(n)
    policy.update_batch(x, ["a"] * n, r, np.ones((n, 1)))
    policy.retrain()


def _sine(policy: BootstrappedEnsemble | MCDropout, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (n, 1))
    policy.update_batch(x, ["a"] * n, np.sin(3.0 * x[:, 0]) + 0.1 * rng.standard_normal(n))
    policy.retrain()
    return policy.features.build(GRID, np.zeros((1, 0)), ("a",))  # (41, 1, 1)


def _ensemble_spread(n: int) -> float:
    policy = BootstrappedEnsemble(**SINE, n_members=8, mode="ucb")
    return float(policy.member_scores(_sine(policy, n)).std(axis=0).mean())


def _dropout_spread(n: int) -> tuple[float, float]:
    policy = MCDropout(**SINE, dropout=0.2, mode="ucb", n_passes=64)
    inputs = _sine(policy, n)
    return float(policy.pass_scores(inputs, policy.ucb_masks_).std(axis=0).mean()), policy.rates()[
        0
    ]


def test_ensemble_uncertainty_shrinks_with_data() -> None:
    """Seeded: the spread of 8 bootstrapped members, averaged over a grid, falls by more
    than half between 10 and 1,000 observations (measured: about 0.13 → 0.03)."""
    small, large = _ensemble_spread(10), _ensemble_spread(1000)
    assert large < 0.5 * small, (small, large)


def test_dropout_uncertainty_shrinks_with_data() -> None:
    """Seeded: with learned (concrete) rates, the drop rate falls from about ½ to a few
    percent and the spread of 64 passes falls by more than a third between 10 and 1,000
    observations (measured: about 0.20 → 0.10)."""
    (small, rate_small), (large, rate_large) = _dropout_spread(10), _dropout_spread(1000)
    assert rate_large < 0.5 * rate_small, (rate_small, rate_large)
    assert large < (2.0 / 3.0) * small, (small, large)


def test_bootstrap_weights_are_poisson_one_per_member() -> None:
    policy = BootstrappedEnsemble(**TOY, n_members=5)
    rng = np.random.default_rng(1)
    n = 4000
    policy.update_batch(
        rng.standard_normal((n, DU)), ["a"] * n, rng.standard_normal(n), np.ones((n, 1))
    )
    w = policy.buffer_.weights
    assert w.shape == (n, 5)
    # Poisson(1): mean 1 and variance 1; 4 s.e. = 4/√20000 ≈ 0.028
    assert abs(w.mean() - 1.0) < 0.03 and abs(w.var() - 1.0) < 0.06
    assert np.all(w == np.round(w)) and (w == 0).mean() == pytest.approx(np.exp(-1.0), abs=0.02)


def test_members_are_evaluated_in_one_batched_pass() -> None:
    net = MemberMLP(3, (4, 5), members=3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, 3, dtype=torch.float64)
    batched = net(x[None])
    assert batched.shape == (3, 7)
    for m in range(3):  # member m alone, layer by layer
        h = x
        for w, b in zip(net.weights, net.biases, strict=True):
            h = torch.relu(h @ w[m] + b[m])
        out = (h @ net.out_weight[m] + net.out_bias[m]).squeeze(-1)
        torch.testing.assert_close(batched[m], out, rtol=1e-12, atol=1e-12)


def test_dropout_passes_broadcast_in_one_call() -> None:
    gen = torch.Generator().manual_seed(0)
    net = MemberMLP(3, (6,), generator=gen)
    masks = dropout_masks((5, 1, 1), (6,), 0.5, gen)
    x = torch.randn(2, 4, 3, dtype=torch.float64)  # (n, K, D)
    out = net(x[None], masks)
    assert out.shape == (5, 2, 4)
    for s in range(5):
        torch.testing.assert_close(out[s], net(x[None], [masks[0][s : s + 1]])[0])


@pytest.mark.parametrize("mode", ["ucb", "ts"])
def test_ensemble_propensities_are_exact(mode: str) -> None:
    policy = BootstrappedEnsemble(**{**TOY, "max_train_steps": 20}, n_members=4, mode=mode)
    _toy(policy, 40, seed=2)
    rng = np.random.default_rng(3)
    cands = Candidates(("a", "b", "c"), rng.standard_normal((3, DA)))
    contexts = rng.standard_normal((30, DU))
    batch = policy.select_batch(contexts, cands, rng)
    scores = policy.member_scores(policy.features.build(contexts, cands.features, cands.ids))
    if mode == "ucb":
        expected = greedy_probabilities(
            scores.mean(axis=0) + policy.config.beta * scores.std(axis=0)
        )
    else:
        expected = greedy_probabilities(scores).mean(axis=0)  # uniform member, its argmax
    np.testing.assert_array_equal(batch.probabilities, expected)


def test_dropout_ucb_scores_do_not_depend_on_the_decision_rng() -> None:
    policy = MCDropout(**{**TOY, "max_train_steps": 20}, mode="ucb", n_passes=16)
    _toy(policy, 40, seed=4)
    cands = Candidates(("a", "b"), np.array([[1.0], [-1.0]]))
    x = np.array([0.2, 0.1])
    a = policy.select(x, cands, np.random.default_rng(0))
    b = policy.select(x, cands, np.random.default_rng(99))
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.probabilities, greedy_probabilities(a.scores[None])[0])


def test_dropout_thompson_draws_differ_between_decisions() -> None:
    policy = MCDropout(**{**TOY, "max_train_steps": 20}, mode="ts", n_sim=20)
    _toy(policy, 40, seed=5)
    cands = Candidates(("a", "b"), np.array([[1.0], [-1.0]]))
    rng = np.random.default_rng(0)
    scores = {tuple(policy.select(np.zeros(DU), cands, rng).scores) for _ in range(10)}
    assert len(scores) > 1


def test_ucb_masks_are_redrawn_after_a_retrain_and_kept_in_the_state() -> None:
    policy = MCDropout(**{**TOY, "max_train_steps": 5}, mode="ucb", n_passes=4)
    before = [m.clone() for m in policy.ucb_masks_]
    _toy(policy, 20, seed=6)
    assert not all(torch.equal(a, b) for a, b in zip(before, policy.ucb_masks_, strict=True))
    restored = policy_from_state(policy.to_state())
    assert isinstance(restored, MCDropout)
    for a, b in zip(policy.ucb_masks_, restored.ucb_masks_, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("ensemble", {"n_members": 0}, "'n_members' parameter of EnsembleConfig"),
        (
            "ensemble",
            {"mode": "greedy"},
            "'mode' parameter of EnsembleConfig must be one of 'ucb', 'ts'",
        ),
        ("ensemble", {"beta": -1.0}, "'beta' parameter"),
        (
            "dropout",
            {"dropout": 1.0},
            r"'dropout' parameter of DropoutConfig must be a float in the range \[0, 1\)",
        ),
        ("dropout", {"n_passes": 1}, "'n_passes' parameter"),
        ("dropout", {"alpha": -0.5}, "'alpha' parameter"),
        ("dropout", {"dropout": 0.0}, r"must be in \(0, 1\) with learn_dropout=True"),
    ],
)
def test_bad_options_raise_value_errors(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_policy(name, dim_user=DU, **options)


def test_a_neural_state_no_training_could_give_is_refused_naming_its_array() -> None:
    """A replay buffer's cursor past its capacity loaded, and the next update failed
    after the head had learnt the row; a learnt dropout rate of 1 (``logit_p = 40`` is
    finite) loaded and every decision's propensities were NaN (policy helper, stop 55)."""
    from bandit_core.types import PolicyState

    small = {"dim_user": 3, "dim_arm": 2, "hidden": (8,), "retrain_every": 10, "epochs": 1}
    rng = np.random.default_rng(0)
    buffered = make_policy("neural_linear", **small, buffer_size=5, device="cpu")
    buffered.update_batch(
        rng.standard_normal((3, 3)), ["a"] * 3, rng.random(3), rng.standard_normal((3, 2))
    )
    dropout = make_policy("dropout", **small, device="cpu")
    for policy, key, value, message in (
        (buffered, "buffer.next", 7, "replay buffer 'next' must be in"),
        (buffered, "buffer.next", 2, "0 until the buffer is full"),
        (dropout, "concrete.logit_p", [40.0], "'concrete.logit_p' gives a dropout rate of 1"),
    ):
        state = policy.to_state()
        arrays = {**state.arrays, key: np.asarray(value, dtype=state.arrays[key].dtype)}
        with pytest.raises(ValueError, match=message):
            policy_from_state(PolicyState(state.policy, state.config, arrays))


def test_a_state_trained_on_a_gpu_loads_where_there_is_none() -> None:
    """A state saved with ``device='cuda'`` (trained on a GPU worker) was refused by
    every CPU-only replica: "CUDA is not available here"."""
    from bandit_core.types import PolicyState

    policy = make_policy("neural_linear", dim_user=3, dim_arm=2, hidden=(8,), device="cpu")
    state = policy.to_state()
    on_gpu = PolicyState(state.policy, {**state.config, "device": "cuda:0"}, state.arrays)
    loaded = policy_from_state(on_gpu)
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(loaded.device) == expected
