"""Ranked slates: per-position propensities (conditional and marginal), exact and Monte
Carlo marginals, position features, and position-wise off-policy evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from bandit_core import Candidates, ExplorationFloor, ExposureCap, Policy, make_policy
from bandit_core.policies.arm_features import candidates_for
from bandit_core.slates import select_slate, slate_action_dist, slate_marginals, with_position
from tests.policy_factories import DIM_ARM, DIM_USER, FACTORIES, WRAPPED
from validation.ope.estimators import ips
from validation.ope.inputs import check_feedback

N_DRAWS = 20_000
IDS = ("a", "b", "c", "d", "e")
K_SLATE = 3


def _trained(name: str, seed: int = 0, steps: int = 60) -> Policy:
    policy: Policy = {**FACTORIES, **WRAPPED}[name]()
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((len(IDS), DIM_ARM))
    for _ in range(steps):
        x = rng.standard_normal(DIM_USER)
        arm = int(rng.integers(len(IDS)))
        reward = float(x[0] * (arm - 2) + 0.1 * rng.standard_normal())
        policy.update(x, IDS[arm], reward, feats[arm])
    return policy


def _candidates(seed: int = 14) -> Candidates:
    return Candidates(IDS, np.random.default_rng(seed).standard_normal((len(IDS), DIM_ARM)))


def _draw_slates(
    policy: Policy, context: np.ndarray, cands: Candidates, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``N_DRAWS`` slates: indicators (N, k, K) of the shown item per position, and the
    policy's reported law (N, k, K) at every position given the positions before it."""
    rng = np.random.default_rng(seed)
    shown = np.zeros((N_DRAWS, K_SLATE, len(cands)))
    reported = np.zeros_like(shown)
    for t in range(N_DRAWS):
        slate = select_slate(policy, context, cands, K_SLATE, rng)
        shown[t, np.arange(K_SLATE), slate.ranking] = 1.0
        reported[t] = slate.step_probabilities
    return shown, reported


@pytest.mark.parametrize(
    ("name", "exact"), [("epsilon_greedy", True), ("linucb+floor", True), ("lints", True)]
)
def test_position_propensities_match_empirical_frequencies(name: str, exact: bool) -> None:
    """20,000 seeded slates of 3 out of 5 items.

    * conditional: mean(1[a_j = i] − p_j(i | a_<j)) is within 4 standard errors of 0 for
      every position j and item i (exact laws: lints's
      per-arm propensities are quadratures);
    * marginal (exact per-step laws): the frequency of i at j is within 4 binomial
      standard errors of the exact P(i at position j) of :func:`slate_marginals`.
    """
    policy = _trained(name, seed=8)
    context = np.random.default_rng(13).standard_normal(DIM_USER)
    cands = _candidates()
    shown, reported = _draw_slates(policy, context, cands, seed=12)
    diff = shown - reported
    # a tiny probability on an item never shown has no sample spread: bound it binomially
    p_bar = reported.mean(axis=0)
    se = np.maximum(diff.std(axis=0, ddof=1), np.sqrt(p_bar * (1.0 - p_bar))) / np.sqrt(N_DRAWS)
    gap = np.abs(diff.mean(axis=0))
    assert np.all(gap <= 4.0 * se + 1e-12), (gap, se)
    np.testing.assert_allclose(reported.sum(axis=2), 1.0, atol=1e-12)

    marginals = slate_marginals(policy, context, cands, K_SLATE, np.random.default_rng(3))
    np.testing.assert_allclose(marginals.sum(axis=0), 1.0, atol=1e-12)
    if exact:
        freq = shown.mean(axis=0).T  # (K, k)
        se_m = np.sqrt(marginals * (1.0 - marginals) / N_DRAWS)
        assert np.all(np.abs(freq - marginals) <= 4.0 * se_m + 1e-12), (freq, marginals)
        # position 0 is the policy's single-decision law
        first = policy.select_batch(
            context[None], candidates_for(policy, cands), np.random.default_rng(0)
        )
        np.testing.assert_allclose(marginals[:, 0], first.probabilities[0], atol=1e-15)

    # the logged propensity of each shown item is the reported law at its item
    slate = select_slate(policy, context, cands, K_SLATE, np.random.default_rng(1))
    np.testing.assert_array_equal(
        slate.propensities, slate.step_probabilities[np.arange(K_SLATE), slate.ranking]
    )


def test_marginals_of_reference_policies_have_closed_forms() -> None:
    cands = _candidates()
    uniform = make_policy("uniform", dim_user=DIM_USER)
    m = slate_marginals(uniform, np.zeros(DIM_USER), cands, 4, np.random.default_rng(0))
    np.testing.assert_allclose(m, np.full((5, 4), 0.2), atol=1e-15)
    # a greedy policy without ties puts the j-th best item at position j with certainty
    greedy = make_policy("linucb", dim_user=DIM_USER, alpha=0.0)
    rng = np.random.default_rng(2)
    for _ in range(40):
        greedy.update(rng.standard_normal(DIM_USER), IDS[int(rng.integers(5))], rng.random())
    x = np.random.default_rng(4).standard_normal(DIM_USER)
    scores = greedy.select(x, candidates_for(greedy, cands), np.random.default_rng(0)).scores
    m = slate_marginals(greedy, x, cands, 3, np.random.default_rng(0))
    expected = np.zeros((5, 3))
    expected[np.argsort(-scores)[:3], np.arange(3)] = 1.0
    np.testing.assert_array_equal(m, expected)


def test_monte_carlo_marginals_agree_with_the_exact_programme() -> None:
    """With max_states = 1 every position after the first is estimated from 4,000
    prefixes; the Rao-Blackwellised estimate has variance below the binomial bound
    p(1 − p)/n, so 4·√(0.25/n) bounds its error at 4 standard errors."""
    policy = _trained("epsilon_greedy", seed=8)
    context = np.random.default_rng(13).standard_normal(DIM_USER)
    cands = _candidates()
    exact = slate_marginals(policy, context, cands, K_SLATE, np.random.default_rng(3))
    mc = slate_marginals(
        policy, context, cands, K_SLATE, np.random.default_rng(4), n_draws=4000, max_states=1
    )
    assert not np.array_equal(exact, mc)  # the Monte-Carlo path did run
    np.testing.assert_allclose(mc.sum(axis=0), 1.0, atol=1e-12)
    assert np.max(np.abs(mc - exact)) <= 4.0 * np.sqrt(0.25 / 4000)


def test_slate_records_marginals_when_asked_and_is_reproducible() -> None:
    policy = _trained("linucb+floor", seed=1)
    context = np.random.default_rng(2).standard_normal(DIM_USER)
    runs = [
        select_slate(
            policy, context, _candidates(), 3, np.random.default_rng(9), marginal_draws=500
        )
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].ranking, runs[1].ranking)
    np.testing.assert_array_equal(runs[0].marginals, runs[1].marginals)
    slate = runs[0]
    assert slate.marginals is not None and slate.position_propensities is not None
    assert len(set(slate.ranking.tolist())) == 3
    assert slate.ids == tuple(IDS[i] for i in slate.ranking)
    assert slate.probability == pytest.approx(float(np.prod(slate.propensities)))
    assert np.all(slate.position_propensities > 0.0)
    assert [d.arm for d in slate.decisions] == slate.ranking.tolist()


def test_bad_slate_arguments_name_the_field() -> None:
    policy = make_policy("uniform", dim_user=DIM_USER)
    with pytest.raises(ValueError, match="'k'"):
        select_slate(policy, np.zeros(DIM_USER), _candidates(), 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="position_slots"):
        select_slate(
            policy, np.zeros(DIM_USER), _candidates(), 3, np.random.default_rng(0), position_slots=2
        )
    with pytest.raises(ValueError, match="position"):
        with_position(np.zeros((2, 3)), 3, 3)
    with pytest.raises(ValueError, match="marginal_draws"):
        select_slate(
            policy,
            np.zeros(DIM_USER),
            _candidates(),
            2,
            np.random.default_rng(0),
            marginal_draws=-1,
        )


def test_position_features_append_a_one_hot() -> None:
    feats = np.arange(6.0).reshape(2, 3)
    out = with_position(feats, 1, 4)
    np.testing.assert_array_equal(out, [[0, 1, 2, 0, 1, 0, 0], [3, 4, 5, 0, 1, 0, 0]])
    np.testing.assert_array_equal(with_position(np.ones(2), 0, 2), [1, 1, 1, 0])


def _position_biased_log(rng: np.random.Generator, n: int) -> list[tuple[list[int], list[float]]]:
    """Slates of 3 out of 4 items: 80% the logger's fixed order (worst item first), 20%
    uniformly shuffled; a click at position j with probability examine[j] · attract[i]."""
    attract = np.array([0.6, 0.5, 0.45, 0.4])
    examine = np.array([1.0, 0.3, 0.1])
    log = []
    for _ in range(n):
        order = [3, 2, 1] if rng.random() < 0.8 else list(rng.permutation(4)[:3])
        clicks = [float(rng.random() < examine[j] * attract[i]) for j, i in enumerate(order)]
        log.append((order, clicks))
    return log


def test_position_bias_term_recovers_the_item_order_a_position_blind_model_gets_wrong() -> None:
    """A position-based click model (examination × attraction) logged by a ranker that puts
    the worst item first: a shared model without position features ranks the always-on-top
    item best; with the position one-hot (``position_slots``) it learns a decreasing
    position bias and orders the items by attraction."""
    item_feats = np.eye(4)
    ids = tuple(f"i{i}" for i in range(4))
    blind = make_policy("shared_linucb", dim_user=1, dim_arm=4, alpha=0.0)
    aware = make_policy("shared_linucb", dim_user=1, dim_arm=4 + 3, alpha=0.0)
    x = np.ones(1)
    rows = [
        (ids[item], click, item_feats[item], with_position(item_feats[item], j, 3))
        for order, clicks in _position_biased_log(np.random.default_rng(0), 6000)
        for j, (item, click) in enumerate(zip(order, clicks, strict=True))
    ]
    arms, rewards, plain, positioned = zip(*rows, strict=True)
    contexts = np.ones((len(rows), 1))
    blind.update_batch(contexts, list(arms), np.array(rewards), np.array(plain))
    aware.update_batch(contexts, list(arms), np.array(rewards), np.array(positioned))
    cands = Candidates(ids, item_feats)
    rng = np.random.default_rng(0)
    blind_scores = blind.select(x, cands, rng).scores
    aware_scores = aware.select(x, Candidates(ids, with_position(item_feats, 0, 3)), rng).scores
    assert int(np.argmax(blind_scores)) == 3  # fooled by the logger's order
    assert np.argsort(-aware_scores).tolist() == [0, 1, 2, 3]
    theta = aware.head.theta_[0]
    position_bias = theta[-3:]
    assert position_bias[0] > position_bias[1] > position_bias[2]


def test_position_wise_ips_with_marginal_propensities_is_unbiased() -> None:
    """Log 3-item slates with an ε-greedy slate policy, logging each shown item's marginal
    propensity at its slot; position-wise IPS (the OPE ``position`` / ``len_list``
    contract) with the evaluation policy's marginals recovers its true per-slot value
    within 4 standard errors (computed over slates, which hold correlated rows)."""
    rng = np.random.default_rng(31)
    logger = ExplorationFloor(_trained("epsilon_greedy", seed=5), p_min=0.1)
    target = _trained("linucb+floor", seed=6)
    cands = _candidates()
    contexts = rng.standard_normal((4, DIM_USER))
    mean_reward = rng.random((4, len(IDS), K_SLATE)) * np.array([1.0, 0.6, 0.3])  # slot decay
    log_dist = slate_action_dist(logger, contexts, cands, K_SLATE, rng)
    eval_dist = slate_action_dist(target, contexts, cands, K_SLATE, rng)
    truth = float(np.mean([(eval_dist[c] * mean_reward[c]).sum(axis=0) for c in range(4)]))
    n_slates = 6000
    ctx = rng.integers(0, 4, size=n_slates)
    rows_ctx, actions, positions, rewards, pscore = [], [], [], [], []
    for c in ctx:
        slate = select_slate(logger, contexts[c], cands, K_SLATE, rng)
        for j, item in enumerate(slate.ranking):
            rows_ctx.append(c)
            actions.append(item)
            positions.append(j)
            rewards.append(float(rng.random() < mean_reward[c, item, j]))
            pscore.append(log_dist[c, item, j])
    rows_ctx_a = np.array(rows_ctx)
    fb = check_feedback(rewards, actions, pscore, eval_dist[rows_ctx_a], position=positions)
    terms = ips(fb)
    per_slate = terms.num.reshape(n_slates, K_SLATE).mean(axis=1)
    se = per_slate.std(ddof=1) / np.sqrt(n_slates)
    assert abs(per_slate.mean() - truth) <= 4.0 * se, (per_slate.mean(), truth, se)
    # the conditional propensities would not do: position 1's are not the marginals
    assert not np.allclose(log_dist[:, :, 1], log_dist[:, :, 0])


def _cap(policy: object) -> ExposureCap:
    while not isinstance(policy, ExposureCap):
        policy = policy.__dict__["inner"]
    return policy


@pytest.mark.parametrize("options", [{}, {"floor": 0.05}])
def test_an_exposure_capped_slate_logs_the_position_probabilities_it_plays(
    options: dict[str, float],
) -> None:
    """The cap recorded each position's item before the next position and the marginals
    were decided: the items just shown read as capped, and the logged position
    propensities were 0 (or the floor) for items shown a quarter of the time (audit,
    stop 55). The slate is decided on the cap as it was, then all k items recorded."""
    import copy

    base = make_policy(
        "uniform",
        dim_user=3,
        exposure_cap=0.35,
        exposure_window=100,
        exposure_min_decisions=0,
        **options,
    )
    cap = _cap(base)
    for arm in ("a0", "a0", "a1", "a1", "a2", "a2"):  # a3 is the only one at its cap
        cap.record(arm)
    cands = Candidates.from_any(["a0", "a1", "a2", "a3"])
    rng = np.random.default_rng(0)
    shown = np.zeros((4, 2))
    logged: list[np.ndarray] = []
    n = 600
    for _ in range(n):
        policy = copy.deepcopy(base)
        slate = select_slate(policy, np.zeros(3), cands, 2, rng, marginal_draws=200)
        shown[slate.ranking, [0, 1]] += 1
        assert slate.marginals is not None
        logged.append(slate.marginals)
        assert sum(_cap(policy)._counts.values()) == 8  # the six before, the slate's two
    marginals = np.mean(logged, axis=0)
    se = np.sqrt(marginals * (1 - marginals) / n)
    assert np.all(np.abs(shown / n - marginals) < 4 * se + 1e-12), (shown / n, marginals)
    assert np.all(np.asarray(logged)[:, :3] > 0)  # capped items a0..a2 still shown
