"""The hybrid model's block posterior against the dense shared model it is equal to, and the
hashed arm-embedding interaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bandit_core import MAX_ABS_INPUT, Candidates, make_policy, policy_from_state
from bandit_core.arm_embedding import arm_embeddings
from bandit_core.features import FeatureMap
from bandit_core.head import BayesianLinearHead, HeadConfig
from bandit_core.policies import hybrid
from bandit_core.policies.hybrid import HybridLinTSConfig, HybridLinUCBConfig
from bandit_core.state import load_state
from tests.policy_factories import state_arrays

DU, DA = 4, 3
IDS = ("a", "b", "c", "d", "e")
TOL = 1e-9


class Dense:
    """The equivalent dense model: one head on ``φ = [z ; e_a ⊗ x]`` (k + K·d)."""

    def __init__(self, fmap: FeatureMap, arms: list[str], lam: float) -> None:
        self.fmap, self.arms = fmap, arms
        self.k = fmap.dim
        self.head = BayesianLinearHead(HeadConfig(dim=self.k + len(arms) * DU, lambda_prior=lam))

    def phi(self, x: np.ndarray, arm: str, feats: np.ndarray) -> np.ndarray:
        out = np.zeros(self.head.dim)
        out[: self.k] = self.fmap.row(x, feats, arm)
        j = self.k + self.arms.index(arm) * DU
        out[j : j + DU] = x
        return out

    def phis(self, contexts: np.ndarray, cands: Candidates) -> np.ndarray:
        return np.stack(
            [[self.phi(x, a, cands.features[i]) for i, a in enumerate(cands.ids)] for x in contexts]
        )


def _stream(seed: int, n: int) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((len(IDS), DA))
    x = rng.standard_normal((n, DU))
    arms = rng.integers(0, len(IDS), size=n)
    r = x[:, 0] * (arms - 2) + 0.1 * rng.standard_normal(n)
    return x, [IDS[a] for a in arms], feats[arms], r


def _candidates() -> Candidates:
    rng = np.random.default_rng(99)
    # the seen arms and an unseen one (its block is still the prior)
    return Candidates((*IDS[:3], "new"), rng.standard_normal((4, DA)))


def _joint_law(policy: Any, contexts: np.ndarray, cands: Candidates) -> tuple[Any, Any]:
    """Posterior means (n, K) and the candidates' score covariances (n, K, K)."""
    mean, proj, _ = policy.model.terms(contexts, cands)
    k = policy.model.dim_shared
    shared, own = proj[..., :k], proj[..., k:]
    cov = np.einsum("nak,nbk->nab", shared, shared)
    cov += np.einsum("nak,nak->na", own, own)[:, :, None] * np.eye(len(cands))
    return mean, cov


def _compare(policy: Any, dense: Dense) -> None:
    cands = _candidates()
    contexts = np.random.default_rng(7).standard_normal((6, DU))
    mean, block = _joint_law(policy, contexts, cands)
    phi = dense.phis(contexts, cands)
    cov = dense.head.covariance(0)
    np.testing.assert_allclose(mean, phi @ dense.head.theta_[0], rtol=0, atol=TOL)
    # the whole joint law of the candidates' scores: Cov(s_a, s_b) = φ_aᵀ M⁻¹ φ_b
    np.testing.assert_allclose(block, np.einsum("nad,de,nbe->nab", phi, cov, phi), atol=TOL)
    a, b = policy.model.noise_posterior()
    da_, db_ = dense.head.noise_posterior(np.array([0]))
    assert a == pytest.approx(float(da_[0]), abs=TOL)
    assert b == pytest.approx(float(db_[0]), abs=TOL)


@pytest.mark.parametrize(
    "options",
    [
        {"interactions": True},
        {"arm_vocabulary": ("a", "c"), "arm_embedding": 2, "lambda_prior": 0.5},
    ],
)
def test_online_updates_equal_the_dense_posterior(options: dict[str, Any]) -> None:
    # refactor_every=37: the rank-one path and the refactorisation both take part
    policy: Any = make_policy(
        "hybrid_linucb", dim_user=DU, dim_arm=DA, refactor_every=37, **options
    )
    dense = Dense(policy.model.features, [*IDS, "new"], policy.config.lambda_prior)
    x, arms, feats, r = _stream(0, 300)
    for t in range(300):
        policy.update(x[t], arms[t], r[t], feats[t])
        dense.head.update(dense.phi(x[t], arms[t], feats[t]), r[t])
    _compare(policy, dense)


def test_rank_one_steps_on_non_contiguous_blocks_equal_the_dense_posterior() -> None:
    """An arm's block is updated in place by BLAS on its Fortran view; a stack of blocks
    that is not C-contiguous takes numpy's update, with the same posterior."""
    policy: Any = make_policy("hybrid_linucb", dim_user=DU, dim_arm=DA, interactions=True)
    dense = Dense(policy.model.features, [*IDS, "new"], policy.config.lambda_prior)
    x, arms, feats, r = _stream(3, 120)
    for t in range(120):
        if t == 60:
            model = policy.model
            model.scoring_ = np.asfortranarray(model.scoring_)
            assert not model.scoring_[1].flags.c_contiguous
        policy.update(x[t], arms[t], r[t], feats[t])
        dense.head.update(dense.phi(x[t], arms[t], feats[t]), r[t])
    _compare(policy, dense)


def test_batch_update_rebuild_and_revision_equal_the_dense_posterior() -> None:
    x, arms, feats, r = _stream(1, 200)
    batch: Any = make_policy("hybrid_lints", dim_user=DU, dim_arm=DA, interactions=True)
    batch.update_batch(x[:120], arms[:120], r[:120], feats[:120])
    batch.update_batch(x[120:], arms[120:], r[120:], feats[120:])
    dense = Dense(batch.model.features, [*IDS, "new"], 1.0)
    dense.head.update_batch(np.stack([dense.phi(x[t], arms[t], feats[t]) for t in range(200)]), r)
    _compare(batch, dense)

    rebuilt: Any = make_policy("hybrid_lints", dim_user=DU, dim_arm=DA, interactions=True)
    rebuilt.update(x[0], "zzz", 5.0, feats[0])  # forgotten by the rebuild
    rebuilt.rebuild(x, arms, r, feats)
    _compare(rebuilt, dense)

    # a revised reward: as if the new one had been learnt at once
    batch.revise_reward(x[3], arms[3], r[3], r[3] + 2.0, feats[3])
    dense.head.revise(dense.phi(x[3], arms[3], feats[3]), r[3], r[3] + 2.0)
    _compare(batch, dense)


def test_hybrid_is_shared_linucb_with_the_full_per_arm_interaction() -> None:
    """On one-hot arm features the hybrid model with z = [x ; one-hot] is the shared model
    on [x ; one-hot ; x ⊗ one-hot]: same posterior, so the same UCB scores."""
    k = len(IDS)
    cands = Candidates(IDS, np.eye(k))
    hybrid: Any = make_policy("hybrid_linucb", dim_user=DU, dim_arm=k)
    shared: Any = make_policy("shared_linucb", dim_user=DU, dim_arm=k, interactions=True)
    x, arms, _, r = _stream(2, 150)
    for t in range(150):
        one_hot = np.eye(k)[IDS.index(arms[t])]
        hybrid.update(x[t], arms[t], r[t], one_hot)
        shared.update(x[t], arms[t], r[t], one_hot)
    contexts = np.random.default_rng(3).standard_normal((20, DU))
    rng = np.random.default_rng(0)
    ours = hybrid.select_batch(contexts, cands, rng)
    theirs = shared.select_batch(contexts, cands, rng)
    np.testing.assert_allclose(ours.scores, theirs.scores, rtol=0, atol=TOL)


def test_update_touches_blocks_not_the_dense_matrix() -> None:
    """State grows as K·(d² + d·k) + k², never (k + K·d)²."""
    n_arms = 400
    policy: Any = make_policy("hybrid_linucb", dim_user=DU, dim_arm=DA, interactions=True)
    rng = np.random.default_rng(4)
    for a in range(n_arms):
        policy.update(rng.standard_normal(DU), f"arm-{a}", 1.0, rng.standard_normal(DA))
    k = policy.model.dim_shared
    largest = max(v.size for v in policy.to_state().arrays.values())
    assert largest == (n_arms + 1) * (DU + k + 1) * DU  # the W_a blocks [A⁻¹ ; (A⁻¹B)ᵀ ; (A⁻¹b)ᵀ]
    assert largest < (k + n_arms * DU) ** 2 / 40


def test_thompson_propensities_track_the_choice_frequencies() -> None:
    policy: Any = make_policy("hybrid_lints", dim_user=DU, dim_arm=DA, n_sim=400)
    x, arms, feats, r = _stream(5, 60)
    policy.update_batch(x, arms, r, feats)
    cands = _candidates()
    context = np.random.default_rng(8).standard_normal(DU)
    rng = np.random.default_rng(9)
    n = 4000
    picks = np.zeros(len(cands))
    mean_probs = np.zeros(len(cands))
    for _ in range(n):
        d = policy.select(context, cands, rng)
        picks[d.arm] += 1
        mean_probs += d.probabilities
    np.testing.assert_allclose(picks / n, mean_probs / n, atol=4 * np.sqrt(0.25 / n))


@pytest.mark.parametrize("n_cands", [4, 30])  # K < k (QR factor of the shared noise), K ≥ k
def test_one_decision_path_equals_the_batch_path(n_cands: int) -> None:
    """``select`` (one context: the draws go straight to ``one_decision``) gives the same
    bits as ``select_batch`` of that one row with the same generator state."""
    policy: Any = make_policy("hybrid_lints", dim_user=DU, dim_arm=DA, n_sim=200)
    x, arms, feats, r = _stream(6, 80)
    policy.update_batch(x, arms, r, feats)
    policy.update(x[0], arms[0], 1.0, feats[0])  # a rank-one step after the refactorisation
    rng = np.random.default_rng(12)
    cands = Candidates(tuple(f"c{i}" for i in range(n_cands)), rng.standard_normal((n_cands, DA)))
    for seed in range(5):
        context = rng.standard_normal(DU)
        one = policy.select(context, cands, np.random.default_rng(seed))
        batch = policy.select_batch(context[None], cands, np.random.default_rng(seed))
        assert one.arm == int(batch.arms[0])
        np.testing.assert_array_equal(one.probabilities, batch.probabilities[0])
        np.testing.assert_array_equal(one.scores, batch.scores[0])
        assert one.propensity_se == float(batch.propensity_se[0])


@pytest.mark.parametrize(
    ("config_class", "options", "message"),
    [
        (HybridLinUCBConfig, {"dim_user": 0}, "'dim_user' parameter of HybridLinUCBConfig"),
        (HybridLinUCBConfig, {"dim_user": 2, "gamma": 0.9}, "neither a discount nor a window"),
        (HybridLinTSConfig, {"dim_user": 2, "window": 10}, "neither a discount nor a window"),
        (HybridLinUCBConfig, {"dim_user": 2, "alpha": -1.0}, "'alpha' parameter"),
        (HybridLinTSConfig, {"dim_user": 2, "n_sim": 0}, "'n_sim' parameter"),
        (HybridLinTSConfig, {"dim_user": 2, "arm_embedding": -1}, "'arm_embedding' parameter"),
    ],
)
def test_config_is_validated(
    config_class: type[Any], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        config_class(**options)


def test_state_with_a_wrong_block_shape_is_refused() -> None:
    policy: Any = make_policy("hybrid_linucb", dim_user=DU, dim_arm=DA)
    x, arms, feats, r = _stream(6, 30)
    policy.update_batch(x, arms, r, feats)
    state = policy.to_state()
    state.arrays["hybrid.cross"] = state.arrays["hybrid.cross"][:, :, :-1]
    with pytest.raises(ValueError, match=r"'hybrid\.cross' must have shape"):
        policy_from_state(state)


# ---------------------------------------------------------------------- arm embedding
def test_arm_embedding_is_a_function_of_the_id_alone() -> None:
    first = arm_embeddings(["x", "y", "z"], 4)
    again = arm_embeddings(["z", "x"], 4)
    np.testing.assert_array_equal(first[[2, 0]], again)
    assert not np.allclose(first[0], first[1])
    assert arm_embeddings(["x"], 6).shape == (1, 6)


def test_feature_map_with_arm_embedding_agrees_across_its_builders() -> None:
    fmap = FeatureMap(DU, DA, interactions=True, arm_vocabulary=("a",), arm_embedding=3)
    assert fmap.dim == DU + DA + DU * DA + 1 + DU * 3
    rng = np.random.default_rng(10)
    contexts = rng.standard_normal((5, DU))
    feats = rng.standard_normal((4, DA))
    ids = ("a", "b", "c", "d")
    full = fmap.build(contexts, feats, ids)
    weights = rng.standard_normal((fmap.dim, 2))
    np.testing.assert_allclose(fmap.apply(contexts, feats, ids, weights), full @ weights)
    np.testing.assert_array_equal(fmap.row(contexts[1], feats[2], ids[2]), full[1, 2])
    paired = fmap.build_rows(contexts[:4], feats, list(ids))
    np.testing.assert_array_equal(paired, full[np.arange(4), np.arange(4)])


def test_statistics_folded_early_leave_the_posterior_equal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A₀, A_a and B_a summed every few updates (as a long refactor_every does at 512)
    give the dense posterior after the next refactorisation too."""
    monkeypatch.setattr(hybrid, "_FOLD_EVERY", 5)
    policy: Any = make_policy(
        "hybrid_linucb", dim_user=DU, dim_arm=DA, interactions=True, refactor_every=64
    )
    dense = Dense(policy.model.features, [*IDS, "new"], policy.config.lambda_prior)
    x, arms, feats, r = _stream(11, 150)
    for t in range(150):
        policy.update(x[t], arms[t], r[t], feats[t])
        dense.head.update(dense.phi(x[t], arms[t], feats[t]), r[t])
    _compare(policy, dense)


@pytest.mark.parametrize("name", ["hybrid_linucb", "hybrid_lints"])
def test_an_update_too_large_for_the_prior_is_refused_whole(name: str) -> None:
    """With lambda_prior = 1e-6, features at MAX_ABS_INPUT leave an arm's A⁻¹ indefinite
    in float64 (xᵀA⁻¹x < 0 after a few rows): each such update, one row or a batch, raises
    and changes nothing; the model stays finite and keeps deciding."""
    rng = np.random.default_rng(0)
    policy: Any = make_policy(name, dim_user=DU, dim_arm=DA, lambda_prior=1e-6)
    refused = 0
    for t in range(40):
        x = MAX_ABS_INPUT * rng.choice([-1.0, 1.0], DU)
        feats = MAX_ABS_INPUT * rng.choice([-1.0, 1.0], DA)
        before = state_arrays(policy)
        arms = list(policy.model.arm_ids)
        try:
            if t % 4 == 3:
                policy.update_batch(
                    np.tile(x, (3, 1)), [IDS[t % 5]] * 3, np.ones(3), np.tile(feats, (3, 1))
                )
            else:
                policy.update(x, IDS[t % 5], float(t % 2), feats)
        except ValueError as exc:
            assert "nothing was learnt" in str(exc) or "positive definite" in str(exc)
            refused += 1
            after = state_arrays(policy)
            assert after.keys() == before.keys() and list(policy.model.arm_ids) == arms
            for key, value in before.items():
                np.testing.assert_array_equal(after[key], value, err_msg=key)
        for key, value in state_arrays(policy).items():
            assert not np.issubdtype(value.dtype, np.number) or np.isfinite(value).all(), key
        cands = Candidates(IDS, rng.standard_normal((5, DA)))
        decision = policy.select(rng.standard_normal(DU), cands, rng)
        assert np.isfinite(decision.probabilities).all()
    assert refused >= 5, "the premise broke: no update was too large for the prior"


def test_a_zero_context_is_learnt_not_refused() -> None:
    """xᵀA⁻¹x = 0 for x = 0: the stability check must accept it (only the shared part
    learns)."""
    policy: Any = make_policy("hybrid_linucb", dim_user=DU, dim_arm=DA)
    for arm in ("a", "a", "b"):
        policy.update(np.zeros(DU), arm, 1.0, np.ones(DA))
    assert policy.model.count_ == 3.0


def test_a_refused_first_update_of_a_new_arm_leaves_no_arm_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy: Any = make_policy("hybrid_linucb", dim_user=DU, dim_arm=DA)
    rng = np.random.default_rng(1)
    for arm in ("a", "b", "a"):
        policy.update(rng.standard_normal(DU), arm, 1.0, rng.standard_normal(DA))
    before, arms = state_arrays(policy), list(policy.model.arm_ids)

    def refuse(*_: Any) -> None:
        raise ValueError("refused")

    monkeypatch.setattr(hybrid.HybridModel, "_rank1", refuse)
    with pytest.raises(ValueError, match="refused"):
        policy.update(rng.standard_normal(DU), "new", 1.0, rng.standard_normal(DA))
    monkeypatch.undo()
    assert list(policy.model.arm_ids) == arms and "new" not in policy.model._slots
    after = state_arrays(policy)
    assert after.keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    policy.update(rng.standard_normal(DU), "new", 1.0, rng.standard_normal(DA))  # learns on
    assert list(policy.model.arm_ids) == [*arms, "new"]


BEFORE_D8A84E1 = Path(__file__).parent / "data" / "hybrid_before_d8a84e1"


@pytest.mark.parametrize("name", ["hybrid_linucb", "hybrid_lints"])
def test_a_state_of_the_layout_before_the_scoring_blocks_decides_as_it_did(name: str) -> None:
    """States written by the code before d8a84e1 (``make_states.py`` beside them, run with
    that code: 150 rows learnt in a batch, then 90 rank-one steps, 40 since the last
    refactorisation) load: the same posterior as that code computed from them, and learning
    goes on from there as for a model that learnt everything now."""
    expected = np.load(BEFORE_D8A84E1 / "expected.npz")
    state = load_state(BEFORE_D8A84E1 / f"{name}.npz")
    assert "hybrid.scoring" not in state.arrays and "hybrid.inv_chol" in state.arrays
    policy: Any = policy_from_state(state)
    cands = Candidates(tuple(str(c) for c in expected["cand_ids"]), expected["cand_features"])
    contexts = expected["contexts"]
    mean, cov = _joint_law(policy, contexts, cands)
    np.testing.assert_allclose(mean, expected[f"{name}.mean"], rtol=0, atol=TOL)
    np.testing.assert_allclose(cov, expected[f"{name}.cov"], rtol=0, atol=TOL)
    np.testing.assert_allclose(policy.model.noise_posterior(), expected[f"{name}.noise"], atol=TOL)
    if name == "hybrid_linucb":
        scores = policy.select_batch(contexts, cands, np.random.default_rng(0)).scores
        np.testing.assert_allclose(scores, expected[f"{name}.scores"], rtol=0, atol=TOL)

    # it learns on, and saves in this release's layout, as a model that learnt it all now
    ids = [IDS[a] for a in expected["arms"]]
    x, r, feats = expected["x"], expected["r"], expected["feats"][expected["arms"]]
    now: Any = make_policy(name, dim_user=DU, dim_arm=DA, interactions=True, refactor_every=50)
    now.update_batch(x[:150], ids[:150], r[:150], feats[:150])
    for t in range(150, len(ids)):
        now.update(x[t], ids[t], r[t], feats[t])
    for p in (policy, now):
        for t in range(20):
            p.update(x[t] + 1.0, ids[t], 1.0 - r[t], feats[t])
    again: Any = policy_from_state(policy.to_state())
    for got in (policy, again):
        for ours, theirs in zip(
            _joint_law(got, contexts, cands), _joint_law(now, contexts, cands), strict=True
        ):
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)


def _collinear_at_the_bound(arms: tuple[str, ...], feature: float, n: int) -> tuple[Any, ...]:
    """``n`` rows with context (1e6, 1e6) and one arm feature, arms in turn."""
    x = np.tile([MAX_ABS_INPUT, MAX_ABS_INPUT], (n, 1))
    feats = np.full((n, 1), feature)
    ids = [arms[t % len(arms)] for t in range(n)]
    return x, ids, feats, np.random.default_rng(0).standard_normal(n)


def _unobserved_width(policy: Any) -> float:
    """The width of arm "a" at context (1, −1) with arm feature 0: φ = [1, −1, 0 ; 1, −1] is
    orthogonal to every row learnt, so φᵀM⁻¹φ = |φ|²/λ = 4 exactly."""
    _, proj, _ = policy.model.terms(np.array([[1.0, -1.0]]), Candidates(("a",), np.zeros((1, 1))))
    return float(np.linalg.norm(proj[0, 0]))


@pytest.mark.parametrize(
    ("arms", "feature"), [(("a",), MAX_ABS_INPUT), (("a", "b"), 1.0)], ids=["z-at-bound", "2-arms"]
)
def test_collinear_rows_at_the_bound_keep_the_unobserved_width(
    arms: tuple[str, ...], feature: float
) -> None:
    """3,000 collinear rows at 1e6: the sums A₀, A_a, B_a lose λ beside 1e15-sized entries
    and the Schur complement A₀ − Σ B_aᵀA_a⁻¹B_a cancels, so the periodic refactorisation
    put blocks of relative error up to ~1 in place of the rank-one ones (the width in the
    unobserved direction 9 % off at 3,000 rows, 29 % at 10⁴, 2·10⁷× at 3·10⁴ where exact is
    2), and a batch (recovery, rebuild) always took them or was refused. The rank-one blocks
    are kept where the dense precision's scaled condition number says the refactored ones
    would not be accurate, and a batch learns its rows in order as online."""
    x, ids, feats, r = _collinear_at_the_bound(arms, feature, 3000)
    online: Any = make_policy("hybrid_linucb", dim_user=2, dim_arm=1)
    for t in range(3000):
        online.update(x[t], ids[t], r[t], feats[t])
    assert online.model.pending_ == 0  # refactorisations were tried (and refused)
    chunked: Any = make_policy("hybrid_linucb", dim_user=2, dim_arm=1)
    for start in range(0, 3000, 1000):
        end = start + 1000
        chunked.update_batch(x[start:end], ids[start:end], r[start:end], feats[start:end])
    rebuilt: Any = make_policy("hybrid_linucb", dim_user=2, dim_arm=1)
    rebuilt.rebuild(x, ids, r, feats)
    cands = Candidates(("a", "new"), np.array([[feature], [0.0]]))
    probe = np.array([[1.0, -1.0], x[0], [MAX_ABS_INPUT, -MAX_ABS_INPUT]])
    expected = _joint_law(online, probe, cands)
    for policy in (online, chunked, rebuilt):
        assert policy.model.count_ == 3000
        assert _unobserved_width(policy) == pytest.approx(2.0, rel=1e-9)
        # the batches learnt the rows as the online model did
        for ours, theirs in zip(_joint_law(policy, probe, cands), expected, strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)


def test_well_conditioned_hybrid_still_refactors() -> None:
    """The periodic refactorisation and the batch still take the blocks from the sums where
    the dense precision is well conditioned once scaled: the blocks are exactly those of the
    formula (as before the accuracy check), and the estimate of the scaled condition number
    is the dense matrix's. (Shared features containing the context make it grow as n·|x|²/λ
    on large contexts: there the rank-one blocks are kept, and they stay accurate.)"""
    rng = np.random.default_rng(21)
    n = 300
    x = rng.standard_normal((n, DU))
    arms = [IDS[a] for a in rng.integers(0, len(IDS), size=n)]
    feats = rng.standard_normal((n, DA))
    r = rng.standard_normal(n)
    online: Any = make_policy("hybrid_linucb", dim_user=DU, dim_arm=DA, refactor_every=50)
    for t in range(n):
        online.update(x[t], arms[t], r[t], feats[t])
    batch: Any = make_policy("hybrid_linucb", dim_user=DU, dim_arm=DA)
    batch.update_batch(x, arms, r, feats)
    for policy in (online, batch):
        model = policy.model
        assert model.pending_ == 0
        inv_chol = hybrid.inverse_cholesky(model.precision_)
        scoring, ub = hybrid.scoring_block(inv_chol, model.cross_, model.xty_)
        stacked = ub.reshape(-1, model.dim_shared)
        schur_inv_chol = hybrid.inverse_cholesky(model.gram0_ - stacked.T @ stacked)
        np.testing.assert_array_equal(model.scoring_, scoring)
        np.testing.assert_array_equal(model.schur_inv_chol_, schur_inv_chol)
        condition = hybrid.block_scaled_condition(
            model.gram0_, model.precision_, model.cross_, inv_chol, ub, schur_inv_chol
        )
        dense = Dense(model.features, list(model.arm_ids), 1.0)
        phi = np.stack([dense.phi(x[t], arms[t], feats[t]) for t in range(n)])
        precision = np.eye(phi.shape[1]) + phi.T @ phi
        root = np.sqrt(np.diag(precision))
        exact = np.linalg.cond(precision / np.outer(root, root))
        assert exact / 2 < condition <= exact * (1 + 1e-9) and condition < 1e4
        assert hybrid.blocks_are_accurate(condition)
    np.testing.assert_allclose(
        _joint_law(online, x[:5], _candidates())[1],
        _joint_law(batch, x[:5], _candidates())[1],
        rtol=1e-9,
    )
    # collinear rows at the bound: not accurate
    bound: Any = make_policy("hybrid_linucb", dim_user=2, dim_arm=1, refactor_every=10**6)
    xs, ids, fs, rs = _collinear_at_the_bound(("a", "b"), 1.0, 1000)
    for t in range(1000):
        bound.update(xs[t], ids[t], rs[t], fs[t])
    assert not bound.model.refactor()
    assert bound.model.pending_ == 0
