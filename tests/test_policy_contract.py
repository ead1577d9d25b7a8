"""One contract suite, parametrized over every registered policy (and wrapped ones)."""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pytest

from bandit_core import (
    MAX_ABS_INPUT,
    POLICIES,
    Candidates,
    Policy,
    load_policy,
    make_policy,
    policy_from_state,
    save_policy,
)
from bandit_core._validation import CheckedBy, Constraint, FloatArray, Interval
from bandit_core.catalog import CATALOG
from bandit_core.head_statistics import LinearHeadPolicy
from bandit_core.policies.arm_features import candidates_for, ignores_arm_features
from bandit_core.policies.base import arm_width, fold_pending
from bandit_core.policies.decision_copy import decision_copy
from bandit_core.policies.linear import arm_state
from bandit_core.policies.position import update_batch_skipping
from bandit_core.state import state_to_parts
from tests.policy_factories import (
    DIM_ARM,
    DIM_USER,
    FACTORIES,
    UNIT_REWARDS,
    VARIANTS,
    WRAPPED,
    default_options,
    state_arrays,
)

ALL: dict[str, Callable[[], Policy]] = {**FACTORIES, **VARIANTS, **WRAPPED}
N_DRAWS = 20_000


def test_per_arm_policies_refuse_arm_features_they_do_not_use() -> None:
    cands = _candidates(np.random.default_rng(0))
    for name in ("linucb", "lints", "linucb+floor", "lints+cap"):
        with pytest.raises(ValueError, match=r"does not use arm features .* got candidates with 2"):
            ALL[name]().select(np.ones(DIM_USER), cands, np.random.default_rng(0))
    for name in ("linucb_arm_features", "lints_arm_features", "shared_lints"):
        ALL[name]().select(np.ones(DIM_USER), cands, np.random.default_rng(0))


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_a_model_that_reads_no_arm_features_refuses_them_and_candidates_for_drops_them(
    name: str,
) -> None:
    """``dim_arm`` 0: no candidate feature is read. The model refuses featured candidates
    naming why (neural and logistic models raised numpy's broadcast error), and
    ``candidates_for`` — what serving, OPE and the simulator pass — drops them."""
    options = default_options(name)
    if "dim_arm" in CATALOG[name].option_names():
        options["dim_arm"] = 0
    try:
        policy = make_policy(name, **options)
    except ValueError:  # a model of arm features needs some
        assert name.endswith("_arm_features"), name
        return
    cands = _candidates(np.random.default_rng(0))
    x, rng = np.ones(DIM_USER), np.random.default_rng(0)
    assert arm_width(policy) == 0 and ignores_arm_features(policy)
    taken = candidates_for(policy, cands)
    assert taken.ids == cands.ids and taken.dim == 0
    decision = policy.select(x, taken, rng)
    assert decision.arm_id in cands.ids and decision.propensity > 0
    if name != "uniform":
        with pytest.raises(ValueError, match=r"(uses no|does not use) arm features"):
            policy.select(x, cands, rng)


@pytest.mark.parametrize("name", sorted(ALL))
def test_propensities_that_depend_on_the_draws_come_with_their_standard_error(name: str) -> None:
    """Exact propensities are a function of the state, the context and the candidates;
    Monte-Carlo ones change with the generator and say so with ``propensity_se`` (MC
    dropout's Thompson mode reported none: "exact", core helper, stop 53)."""
    policy = _trained(name)
    cands = _candidates(np.random.default_rng(3))
    x = np.random.default_rng(4).standard_normal(DIM_USER)
    cands = candidates_for(policy, cands)
    seen = [policy.select(x, cands, np.random.default_rng(seed)) for seed in range(6)]
    varies = any(not np.array_equal(d.probabilities, seen[0].probabilities) for d in seen[1:])
    reported = [d.propensity_se is not None for d in seen]
    assert all(reported) if varies else not any(reported), (varies, reported)


def test_a_state_naming_an_arm_twice_is_refused() -> None:
    """Arm ids ["a", "a"]: the per-arm models gave arm a the second head and arm b the
    prior, and decided otherwise without an error (core helper, stop 53). Every policy
    of the suite that keeps arm ids (wrapped or not) refuses it, naming the arm."""
    checked = []
    for name in sorted(ALL):
        state = _trained(name).to_state()
        for key, value in state.arrays.items():
            if not key.endswith("arm_ids") or len(value) < 2:
                continue
            ids = np.array(value)
            ids[1] = ids[0]
            with pytest.raises(
                ValueError, match=f"'{key.rpartition('.')[2]}' names arm .* more than once"
            ):
                policy_from_state(replace(state, arrays={**state.arrays, key: ids}))
            checked.append(name)
    assert len(checked) >= 11, checked  # the per-arm and hybrid models, bare and wrapped


def test_every_registered_policy_is_in_the_suite() -> None:
    assert set(POLICIES) <= set(FACTORIES), sorted(set(POLICIES) - set(FACTORIES))


def _candidates(
    rng: np.random.Generator, ids: tuple[str, ...] = ("a", "b", "c", "new")
) -> Candidates:
    feats = rng.standard_normal((len(ids), DIM_ARM))
    feats.setflags(write=False)
    return Candidates(ids, feats)


def _trained(name: str, seed: int = 0, steps: int = 40) -> Policy:
    """A policy after a few seeded updates on arms a, b, c (arm "new" stays unseen)."""
    policy = ALL[name]()
    rng = np.random.default_rng(seed)
    base = _candidates(rng, ("a", "b", "c"))
    for _ in range(steps):
        x = rng.standard_normal(DIM_USER)
        arm = int(rng.integers(3))
        reward = float(x[0] * (arm - 1) + 0.1 * rng.standard_normal())
        if name in UNIT_REWARDS:  # a Bernoulli likelihood: the same signal, squashed
            reward = float(1.0 / (1.0 + np.exp(-reward)))
        policy.update(x, base.ids[arm], reward, base.features[arm])
    return policy


@pytest.fixture(params=sorted(ALL))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_inputs_are_not_mutated(name: str) -> None:
    policy = _trained(name)
    rng = np.random.default_rng(1)
    context = rng.standard_normal(DIM_USER)
    context.setflags(write=False)  # any in-place write raises
    cands = _candidates(rng)
    before = (context.copy(), cands.features.copy(), cands.ids)
    decision = policy.select(context, candidates_for(policy, cands), rng)
    batch_contexts = rng.standard_normal((5, DIM_USER))
    batch_contexts.setflags(write=False)
    policy.select_batch(batch_contexts, candidates_for(policy, cands), rng)
    policy.update(context, decision.arm_id, 1.0, cands.features[decision.arm])
    np.testing.assert_array_equal(context, before[0])
    np.testing.assert_array_equal(cands.features, before[1])
    assert cands.ids == before[2]


def test_same_seed_gives_same_decisions(name: str) -> None:
    runs = []
    for _ in range(2):
        policy = _trained(name, seed=5)
        rng = np.random.default_rng(11)
        cands = _candidates(np.random.default_rng(2))
        picks = []
        for _t in range(30):
            d = policy.select(rng.standard_normal(DIM_USER), candidates_for(policy, cands), rng)
            policy.update(
                rng.standard_normal(DIM_USER), d.arm_id, float(rng.random()), cands.features[d.arm]
            )
            picks.append((d.arm, d.propensity, tuple(d.probabilities), tuple(d.scores)))
        runs.append(picks)
    assert runs[0] == runs[1]


def test_state_round_trip_reproduces_decisions_bit_for_bit(name: str, tmp_path: Path) -> None:
    policy = _trained(name, seed=3)
    restored_in_memory = policy_from_state(policy.to_state())
    path = save_policy(policy, tmp_path / "state.npz")
    restored_from_disk = load_policy(path)
    # as a snapshot stores it: written in parts of 1,000 bytes, read back joined
    restored_from_parts = load_policy(b"".join(state_to_parts(policy.to_state(), 1000)))
    cands = _candidates(np.random.default_rng(4))
    contexts = np.random.default_rng(5).standard_normal((25, DIM_USER))
    outputs = []
    restored = (restored_in_memory, restored_from_disk, restored_from_parts)
    for candidate_policy in (policy, *restored):
        rng = np.random.default_rng(9)
        trace = []
        for x in contexts:
            d = candidate_policy.select(x, candidates_for(candidate_policy, cands), rng)
            candidate_policy.update(x, d.arm_id, 0.5, cands.features[d.arm])
            trace.append(np.concatenate([[d.arm, d.propensity], d.probabilities, d.scores]))
        batch = candidate_policy.select_batch(
            contexts, candidates_for(candidate_policy, cands), rng
        )
        trace.append(np.concatenate([batch.arms, batch.probabilities.ravel()]))
        outputs.append(np.concatenate(trace))
    for other in outputs[1:]:
        np.testing.assert_array_equal(outputs[0], other)


def test_the_state_of_a_folded_policy_is_read_without_changing_it(name: str) -> None:
    """After ``fold_pending`` (what the service does on the loop before a snapshot copies
    the state in another thread), ``to_state`` changes nothing the policy goes on to do:
    a twin whose state was never taken decides and learns bit for bit the same."""
    policy = _trained(name, seed=8)
    fold_pending(policy)
    twin = copy.deepcopy(policy)
    policy.to_state()
    cands = _candidates(np.random.default_rng(4))
    traces = []
    for p in (policy, twin):
        rng = np.random.default_rng(3)
        trace = []
        for x in np.random.default_rng(5).standard_normal((15, DIM_USER)):
            d = p.select(x, candidates_for(p, cands), rng)
            p.update(x, d.arm_id, 0.5, cands.features[d.arm])
            trace.append(np.concatenate([[d.arm, d.propensity], d.probabilities, d.scores]))
        traces.append(np.concatenate(trace))
    np.testing.assert_array_equal(traces[0], traces[1])


def test_propensities_are_probabilities(name: str) -> None:
    policy = _trained(name)
    rng = np.random.default_rng(6)
    for k in (1, 2, 4):
        cands = _candidates(rng, ("a", "b", "c", "new")[:k])
        d = policy.select(rng.standard_normal(DIM_USER), candidates_for(policy, cands), rng)
        assert 0.0 < d.propensity <= 1.0
        assert d.probabilities.shape == (k,) and d.scores.shape == (k,)
        assert np.all(d.probabilities >= 0.0)
        assert d.probabilities.sum() == pytest.approx(1.0, abs=1e-12)
        assert d.propensity == d.probabilities[d.arm]
        assert d.arm_id == cands.ids[d.arm]
    batch = policy.select_batch(
        rng.standard_normal((50, DIM_USER)), candidates_for(policy, _candidates(rng)), rng
    )
    np.testing.assert_allclose(batch.probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(batch.propensities > 0.0) and np.all(batch.propensities <= 1.0)
    np.testing.assert_array_equal(
        batch.propensities, batch.probabilities[np.arange(50), batch.arms]
    )


def test_empirical_choice_frequencies_match_reported_propensities(name: str) -> None:
    """Over 20,000 seeded draws, mean(1[a_t = a] − p_t(a)) is within 4 standard errors of 0.

    ``E[1[a_t = a] | state] = p_t(a)`` holds for exact propensities and, in expectation, for
    the Monte-Carlo ones; the standard error is estimated from the same differences.
    """
    policy = _trained(name, seed=8)
    rng = np.random.default_rng(12)
    context = np.random.default_rng(13).standard_normal(DIM_USER)
    cands = _candidates(np.random.default_rng(14))
    chosen = np.zeros((N_DRAWS, len(cands)))
    reported = np.zeros((N_DRAWS, len(cands)))
    for t in range(N_DRAWS):
        d = policy.select(context, candidates_for(policy, cands), rng)
        chosen[t, d.arm] = 1.0
        reported[t] = d.probabilities
    diff = chosen - reported
    se = diff.std(axis=0, ddof=1) / np.sqrt(N_DRAWS)
    assert np.all(np.abs(diff.mean(axis=0)) <= 4.0 * se + 1e-12), (
        diff.mean(axis=0),
        se,
        chosen.mean(0),
    )


def test_new_and_changing_candidates_are_scored(name: str) -> None:
    policy = _trained(name)
    rng = np.random.default_rng(21)
    for ids in (("new",), ("z", "y"), ("a", "q", "c", "r", "s")):
        cands = _candidates(rng, ids)
        d = policy.select(rng.standard_normal(DIM_USER), candidates_for(policy, cands), rng)
        assert d.arm_id in ids
        policy.update(rng.standard_normal(DIM_USER), d.arm_id, 1.0, cands.features[d.arm])


def test_select_equals_row_zero_of_select_batch(name: str) -> None:
    """``select`` is ``select_batch`` on one row: same seed, same inputs → same decision."""
    policy = _trained(name, seed=7)
    state = policy.to_state()
    cands = candidates_for(policy, _candidates(np.random.default_rng(8)))
    for seed, x in enumerate(np.random.default_rng(9).standard_normal((10, DIM_USER))):
        one = policy_from_state(state).select(x, cands, np.random.default_rng(seed))
        batch = policy_from_state(state).select_batch(x[None], cands, np.random.default_rng(seed))
        assert one.arm == int(batch.arms[0]) and one.arm_id == cands.ids[one.arm]
        assert one.propensity == batch.propensities[0]
        np.testing.assert_array_equal(one.probabilities, batch.probabilities[0])
        np.testing.assert_array_equal(one.scores, batch.scores[0])
        assert one.policy == batch.policy


# ---------------------------------------------------------------------- the catalog
@pytest.mark.parametrize("policy_name", sorted(CATALOG))
def test_catalog_entry_matches_its_class(policy_name: str) -> None:
    spec = CATALOG[policy_name]
    cls = spec.resolve()
    policy = FACTORIES[policy_name]()
    assert cls.name == policy_name and type(policy) is cls
    assert spec.arm_features == ("dim_arm" in spec.option_names())
    assert spec.trains_network == callable(getattr(policy, "retrain", None))
    assert spec.linear_head == isinstance(policy, LinearHeadPolicy)
    assert not spec.shardable or spec.linear_head


def uncovered_fields(config_class: type) -> list[str]:
    """Fields of a policy config without an entry in its constraint table (a delegated
    entry counts only when the owner's table really holds the field)."""
    table: dict[str, Constraint] = config_class.constraints()  # type: ignore[attr-defined]
    missing = []
    for f in fields(config_class):
        entry = table.get(f.name)
        if entry is None or (isinstance(entry, CheckedBy) and f.name not in entry.table):
            missing.append(f.name)
    return missing


@pytest.mark.parametrize("policy_name", sorted(CATALOG))
def test_constraint_tables_cover_every_config_field(policy_name: str) -> None:
    config_class = CATALOG[policy_name].config_class()
    if config_class is None:  # a policy without options (uniform takes dim_user only)
        assert CATALOG[policy_name].option_names() == ("dim_user",)
        return
    assert hasattr(config_class, "constraints"), f"{config_class.__name__} has no table"
    assert uncovered_fields(config_class) == []


def test_the_coverage_check_catches_a_field_without_an_entry() -> None:
    """A planted config with one field missing from its table (and one delegated to a
    table that does not hold it) is reported."""

    @dataclass(frozen=True)
    class PlantedConfig:
        dim_user: int = 1
        forgotten: float = 0.5
        misdelegated: int = 3

        @classmethod
        def constraints(cls) -> dict[str, Constraint]:
            return {
                "dim_user": Interval(int, 0, None),
                "misdelegated": CheckedBy("Elsewhere", {"other": Interval(int, 0, None)}),
            }

    assert uncovered_fields(PlantedConfig) == ["forgotten", "misdelegated"]


def test_the_overlap_options_have_a_constraint_table() -> None:
    from bandit_core.policies.overlap import OverlapConfig

    assert uncovered_fields(OverlapConfig) == []


@pytest.mark.parametrize("policy_name", sorted(CATALOG))
def test_catalog_randomized_flag_matches_the_decisions(policy_name: str) -> None:
    """A policy the catalog calls deterministic logs one-hot probabilities (propensity 1);
    a randomized one gives some decision more than one arm with positive probability."""
    policy = _trained(policy_name)
    rng = np.random.default_rng(3)
    batch = policy.select_batch(
        rng.standard_normal((30, DIM_USER)), candidates_for(policy, _candidates(rng)), rng
    )
    one_hot = bool(np.all(np.isin(batch.probabilities, (0.0, 1.0))))
    assert one_hot == (not CATALOG[policy_name].randomized)


# ------------------------------------------------------------------ the magnitude bound
def test_inputs_beyond_the_bound_are_refused_and_nothing_is_learnt(name: str) -> None:
    """A finite value past ``MAX_ABS_INPUT`` in a context, an arm's features or a reward is
    a ``ValueError`` naming the field and the bound, and the policy learns nothing."""
    policy = _trained(name)
    before = state_arrays(policy)
    rng = np.random.default_rng(6)
    cands = candidates_for(policy, _candidates(rng))
    x, feats = rng.standard_normal(DIM_USER), cands.features[0]
    past = MAX_ABS_INPUT * 1.5
    huge_x = x.copy()
    huge_x[1] = -past
    huge_feats = np.full_like(feats, past)
    reward = 1.0 if name in UNIT_REWARDS else past
    bound = r"at most 1e\+06 in magnitude"
    cases: list[tuple[str, Callable[[], object]]] = [
        ("context", lambda: policy.update(huge_x, cands.ids[0], 0.5, feats)),
        ("context", lambda: policy.select(huge_x, cands, np.random.default_rng(0))),
        ("contexts", lambda: policy.select_batch(huge_x[None, :], cands, rng)),
        ("reward", lambda: policy.update(x, cands.ids[0], reward, feats)),
    ]
    if feats.size and name != "uniform":  # uniform takes no features and reads none
        cases.append(("arm_features", lambda: policy.update(x, cands.ids[0], 0.5, huge_feats)))
        huge = np.full((len(cands.ids), feats.size), past)
        cases.append(("candidates.features", lambda: Candidates.from_any(cands.ids, huge)))
    for field_name, call in cases:
        if field_name == "reward" and name in UNIT_REWARDS:
            continue  # a Bernoulli likelihood refuses every reward outside [0, 1] already
        with pytest.raises(ValueError, match=rf"{field_name}s? must be {bound}"):
            call()
    after = state_arrays(policy)
    assert after.keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_an_empty_batch_learns_nothing_and_decides_nothing(name: str) -> None:
    """Zero rows of the right shapes (a night without feedback, an empty request list):
    nothing learnt, no decision, no error (it raised numpy's "need at least one array to
    stack" from some policies)."""
    policy = _trained(name)
    before = state_arrays(policy)
    cands = candidates_for(policy, _candidates(np.random.default_rng(9)))
    dim_arm = cands.features.shape[1]
    policy.update_batch(np.zeros((0, DIM_USER)), [], np.zeros(0), np.zeros((0, dim_arm)))
    batch = policy.select_batch(np.zeros((0, DIM_USER)), cands, np.random.default_rng(0))
    assert batch.arms.shape == (0,) and batch.propensities.shape == (0,)
    assert batch.probabilities.shape == (0, len(cands.ids))
    after = state_arrays(policy)
    assert after.keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_text_where_numbers_belong_is_refused(name: str) -> None:
    """A context or an arm's features given as text was parsed without a word (``"1e3"``
    became 1000.0, a CSV's ``"nan"`` a NaN): a ``ValueError`` naming the field, and the
    policy learns nothing."""
    policy = _trained(name)
    before = state_arrays(policy)
    rng = np.random.default_rng(8)
    cands = candidates_for(policy, _candidates(rng))
    x, feats = rng.standard_normal(DIM_USER), cands.features[0]
    text = [f"{v:.3f}" for v in x]
    cases: list[Callable[[], object]] = [
        lambda: policy.update(text, cands.ids[0], 0.5, feats),
        lambda: policy.select(text, cands, np.random.default_rng(0)),
        lambda: policy.select_batch([text], cands, rng),
    ]
    if feats.size:
        cases.append(
            lambda: Candidates.from_any(cands.ids, [[str(v) for v in f] for f in cands.features])
        )
    for call in cases:
        with pytest.raises(ValueError, match=r"must hold numbers, not text; got \["):
            call()
    after = state_arrays(policy)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_a_batch_learns_every_row_but_those_refused(name: str) -> None:
    """:func:`update_batch_skipping` (how stored rewards are replayed into a head) skips
    exactly the rows the policy refuses — here two rows past the bound — and learns the
    others in order: the state equals learning them with one ``update_batch``."""
    rng = np.random.default_rng(8)
    cands = candidates_for(_trained(name), _candidates(rng))
    n = 12
    contexts = rng.standard_normal((n, DIM_USER))
    arms = [cands.ids[i] for i in rng.integers(0, len(cands.ids), n)]
    feats = np.stack([cands.features[cands.ids.index(a)] for a in arms])
    rewards = rng.random(n)
    bad = [2, 7]
    contexts[bad, 0] = 2 * MAX_ABS_INPUT
    skipping, reference = _trained(name), _trained(name)
    refused = update_batch_skipping(skipping, contexts, arms, rewards, feats, None)
    assert refused == bad
    good = [i for i in range(n) if i not in bad]
    reference.update_batch(contexts[good], [arms[i] for i in good], rewards[good], feats[good])
    after, expected = state_arrays(skipping), state_arrays(reference)
    assert after.keys() == expected.keys()
    for key, value in expected.items():
        if np.issubdtype(value.dtype, np.floating):
            np.testing.assert_allclose(after[key], value, rtol=1e-9, atol=1e-9, err_msg=key)
        elif not key.endswith("pending"):  # rank-one bookkeeping a batch resets
            np.testing.assert_array_equal(after[key], value, err_msg=key)


def _retrains_a_network(policy: Policy) -> bool:
    """Whether ``policy``, or the policy inside its wrappers, retrains a network."""
    inner: object = policy
    while inner is not None:
        if hasattr(inner, "since_retrain_"):
            return True
        inner = getattr(inner, "inner", None)
    return False


def test_a_refused_batch_learns_nothing_and_registers_no_arm(name: str) -> None:
    """Rows at the bound along one direction (5,000 of them) make some models' precision
    numerically singular: the policy either learns them (its state stays finite) or refuses
    the whole call with a ``ValueError`` and stays exactly as it was. Before, per-arm
    models kept the new arm's head from a refused batch (the arm then counted as known),
    and the logistic model learnt rows one at a time and raised at the refactorisation
    after them (every later update raised too, and still learnt)."""
    policy = ALL[name]()  # untrained: the prior alone is weakest against such rows
    before = state_arrays(policy)
    rng = np.random.default_rng(12)
    cands = candidates_for(policy, _candidates(rng))
    # a policy that trains a network retrains it (and rebuilds its head from every
    # stored row) every ``retrain_every`` rows of the batch: 5,000 rows cost it O(n²)
    # rank-one steps where its head learns them in order (38 s); 500 meet the same refusal
    n = 500 if _retrains_a_network(policy) else 5000
    contexts = np.tile(MAX_ABS_INPUT * np.array([1.0, -1.0, 1.0]), (n, 1))
    contexts[::2, 2] -= 1.0
    feats = np.tile(np.full(cands.dim, MAX_ABS_INPUT), (n, 1))
    try:
        policy.update_batch(contexts, ["brand-new"] * n, np.ones(n), feats)
    except ValueError:
        after = state_arrays(policy)
        assert after.keys() == before.keys()
        for key, value in before.items():
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        arms = arm_state(policy)
        assert arms is None or not arms.knows("brand-new")
    else:
        for key, value in state_arrays(policy).items():
            if np.issubdtype(value.dtype, np.number):
                assert np.isfinite(value).all(), key


def test_a_tampered_state_is_refused_naming_what_is_wrong(name: str) -> None:
    """A state holding NaN, ±inf or complex numbers in any array, or missing an array,
    is a ``ValueError`` from ``policy_from_state`` (naming the array, or saying the
    state is malformed). Before, NaN and complex arrays were restored as they were (a
    ``shared_linucb`` with NaN weights decided with NaN propensities) and a missing
    array was a ``KeyError``."""

    state = _trained(name).to_state()
    floats = [k for k, v in state.arrays.items() if np.asarray(v).dtype.kind == "f" and np.size(v)]
    if not floats:
        assert name == "uniform"  # learns nothing
        return
    for key in floats:
        for bad in (np.nan, np.inf):
            arrays = dict(state.arrays)
            arrays[key] = np.array(arrays[key], dtype=np.float64, copy=True)
            arrays[key].flat[0] = bad
            with pytest.raises(
                ValueError, match=rf"state array '{re.escape(key)}' holds non-finite"
            ):
                policy_from_state(replace(state, arrays=arrays))
    key = floats[0]
    arrays = {**state.arrays, key: np.asarray(state.arrays[key]) * (1 + 0j)}
    with pytest.raises(ValueError, match="must be real numbers or strings"):
        policy_from_state(replace(state, arrays=arrays))
    spec = CATALOG.get(state.policy)
    added = getattr(spec.resolve() if spec else None, "added_state_arrays", frozenset())
    for key in state.arrays:
        missing = {k: v for k, v in state.arrays.items() if k != key}
        if key in added:  # what a state saved by an older release lacks: it loads
            policy_from_state(replace(state, arrays=missing))
            continue
        with pytest.raises(ValueError):
            policy_from_state(replace(state, arrays=missing))


def test_arm_ids_are_strings_or_integers_without_nul(name: str) -> None:
    """An arm id is a string or an integer (its decimal text); a NUL in it, or an id of
    another type, is a ``ValueError`` naming the field, and nothing is learnt. Before,
    ``"a\\x00"`` was learnt as its own arm and restored from the state as ``"a"`` (numpy
    strings drop trailing NULs: another arm's head, or a hybrid state that no longer
    loaded), and None, floats or dicts were learnt under their ``str``."""
    policy = _trained(name)
    before = state_arrays(policy)
    rng = np.random.default_rng(14)
    cands = candidates_for(policy, _candidates(rng))
    x, feats = rng.standard_normal(DIM_USER), cands.features[0]
    for bad in ("a\x00", None, 2.5, True):
        with pytest.raises(ValueError, match=r"arm_ids? must"):
            policy.update(x, bad, 1.0, feats)
        with pytest.raises(ValueError, match="arm_ids must"):
            policy.update_batch(x[None], [bad], [1.0], feats[None])
    with pytest.raises(ValueError, match=r"candidates\.ids must not contain a NUL"):
        Candidates.from_any(["a", "b\x00"], np.zeros((2, cands.dim)))
    after = state_arrays(policy)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    policy.update(x, np.int64(7), 1.0, feats)  # an integer id is its decimal text
    arms = arm_state(policy)
    assert arms is None or arms.knows("7")


def test_arm_state_is_what_grows_with_the_arms(name: str) -> None:
    """``arm_state`` finds the per-arm state of a policy (what ``max_arms`` bounds in the
    service): it counts a new arm once learnt. A policy without one grows no numeric
    state array more for a new arm than for a known one (a neural replay buffer grows
    with the rows, whatever their arm)."""
    policy, twin = _trained(name), _trained(name)
    arms = arm_state(policy)
    count = None if arms is None else arms.n_arms
    rng = np.random.default_rng(11)
    x = rng.standard_normal(DIM_USER)
    cands = candidates_for(policy, _candidates(rng, ("brand-new", "a")))
    reward = 1.0 if name in UNIT_REWARDS else 0.5
    policy.update(x, "brand-new", reward, cands.features[0])
    twin.update(x, "a", reward, cands.features[1])
    if arms is not None:
        assert count is not None and arms.n_arms == count + 1 and arms.knows("brand-new")
        assert not arms.knows("never-seen")
    else:
        after, known = state_arrays(policy), state_arrays(twin)
        for key, value in known.items():
            if np.issubdtype(value.dtype, np.number):
                assert after[key].shape == value.shape, key


def _decisions(policy: Policy, cands: Candidates, seed: int) -> tuple[list[int], FloatArray]:
    """The arms chosen by a select and a select_batch, and their probabilities and scores."""
    rng = np.random.default_rng(seed)
    d = policy.select(rng.standard_normal(DIM_USER), cands, rng)
    batch = policy.select_batch(rng.standard_normal((3, DIM_USER)), cands, rng)
    numbers = [d.probabilities, d.scores, batch.probabilities, batch.scores]
    return [d.arm, *batch.arms], np.concatenate([np.ravel(v) for v in numbers])


def test_a_decision_copy_decides_as_the_policy_and_not_with_every_arm(name: str) -> None:
    """``decision_copy`` (what the service's decision thread decides on) decides among
    its candidates as a deep copy of the policy does, draw for draw, and holds nothing
    of the arms they do not name: its size is that of a twin that learnt the same rows
    on the arms they name."""
    policy, twin = _trained(name), _trained(name)
    rng = np.random.default_rng(13)
    others = _candidates(rng, tuple(f"other-{i}" for i in range(60)))
    for i in range(60):
        x = rng.standard_normal(DIM_USER)
        reward = 1.0 if name in UNIT_REWARDS else float(rng.standard_normal())
        policy.update(x, others.ids[i], reward, others.features[i])
        twin.update(x, "other-7" if i == 7 else "a", reward, others.features[i])
    cands = candidates_for(policy, _candidates(rng, ("c", "new", "a", "other-7")))
    for seed in range(4):
        arms, numbers = _decisions(copy.deepcopy(policy), cands, seed)
        copied_arms, copied_numbers = _decisions(decision_copy(policy, cands.ids), cands, seed)
        assert copied_arms == arms
        # fewer rows can take another BLAS route (the hybrid model's): round-off only
        np.testing.assert_allclose(copied_numbers, numbers, rtol=1e-12, atol=1e-14)
    size = len(pickle.dumps(decision_copy(policy, cands.ids)))
    assert size <= len(pickle.dumps(decision_copy(twin, cands.ids))) + 600, name


def test_inputs_at_the_bound_leave_a_finite_state(name: str) -> None:
    """Every input at ``±MAX_ABS_INPUT``: the state stays finite and decisions stay
    probabilities (the bound sits below where any policy's arithmetic breaks). A head
    with an outlier check refuses such rows beside the trained ones instead, whole."""
    policy = _trained(name)
    rng = np.random.default_rng(7)
    cands = candidates_for(policy, _candidates(rng))
    for t in range(25):
        sign = rng.choice([-1.0, 1.0], DIM_USER + cands.dim)
        x = MAX_ABS_INPUT * sign[:DIM_USER]
        feats = MAX_ABS_INPUT * sign[DIM_USER:]
        reward = float(t % 2) if name in UNIT_REWARDS else MAX_ABS_INPUT * (-1.0) ** t
        before = state_arrays(policy)
        try:
            policy.update(x, cands.ids[t % len(cands.ids)], reward, feats)
        except ValueError as exc:
            assert "outlier_ratio" in str(exc), exc
            for key, value in before.items():
                np.testing.assert_array_equal(state_arrays(policy)[key], value, err_msg=key)
    for key, value in state_arrays(policy).items():
        if np.issubdtype(value.dtype, np.number):
            assert np.isfinite(value).all(), key
    big = Candidates(cands.ids, np.full((len(cands.ids), cands.dim), MAX_ABS_INPUT))
    for context in (np.full(DIM_USER, MAX_ABS_INPUT), rng.standard_normal(DIM_USER)):
        decision = policy.select(context, big, rng)
        assert np.isfinite(decision.probabilities).all()
        assert abs(float(decision.probabilities.sum()) - 1.0) < 1e-9
        assert 0.0 < decision.propensity <= 1.0


def test_an_integer_beyond_every_float_is_a_value_error_naming_the_field() -> None:
    policy = ALL["shared_linucb"]()
    huge = 10**400
    with pytest.raises(ValueError, match="context must be a 1-D array of numbers"):
        policy.update([huge] + [0.0] * (DIM_USER - 1), "a", 1.0, [0.0] * DIM_ARM)
    with pytest.raises(ValueError, match="contexts must be a 2-D array of numbers"):
        policy.select_batch(
            [[huge] * DIM_USER],
            Candidates.from_any(["a"], [[0.0] * DIM_ARM]),
            np.random.default_rng(0),
        )
    with pytest.raises(ValueError, match="reward must be a finite number"):
        policy.update([0.0] * DIM_USER, "a", huge, [0.0] * DIM_ARM)
