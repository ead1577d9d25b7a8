"""The promotion gate rule."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bandit_core import Candidates, make_policy, save_policy
from bandit_core.support import MAX_UNSUPPORTED, MIN_ESS, SUPPORT_THRESHOLD, TOLERANCE
from training.evaluate import evaluate
from validation.gate import GateRule, decide, unsupported_mass
from validation.ope import Estimate, OPEReport


def report(
    policy: str, value: float, low: float, high: float, ess: float = 500.0, fingerprint: str = "w1"
) -> OPEReport:
    est = Estimate("dr", value, low, high, 0.95, 1000, ess, 3.0, 1000, {})
    ips = Estimate("ips", value, low - 0.01, high + 0.01, 0.95, 1000, ess, 3.0, 1000, {})
    return OPEReport(policy, 1000, fingerprint, {"dr": est, "ips": ips})


def test_promotes_when_the_lower_bound_clears_production() -> None:
    decision = decide(report("cand", 0.30, 0.26, 0.34), report("prod", 0.25, 0.24, 0.26))
    assert decision.promote
    assert all(c.passed for c in decision.checks)
    assert "lower bound of the candidate 0.26 ≥ production estimate 0.25" in decision.reasons[0]


def test_rejects_when_the_lower_bound_is_below_production() -> None:
    decision = decide(report("cand", 0.27, 0.24, 0.30), report("prod", 0.25, 0.24, 0.26))
    assert not decision.promote
    assert decision.reasons[0].startswith(
        "dr 95% lower bound of the candidate 0.24 < production estimate 0.25"
    )
    assert decision.to_tags()["gate.decision"] == "reject"


def test_tolerance_lowers_the_bar() -> None:
    cand, prod = report("cand", 0.27, 0.24, 0.30), report("prod", 0.25, 0.24, 0.26)
    assert decide(cand, prod, GateRule(tolerance=0.05)).promote  # bar 0.2375
    assert not decide(cand, prod, GateRule(tolerance=0.03)).promote  # bar 0.2425


def test_tolerance_is_relative_to_the_magnitude_for_negative_values() -> None:
    # production −1.0 with 10% tolerance: bar −1.1 (not −0.9)
    cand, prod = report("cand", -1.0, -1.05, -0.95), report("prod", -1.0, -1.05, -0.95)
    decision = decide(cand, prod, GateRule(tolerance=0.1))
    assert decision.checks[0].threshold == pytest.approx(-1.1)
    assert decision.promote


def test_rejects_when_the_effective_sample_size_is_too_small() -> None:
    decision = decide(report("cand", 0.4, 0.35, 0.45, ess=40.0), report("prod", 0.25, 0.24, 0.26))
    assert not decision.promote
    failing = [c for c in decision.checks if not c.passed]
    assert [c.name for c in failing] == ["effective_sample_size"]
    assert "effective sample size of the candidate 40.0 < minimum 50" in decision.reasons[0]


def test_the_default_rule_is_the_retrain_settings_rule() -> None:
    """One set of defaults (``bandit_core.support``): the library's rule, the settings'
    and a run spec's agree."""
    from training.settings import PipelineSettings

    assert GateRule() == PipelineSettings().gate_rule()


def test_configurable_estimator() -> None:
    cand, prod = report("cand", 0.27, 0.255, 0.30), report("prod", 0.25, 0.24, 0.26)
    assert decide(cand, prod).promote
    assert not decide(cand, prod, GateRule(estimator="ips")).promote  # ips lower bound 0.245


def test_reports_from_different_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="same held-out window; data fingerprints differ"):
        decide(
            report("cand", 0.3, 0.2, 0.4, fingerprint="a"),
            report("prod", 0.2, 0.1, 0.3, fingerprint="b"),
        )


def test_missing_estimator_is_reported() -> None:
    with pytest.raises(KeyError, match="no 'snips' estimate"):
        decide(
            report("cand", 0.3, 0.2, 0.4),
            report("prod", 0.2, 0.1, 0.3),
            GateRule(estimator="snips"),
        )


def test_decision_serialises() -> None:
    d = decide(report("cand", 0.30, 0.26, 0.34), report("prod", 0.25, 0.24, 0.26)).to_dict()
    assert d["promote"] is True and d["candidate"] == "cand" and d["production"] == "prod"
    assert d["rule"] == {
        "estimator": "dr",
        "tolerance": TOLERANCE,
        "min_ess": MIN_ESS,
        "support_threshold": SUPPORT_THRESHOLD,
        "max_unsupported": MAX_UNSUPPORTED,
        "comparisons": 1,
    }
    assert [c["name"] for c in d["checks"]] == [
        "lower_bound",
        "effective_sample_size",
        "production_estimate",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"estimator": "best"}, "'estimator' parameter of GateRule must be one of"),
        (
            {"tolerance": 1.0},
            r"'tolerance' parameter of GateRule must be a float in the range \[0, 1\)",
        ),
        (
            {"max_unsupported": 1.5},
            r"'max_unsupported' parameter of GateRule must be a float in the range \[0, 1\]",
        ),
        (
            {"min_ess": -1.0},
            r"'min_ess' parameter of GateRule must be a float in the range \[0, inf\)",
        ),
    ],
)
def test_bad_rules_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GateRule(**kwargs)


def test_unsupported_mass_is_the_candidate_mass_on_rarely_logged_actions() -> None:
    pi = np.array([[0.0, 0.1, 0.9], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]])
    mu = np.array([[0.5, 0.5, 0.0], [0.5, 0.499, 0.001], [np.nan, np.nan, np.nan]])
    # row 0: 0.9 on an action never logged; row 1: 0.0; row 2: not logged (left out)
    assert unsupported_mass(pi, mu, 0.01) == pytest.approx(0.45)
    assert np.isnan(unsupported_mass(pi[2:], mu[2:], 0.01))
    with pytest.raises(ValueError, match="same shape"):
        unsupported_mass(pi, mu[:, :2], 0.01)


@pytest.mark.parametrize("k", [3, 100, 101, 1000])
def test_uniform_logging_supports_any_number_of_candidates(k: int) -> None:
    """Uniform logging over K candidates gives each 1 / K: full support however large K
    (the threshold scales down to half the uniform share in rounds of many candidates).
    Before, 0.01 was absolute: from 101 candidates on, every action counted as
    unsupported and the gate refused even a copy of the logging policy."""
    rng = np.random.default_rng(k)
    mu = np.full((50, k), 1.0 / k)
    pi = rng.dirichlet(np.ones(k), size=50)
    assert unsupported_mass(pi, mu, 0.01) == 0.0
    # an action logged below both the threshold and half its round's uniform share is not
    deterministic = np.zeros((50, k))
    deterministic[:, 0] = 1.0
    mu[:, 0] = 0.4 * min(1.0 / k, 0.01)
    assert unsupported_mass(deterministic, mu, 0.01) == 1.0
    mu[:, 0] = 0.6 / k  # above half its round's uniform share: supported at any K
    assert unsupported_mass(deterministic, mu, 0.01) == 0.0


def test_the_gate_refuses_a_candidate_the_logs_do_not_support_and_says_why() -> None:
    good = (report("cand", 0.30, 0.26, 0.34), report("prod", 0.25, 0.24, 0.26))
    assert decide(*good, unsupported=0.05).promote
    refused = decide(*good, GateRule(max_unsupported=0.2), unsupported=0.6)
    assert not refused.promote
    assert refused.reasons[0].startswith("support: the candidate puts 60.0% of its probability")
    tags = refused.to_tags()
    assert tags["gate.unsupported_mass"] == "0.6" and tags["gate.support_threshold"] == "0.01"
    assert "gate.unsupported_mass" not in decide(*good).to_tags()  # not checked: no tag


def test_a_candidate_whose_actions_the_logs_do_not_cover_is_refused(tmp_path: Path) -> None:
    """Logs of a policy that played arms c and d with propensity 0.0005; a candidate that
    learnt d is best: its DR bound clears production, the support check refuses it."""
    rng = np.random.default_rng(0)
    ids, logging = ["a", "b", "c", "d"], [0.4995, 0.4995, 0.0005, 0.0005]
    rows = []
    for t in range(2000):
        arm = int(rng.choice(4, p=logging))
        rows.append(
            {
                "event_id": f"e{t}",
                "context": [1.0, float(rng.standard_normal())],
                "candidate_ids": ids,
                "candidate_features": [[0.0]] * 4,
                "chosen": arm,
                "reward": float(arm == 3) + 0.1 * float(rng.standard_normal()),
                "propensity": logging[arm],
                "probabilities": logging,
                "model_version": "1",
            }
        )
    pd.DataFrame(rows).to_parquet(tmp_path / "replay.parquet")
    candidate = make_policy("linucb", dim_user=2, floor=0.01)
    for _ in range(50):
        for arm in range(4):
            candidate.update(np.array([1.0, 0.0]), ids[arm], float(arm == 3))
    state = save_policy(candidate, tmp_path / "candidate.npz")
    result = evaluate(
        state,
        None,
        tmp_path / "replay.parquet",
        rule=GateRule(min_ess=0.0, tolerance=0.5),
        n_resamples=50,
    )
    support = next(c for c in result.gate.checks if c.name == "support")
    assert support.value > 0.9 and not support.passed
    assert not result.gate.promote
    assert float(result.gate.to_tags()["gate.unsupported_mass"]) == pytest.approx(support.value)
    assert result.metrics()["gate.unsupported_mass"] == pytest.approx(support.value)


def test_the_gate_refuses_when_every_held_out_reward_is_the_same() -> None:
    """A zero-width tie (every reward 0: every policy's estimate is 0) cleared the bar,
    and a window whose rewards never came was promoted to production."""
    tie = (report("cand", 0.0, 0.0, 0.0), report("prod", 0.0, 0.0, 0.0))
    assert decide(*tie).promote  # without the held-out rewards: the check is skipped
    refused = decide(*tie, reward_range=(0.0, 0.0))
    assert not refused.promote
    assert refused.reasons[0].startswith("every held-out reward is 0: every policy's estimate")
    varied = decide(*tie, reward_range=(0.0, 1.0))
    assert varied.promote and "the held-out rewards range from 0 to 1." in varied.reasons


@pytest.mark.parametrize("reward", [0.0, 1.0])
def test_a_window_of_equal_rewards_promotes_nothing(tmp_path: Path, reward: float) -> None:
    """Through the offline evaluation: uniform logs over 3 arms whose rewards are all
    ``reward`` (missing rewards filled in by the default, or every one a click)."""
    rng = np.random.default_rng(1)
    ids = ["a", "b", "c"]
    rows = [
        {
            "event_id": f"e{t}",
            "context": [1.0, float(rng.standard_normal())],
            "candidate_ids": ids,
            "candidate_features": [[0.0]] * 3,
            "chosen": int(rng.integers(3)),
            "reward": reward,
            "propensity": 1 / 3,
            "probabilities": [1 / 3] * 3,
            "model_version": "1",
        }
        for t in range(600)
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "replay.parquet")
    candidate = make_policy("linucb", dim_user=2, floor=0.05)
    state = save_policy(candidate, tmp_path / "candidate.npz")
    result = evaluate(
        state, None, tmp_path / "replay.parquet", rule=GateRule(min_ess=0.0), n_resamples=50
    )
    check = next(c for c in result.gate.checks if c.name == "rewards_vary")
    assert not check.passed and check.value == 0.0
    assert all(c.passed for c in result.gate.checks if c is not check)  # a tie cleared them
    assert not result.gate.promote
    assert result.gate.to_tags()["gate.decision"] == "reject"


def test_a_production_whose_state_no_longer_loads_is_compared_as_the_fallback(
    tmp_path: Path,
) -> None:
    """A production version saved by an older banditops in a layout this one refuses (the
    service serves its fallback meanwhile) stopped every retrain at the evaluation
    (upgrade helper, stop 45). The candidate is now compared with the uniform policy,
    what it would replace, and the production report says so."""
    rng = np.random.default_rng(2)
    ids = ["a", "b", "c"]
    rows = [
        {
            "event_id": f"e{t}",
            "context": [1.0, float(rng.standard_normal())],
            "candidate_ids": ids,
            "candidate_features": [[0.0]] * 3,
            "chosen": (arm := int(rng.integers(3))),
            "reward": float(arm == 2),
            "propensity": 1 / 3,
            "probabilities": [1 / 3] * 3,
            "model_version": "1",
        }
        for t in range(600)
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "replay.parquet")
    candidate = save_policy(make_policy("linucb", dim_user=2), tmp_path / "candidate.npz")
    good = save_policy(make_policy("shared_lints", dim_user=2, dim_arm=1), tmp_path / "prod.npz")
    arrays = dict(np.load(good, allow_pickle=False))
    del arrays["head.precision"]  # a layout this release does not read
    np.savez(tmp_path / "old.npz", **arrays)
    kwargs = {"rule": GateRule(min_ess=0.0), "n_resamples": 20}
    refused = evaluate(candidate, tmp_path / "old.npz", tmp_path / "replay.parquet", **kwargs)
    (note,) = [n for n in refused.production.notes if "does not load" in n]
    assert "malformed (KeyError: 'head.precision')" in note and "uniform policy" in note
    assert "saved by an older banditops" in note  # what a layout since changed gives
    uniform = evaluate(candidate, None, tmp_path / "replay.parquet", **kwargs)
    assert refused.production.estimates["dr"].value == uniform.production.estimates["dr"].value
    assert refused.gate.promote == uniform.gate.promote
    # a production of other widths than the window's (the catalog's features changed):
    # before, "candidates.features must have 1 columns (dim_arm); got 2" at every retrain
    wide = save_policy(make_policy("shared_lints", dim_user=2, dim_arm=2), tmp_path / "w.npz")
    other = evaluate(candidate, wide, tmp_path / "replay.parquet", **kwargs)
    (note,) = [n for n in other.production.notes if "takes dim_user" in n]
    assert "dim_user=2, dim_arm=2; the window's decisions have dim_user=2, dim_arm=1" in note
    assert other.production.estimates["dr"].value == uniform.production.estimates["dr"].value


@pytest.mark.parametrize(
    ("production", "why"),
    [
        (-3.68331, "outside the held-out reward range [0, 1]"),  # a bar every candidate clears
        (4.38676e296, "outside the held-out reward range [0, 1]"),  # one none does
        (float("inf"), "not finite"),
    ],
)
def test_a_production_estimate_no_mean_reward_can_have_refuses_the_comparison(
    production: float, why: str
) -> None:
    """Mislogged or tiny propensities put production's DR estimate (the bar) at −3.7 on a
    [0, 1] reward: a candidate worse in truth (0.378 against 0.535) passed and was
    promoted. Production's estimate must be a possible mean reward."""
    candidate = report("cand", 0.35, 0.10, 0.60)
    prod = report("prod", production, production - 1, production + 1, ess=3.7)
    refused = decide(candidate, prod, reward_range=(0.0, 1.0))
    assert not refused.promote
    check = next(c for c in refused.checks if c.name == "production_estimate")
    assert not check.passed and why in check.reason
    assert "(effective sample size 3.7)" in check.reason
    assert any(why in r for r in refused.reasons)
    fine = decide(candidate, report("prod", 0.05, 0.0, 0.1), reward_range=(0.0, 1.0))
    assert fine.promote
    assert "production's dr estimate 0.05 lies within the held-out reward range [0, 1]." in (
        fine.reasons
    )


def test_a_production_estimate_noise_put_past_the_range_is_compared_at_its_end() -> None:
    """DR is not bounded by the reward range: a poor production with rare clicks was
    estimated at −0.0005 and a better candidate (0.098 [0.060, 0.139]) refused for
    "propensities that cannot be trusted" in 14 of 60 windows (OPE helper, stop 55).
    While production's interval reaches into the range, it is compared at the range's
    end."""
    candidate = report("cand", 0.098, 0.060, 0.139)
    prod = report("prod", -0.00049, -0.003, 0.002)
    decision = decide(candidate, prod, reward_range=(0.0, 1.0))
    check = next(c for c in decision.checks if c.name == "production_estimate")
    assert decision.promote and check.passed, decision.reasons
    assert "its interval [-0.003, 0.002] reaches into it: compared at 0." in check.reason
    value_check = next(c for c in decision.checks if c.name == "lower_bound")
    assert value_check.threshold == 0.0
    worse = decide(report("cand", 0.0, -0.01, 0.01), prod, reward_range=(0.0, 1.0))
    assert not worse.promote  # its lower bound is below the range's end
    # far past the range, however wide its interval: the propensities are wrong, not noisy
    # (three mislogged rows put it at -3.87 [-9.89, 0.62]; review, stop 55)
    mislogged = report("prod", -3.866, -9.889, 0.623, ess=3.5)
    refused = decide(report("cand", 0.374, 0.251, 0.495), mislogged, reward_range=(0.0, 1.0))
    check = next(c for c in refused.checks if c.name == "production_estimate")
    assert not refused.promote and not check.passed and "cannot be trusted" in check.reason


@pytest.mark.parametrize(
    ("share_first", "refused"),
    [(1.0, True), (0.6, True), (0.1, False), (0.0, False)],
)
def test_a_slate_candidate_is_checked_for_support_by_its_importance_weights(
    share_first: float, refused: bool
) -> None:
    """A slate window had no support check at all: a candidate ranking first an item
    the logs never showed there was promoted on its reward model's extrapolation (OPE
    helper, stop 55). The logs show slates of 2 of a0..a8 uniformly, never a9; the
    candidate puts ``share_first`` of position 0 on a9. One minus its mean importance
    weight estimates that share; beyond the limit by two standard errors it is refused."""
    from validation.gate import WeightedSupport, weight_terms

    rng = np.random.default_rng(0)
    k, n = 10, 3000
    actions = np.concatenate([rng.permutation(9)[:2] for _ in range(n)])
    positions = np.tile([0, 1], n)
    pscore = np.full(2 * n, 1 / 9)
    dist = np.zeros((2 * n, k, 2))
    dist[:, :9, :] = 1 / 9
    dist[:, 9, 0] = share_first
    dist[:, :9, 0] *= 1 - share_first
    support = WeightedSupport.of(weight_terms(dist, actions, positions, pscore, 2))
    assert support is not None
    position, share, se = support.worst()
    assert abs(share - share_first) < 4 * se + 1e-12 and (position == 0 or share_first == 0)
    decision = decide(
        report("cand", 0.30, 0.26, 0.34), report("prod", 0.25, 0.24, 0.26), GateRule(), support
    )
    (check,) = [c for c in decision.checks if c.name == "support"]
    assert check.passed is not refused and decision.promote is not refused, check.reason
    assert "from the importance weights" in check.reason


def test_the_evaluation_estimates_a_slate_window_s_support() -> None:
    """End to end through :func:`training.evaluate.support_of` on a slate batch: a uniform
    candidate over ten items, logs that never show one of them: about a tenth of its
    mass at each position."""
    from training.evaluate import support_of
    from validation.gate import WeightedSupport
    from validation.ope import LoggedBatch

    rng = np.random.default_rng(1)
    n = 2000
    actions = np.concatenate([rng.permutation(9)[:2] for _ in range(n)])
    batch = LoggedBatch(
        np.repeat(rng.standard_normal((n, 3)), 2, axis=0),
        Candidates.from_any([f"a{i}" for i in range(10)]),
        actions,
        rng.binomial(1, 0.1, 2 * n).astype(float),
        np.full(2 * n, 1 / 9),
        positions=np.tile([0, 1], n),
        len_list=2,
    )
    policy = make_policy("uniform", dim_user=3)
    logged = SimpleNamespace(logging_probabilities=None)  # no probability vectors
    support = support_of(policy, logged, batch, SUPPORT_THRESHOLD, 0)  # type: ignore[arg-type]
    assert isinstance(support, WeightedSupport)
    _, share, se = support.worst()
    assert abs(share - 0.1) < 4 * se, (share, se)


def test_figures_that_are_not_finite_are_null_in_json_and_no_metric() -> None:
    """A window whose weights overflowed wrote ``NaN``/``Infinity`` tokens into
    evaluation.json and the ``challengers`` tag (``banditops models`` then read the tag as
    a raw string), ``OPEReport.to_json`` raised, and MLflow got 25 non-finite metrics
    (OPE helper, stop 55)."""
    import json

    from training.challengers import Challenger, challenger_metrics, challengers_tag

    est = Estimate(
        "dr",
        float("inf"),
        0.2,
        float("nan"),
        0.95,
        100,
        float("nan"),
        3.0,
        10,
        {"lambda_": float("inf")},
    )
    rep = OPEReport("p", 10, "w", {"dr": est})
    back = OPEReport.from_json(rep.to_json())
    assert back.estimates["dr"].ci_low == 0.2 and np.isnan(back.estimates["dr"].ci_high)
    assert np.isnan(back.estimates["dr"].params["lambda_"])
    metrics = rep.to_mlflow_metrics()
    assert all(np.isfinite(v) for v in metrics.values()) and "ope.dr.ci_low" in metrics
    table = [Challenger("shared_lints", float("inf"), 0.1, float("nan"), True, "")]
    assert json.loads(challengers_tag(table)) == [
        {"algorithm": "shared_lints", "dr": None, "ci_low": 0.1, "ci_high": None, "chosen": True}
    ]
    assert all(np.isfinite(v) for v in challenger_metrics(table).values())


def test_the_gate_compares_the_candidate_with_production_paired_on_the_same_rounds() -> None:
    """The candidate's lower bound against production's point estimate ignored that both
    are estimated on the same rounds: a candidate truly better by 0.005 was refused,
    and overall an equal one passed 7.7 % of seeded windows and a better one 12 % (OPE
    helper, stop 55). The gain's paired interval sees the difference."""
    from validation.ope.estimate import estimate
    from validation.ope.evaluate import paired_difference
    from validation.ope.inputs import check_feedback

    rng = np.random.default_rng(3)
    n = 20_000
    actions = rng.integers(0, 2, n)
    rewards = (rng.random(n) < np.where(actions == 0, 0.35, 0.30)).astype(float)
    pscore = np.full(n, 0.5)
    fbs = [
        check_feedback(rewards, actions, pscore, np.tile(np.array(p)[None, :, None], (n, 1, 1)))
        for p in ([0.6, 0.4], [0.5, 0.5])  # true values 0.330 and 0.325
    ]
    cand, prod = (estimate("ips", fb, np.random.default_rng(0), n_resamples=400) for fb in fbs)
    reports = [OPEReport(name, n, "w", {"ips": e}) for name, e in (("c", cand), ("p", prod))]
    rule = GateRule(estimator="ips")
    unpaired = decide(*reports, rule)
    assert not unpaired.promote  # its lower bound is below production's estimate
    difference = paired_difference(*fbs, "ips", np.random.default_rng(0), n_resamples=400)
    assert difference.value == pytest.approx(cand.value - prod.value, abs=1e-12)
    assert difference.ci_low > 0 and difference.ci_high - difference.ci_low < 0.25 * (
        cand.ci_high - cand.ci_low
    )
    paired = decide(*reports, rule, difference=difference)
    check = next(c for c in paired.checks if c.name == "lower_bound")
    assert paired.promote and check.passed, paired.reasons
    assert "gain over production" in check.reason and "paired on the same rounds" in check.reason
    # production alone better: the paired bound is below 0 and the candidate refused
    worse = paired_difference(fbs[1], fbs[0], "ips", np.random.default_rng(0), n_resamples=400)
    assert not decide(reports[1], reports[0], rule, difference=worse).promote


def test_the_unpaired_rule_uses_the_level_shared_among_the_candidates_compared() -> None:
    # no paired difference (a self-normalised gate estimator, sharded): the winner of two
    # is held to the 97.5 % lower bound, as the paired rule holds it; it was held to 95 %.
    # The candidate's 95 % interval 0.50 ± 0.04 is normal: its 97.5 % lower bound is
    # 0.50 − 0.04 · z(0.9875) / z(0.975) = 0.45426, below production's 0.455.
    cand, prod = report("cand", 0.50, 0.46, 0.54), report("prod", 0.455, 0.45, 0.46)
    assert decide(cand, prod, GateRule()).promote  # one candidate: 0.46 ≥ 0.455
    decision = decide(cand, prod, GateRule(comparisons=2))
    assert not decision.promote
    check = decision.checks[0]
    assert check.value == pytest.approx(0.50 - 0.04 * 2.241403 / 1.959964, rel=1e-6)
    assert check.reason.startswith(
        "dr 97.5% lower bound (the level shared by 2 candidates compared) of the candidate"
    )
    # a report computed at the shared level already is read as it is
    wide = OPEReport(
        "cand", 1000, "w1", {"dr": Estimate("dr", 0.50, 0.46, 0.54, 0.975, 1000, 500.0, 3.0, 1000)}
    )
    assert decide(wide, prod, GateRule(comparisons=2)).checks[0].value == 0.46
