"""The promotion gate: may the candidate model replace production?

Both policies are evaluated off-policy on the *same* held-out window (their reports must
carry the same data fingerprint). The default rule promotes when

* the lower end of the interval of the candidate's gain over production under
  ``estimator`` (DR), paired on the same rounds (:class:`~validation.ope.evaluate.
  PairedDifference`), is at least ``−tolerance · |V_prod|`` (the ``|·|`` keeps the rule
  meaningful for negative rewards); the sharded path sums the round-by-round
  differences (a normal interval, as its reports). Without a paired difference (a
  self-normalised estimator as the gate's, sharded), the lower end of the candidate's own
  interval (at the level shared among the candidates compared, as the paired bound's:
  :attr:`GateRule.difference_level`) is compared with production's point estimate:
  ``L_cand ≥ V_prod − tolerance · |V_prod|``, which ignores production's noise and the
  pairing, and
* the candidate's effective sample size under that estimator is at least ``min_ess``
  (too few effective rounds and the interval itself cannot be trusted), and
* the logs support the candidate: the share of its probability mass on actions the
  logging policy played with propensity below ``support_threshold``
  (:func:`unsupported_mass`) is at most ``max_unsupported``. Importance weighting
  cannot see what the logs never tried: without support the estimates above are biased
  or uninformative however narrow their intervals look. Where the logging probabilities
  of every action are not known (slates, per position), the share on actions the logs
  never played is estimated from the candidate's importance weights
  (:class:`WeightedSupport`) and must not exceed the limit beyond its noise, and
* production's estimate, the bar, is a possible mean reward: finite and within the
  held-out rewards' range (tiny or mislogged propensities put it far outside, where every
  candidate clears it or none does) or, its interval reaching into the range, at most
  ``RANGE_SLACK`` of the range past an end (noise: it is compared at that end), and
* the held-out rewards are not all equal: when every logged reward is the same value
  (no click in the window, or a reward pipeline that delivered none, filled in by
  ``missing_reward = default``), every policy's estimate is that value with an interval
  of width zero, so the first check passes by a tie and says nothing, and
* (:func:`freshness_check`, added by the retrain) the candidate's training window stops
  no earlier than those of production and of the ``@staging`` version: a run for an
  earlier interval (a backfill, a run triggered with an old logical date) never replaces
  a model trained on later data.

Every check is reported, passed or not, with its numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from bandit_core._validation import Interval, validate_params
from bandit_core.support import (
    ESTIMATOR,
    MAX_UNSUPPORTED,
    MIN_ESS,
    SUPPORT_THRESHOLD,
    TOLERANCE,
    UNIFORM_SHARE,
)
from validation.ope.bootstrap import LEVEL
from validation.ope.estimate import Estimate
from validation.ope.report import OPEReport
from validation.ope.spec import ESTIMATORS

if TYPE_CHECKING:
    from validation.ope.evaluate import PairedDifference


@dataclass(frozen=True)
class GateRule:
    """Configuration of the gate.

    Parameters
    ----------
    estimator : str
        Estimator whose numbers decide (default ``"dr"``).
    tolerance : float
        Allowed relative shortfall of the candidate's lower bound, in [0, 1).
    min_ess : float
        Minimum effective sample size of the candidate, ≥ 0.
    support_threshold : float in [0, 1)
        A logging propensity below this counts as no support (below ``UNIFORM_SHARE / K``
        where that is smaller: a round of K playable actions).
    max_unsupported : float in [0, 1]
        Most probability mass the candidate may put on unsupported actions.
    comparisons : int ≥ 1
        How many candidates were compared on these rounds before this one was chosen
        (champion–challenger). The paired bound's level is then
        ``1 − (1 − LEVEL) / comparisons`` (Bonferroni): the best of several candidates no
        better than production, gated on the rounds it was chosen on at the plain level,
        was promoted 4.3 % of the time for two and 6.8 % for five, where one alone is
        promoted 2.2 % (2.2 % and 2.8 % at the shared level; ``benchmarks.gate_level``,
        400 windows). Where no paired difference exists (a
        self-normalised estimator, sharded) the unpaired rule compares the candidate's
        lower bound at that level too (:func:`lower_bound_at`); it decided at the plain
        95 % before.
    """

    estimator: str = ESTIMATOR
    tolerance: float = TOLERANCE
    min_ess: float = MIN_ESS
    support_threshold: float = SUPPORT_THRESHOLD
    max_unsupported: float = MAX_UNSUPPORTED
    comparisons: int = 1

    @property
    def difference_level(self) -> float:
        """The level of the paired interval whose lower bound decides."""
        return 1.0 - (1.0 - LEVEL) / self.comparisons

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(
                f"The 'estimator' parameter of GateRule must be one of {', '.join(ESTIMATORS)}; "
                f"got {self.estimator!r}."
            )
        validate_params(
            "GateRule",
            {
                "tolerance": self.tolerance,
                "min_ess": self.min_ess,
                "support_threshold": self.support_threshold,
                "max_unsupported": self.max_unsupported,
                "comparisons": self.comparisons,
            },
            {
                "tolerance": Interval(float, 0.0, 1.0, closed="left"),
                "min_ess": Interval(float, 0.0, None),
                "support_threshold": Interval(float, 0.0, 1.0, closed="left"),
                "max_unsupported": Interval(float, 0.0, 1.0),
                "comparisons": Interval(int, 1, None),
            },
        )


@dataclass(frozen=True)
class GateCheck:
    """One condition of the rule: its name, outcome, observed value and threshold."""

    name: str
    passed: bool
    value: float
    threshold: float
    reason: str


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with every check behind it."""

    promote: bool
    rule: GateRule
    checks: tuple[GateCheck, ...]
    candidate: str
    production: str

    @property
    def reasons(self) -> tuple[str, ...]:
        """One sentence per check, failing ones first."""
        ordered = sorted(self.checks, key=lambda c: c.passed)
        return tuple(c.reason for c in ordered)

    def with_check(self, check: GateCheck) -> GateDecision:
        """This decision with one more check (it promotes only if that passes too)."""
        return replace(self, checks=(*self.checks, check), promote=self.promote and check.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "rule": asdict(self.rule),
            "candidate": self.candidate,
            "production": self.production,
            "checks": [asdict(c) for c in self.checks],
            "reasons": list(self.reasons),
        }

    def to_tags(self, prefix: str = "gate") -> Mapping[str, str]:
        """String tags for a registry version (``gate.decision``, ``gate.reasons`` and,
        when checked, ``gate.unsupported_mass``)."""
        tags = {
            f"{prefix}.decision": "promote" if self.promote else "reject",
            f"{prefix}.estimator": self.rule.estimator,
            f"{prefix}.reasons": " | ".join(self.reasons),
        }
        for check in self.checks:
            if check.name == "support":
                tags[f"{prefix}.unsupported_mass"] = f"{check.value:.6g}"
                tags[f"{prefix}.support_threshold"] = f"{self.rule.support_threshold:g}"
        return tags


def unsupported_terms(
    action_dist: Any, logging_probabilities: Any, threshold: float
) -> tuple[float, int]:
    """The additive parts of :func:`unsupported_mass`: the candidate's probability mass on
    actions logged with propensity below ``threshold`` (below ``UNIFORM_SHARE / K`` where
    that is smaller: a round of K playable actions, where even uniform logging gives each
    1 / K), summed over the rows whose logging
    probabilities are known, and the number of those rows. Summed over the shards of a
    window, their ratio is the window's :func:`unsupported_mass`."""
    pi = np.asarray(action_dist, dtype=np.float64)
    mu = np.asarray(logging_probabilities, dtype=np.float64)
    if pi.shape != mu.shape or pi.ndim != 2:
        raise ValueError(
            "action_dist and logging_probabilities must have the same shape (n, K); got "
            f"{pi.shape} and {mu.shape}."
        )
    known = np.isfinite(mu).all(axis=1)
    mu = mu[known]
    # K: the actions the logging policy could play in the round (propensity > 0)
    playable = np.maximum((mu > 0.0).sum(axis=1, keepdims=True), 1)
    cutoff = np.minimum(threshold, UNIFORM_SHARE / playable)
    return float((pi[known] * (mu < cutoff)).sum()), int(known.sum())


#: How far past the held-out reward range (a share of its width) production's estimate
#: may lie and still be compared, at the range's end: DR is not bounded by the range, and
#: noise puts a poor production's just below it; far past it, the propensities are wrong.
RANGE_SLACK = 0.05

#: Standard errors by which a weight-estimated unsupported share must pass the limit.
SUPPORT_Z = 2.0


def weight_terms(
    action_dist: Any, actions: Any, positions: Any, pscore: Any, len_list: int
) -> np.ndarray:
    """The additive parts of :class:`WeightedSupport`: per position ``(rows, Σ(1 − w),
    Σ(1 − w)²)`` of the candidate's importance weights ``w = π(a_i) / μ(a_i)`` at the
    logged actions (``action_dist`` (n, K, len_list), the one its estimates read)."""
    pi = np.asarray(action_dist, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.intp)
    rows = np.arange(pi.shape[0])
    gap = 1.0 - pi[rows, np.asarray(actions, dtype=np.intp), pos] / np.asarray(pscore)
    out = np.zeros((len_list, 3))
    np.add.at(out[:, 0], pos, 1.0)
    np.add.at(out[:, 1], pos, gap)
    np.add.at(out[:, 2], pos, gap * gap)
    return out


@dataclass(frozen=True)
class WeightedSupport:
    """The candidate's unsupported share estimated from its importance weights, where the
    logging policy's probability vectors are not known (slates: per position; rounds
    logged without them). ``E_μ[π(a) / μ(a)]`` is one minus the candidate's mass on
    actions the logging policy never plays, so one minus the mean weight estimates that
    mass at each position. A slate window had no support check at all, and a candidate
    ranking first an item the logs never showed there was promoted (OPE helper, stop 55).

    ``terms``: per position ``(rows, Σ(1 − w), Σ(1 − w)²)`` (:func:`weight_terms`),
    summed over the blocks or shards of a window."""

    terms: tuple[tuple[float, float, float], ...]

    @classmethod
    def of(cls, terms: Any) -> WeightedSupport | None:
        """From summed :func:`weight_terms`; None without rows."""
        arr = np.asarray(terms, dtype=np.float64).reshape(-1, 3)
        if not (arr[:, 0] > 0).any():
            return None
        return cls(tuple((float(n), float(s), float(q)) for n, s, q in arr))

    def worst(self) -> tuple[int, float, float]:
        """``(position, estimate, standard error)`` of the position whose lower bound
        ``estimate − SUPPORT_Z · se`` is the largest."""
        best: tuple[float, int, float, float] | None = None
        for position, (n, s, q) in enumerate(self.terms):
            if n <= 0:
                continue
            mean = s / n
            se = float(np.sqrt(max(q / n - mean * mean, 0.0) / n))
            low = mean - SUPPORT_Z * se
            if best is None or low > best[0]:
                best = (low, position, mean, se)
        assert best is not None  # of() keeps rows
        return best[1], best[2], best[3]


def unsupported_mass(action_dist: Any, logging_probabilities: Any, threshold: float) -> float:
    """The share of the candidate's probability mass on actions the logging policy played
    with propensity below ``threshold`` — or, in a round of more than
    ``UNIFORM_SHARE / threshold`` playable actions, below ``UNIFORM_SHARE`` of the uniform
    propensity (before, uniform logging over 101 candidates counted as no support at all).

    ``mean_i Σ_a π(a | x_i) · 1[μ(a | x_i) < threshold]`` over the rows whose logging
    probabilities are known (finite): ``action_dist`` (n, K) the candidate's
    probabilities π, ``logging_probabilities`` (n, K) the logging policy's μ over the same
    actions (0 for an action the row did not offer, NaN for a row not logged with them).
    NaN when no row has them.
    """
    mass, rows = unsupported_terms(action_dist, logging_probabilities, threshold)
    return mass / rows if rows else float("nan")


def lower_bound_at(estimate: Estimate, level: float) -> float:
    """``estimate``'s lower bound at ``level`` (two-sided), for the unpaired rule: its own
    where it was computed at ``level`` or above, else its lower half-width
    ``value − ci_low`` scaled by ``z(level) / z(estimate.level)`` — exact for the
    normal-approximation intervals of a sharded evaluation (the only reports without a
    paired difference in the retrain), the normal shape's scaling for a bootstrap one.
    Never above the estimate's own lower bound."""
    if estimate.level >= level:
        return float(estimate.ci_low)
    z = NormalDist().inv_cdf
    scale = z(0.5 + level / 2.0) / z(0.5 + estimate.level / 2.0)
    half = max(float(estimate.value - estimate.ci_low), 0.0)
    return min(float(estimate.ci_low), float(estimate.value) - scale * half)


def decide(
    candidate: OPEReport,
    production: OPEReport,
    rule: GateRule | None = None,
    unsupported: float | WeightedSupport | None = None,
    reward_range: tuple[float, float] | None = None,
    difference: PairedDifference | None = None,
) -> GateDecision:
    """Apply ``rule`` to the candidate's and production's reports on one window.

    Parameters
    ----------
    candidate, production : OPEReport
        Reports of the two policies on the same logged batch.
    rule : GateRule, optional
        Default ``GateRule()``: DR lower bound ≥ production DR estimate, ESS ≥
        ``bandit_core.support.MIN_ESS``, unsupported mass ≤ ``MAX_UNSUPPORTED``.
    unsupported : float, optional
        :func:`unsupported_mass` of the candidate on the window; None (or NaN: the logs
        carry no choice probabilities) skips the support check.
    reward_range : (float, float), optional
        The least and the greatest held-out reward (:func:`reward_range`); None skips
        the check that they differ.

    Raises
    ------
    ValueError
        When the reports come from different windows or lack the rule's estimator.
    """
    rule = GateRule() if rule is None else rule
    if not isinstance(candidate, OPEReport) or not isinstance(production, OPEReport):
        raise TypeError("candidate and production must be OPEReport objects.")
    if candidate.data_fingerprint != production.data_fingerprint:
        raise ValueError(
            "candidate and production must be evaluated on the same held-out window; "
            f"data fingerprints differ ({candidate.data_fingerprint[:12]}… vs "
            f"{production.data_fingerprint[:12]}…)."
        )
    cand = candidate[rule.estimator]
    prod = production[rule.estimator]
    # production's estimate, where noise put it past the reward range its interval still
    # reaches, is compared at that range's end (no policy's mean reward lies beyond it)
    at = _compared_at(prod.value, reward_range)
    bar = at - rule.tolerance * abs(at)
    if difference is not None and difference.estimator == rule.estimator:
        # paired on the same rounds: the candidate's gain over production (at the range's
        # end where noise put production past it) at least -tolerance · |production|
        gain_bar = bar - at
        low = difference.ci_low + (prod.value - at)
        value_ok = bool(low >= gain_bar)
        value_check = GateCheck(
            name="lower_bound",
            passed=value_ok,
            value=float(low),
            threshold=float(gain_bar),
            reason=(
                f"{rule.estimator} {100 * difference.level:g}% lower bound of the "
                f"candidate's gain over production {low:.6g} (paired on the same rounds; "
                f"candidate {cand.value:.6g}, production {prod.value:.6g}) "
                f"{'≥' if value_ok else '<'} {gain_bar:.6g} (tolerance {rule.tolerance:g})."
            ),
        )
    else:
        low = lower_bound_at(cand, rule.difference_level)
        shared = (
            f" (the level shared by {rule.comparisons} candidates compared)"
            if rule.comparisons > 1
            else ""
        )
        pct = f"{100 * max(cand.level, rule.difference_level):g}%"
        value_ok = low >= bar
        value_check = GateCheck(
            name="lower_bound",
            passed=value_ok,
            value=low,
            threshold=bar,
            reason=(
                f"{rule.estimator} {pct} lower bound{shared} of the candidate {low:.6g} "
                f"{'≥' if value_ok else '<'} production estimate {prod.value:.6g}"
                + (f" (compared at {at:.6g})" if at != prod.value else "")
                + f" with tolerance {rule.tolerance:g} (bar {bar:.6g})."
            ),
        )
    ess_ok = cand.ess >= rule.min_ess
    ess_check = GateCheck(
        name="effective_sample_size",
        passed=ess_ok,
        value=cand.ess,
        threshold=float(rule.min_ess),
        reason=(
            f"{rule.estimator} effective sample size of the candidate {cand.ess:.1f} "
            f"{'≥' if ess_ok else '<'} minimum {rule.min_ess:g}."
        ),
    )
    checks: tuple[GateCheck, ...] = (value_check, ess_check)
    if isinstance(unsupported, WeightedSupport):
        checks += (_weighted_support_check(unsupported, rule),)
    elif unsupported is not None and np.isfinite(unsupported):
        support_ok = unsupported <= rule.max_unsupported
        checks += (
            GateCheck(
                name="support",
                passed=support_ok,
                value=float(unsupported),
                threshold=float(rule.max_unsupported),
                reason=(
                    f"support: the candidate puts {100 * unsupported:.1f}% of its probability "
                    f"on actions the logs played with propensity below "
                    f"{rule.support_threshold:g} "
                    f"({'≤' if support_ok else '>'} the limit {100 * rule.max_unsupported:g}%)"
                    + ("." if support_ok else "; its estimates cannot be trusted.")
                ),
            ),
        )
    checks += (_production_check(rule.estimator, prod, reward_range),)
    if reward_range is not None:
        lo, hi = reward_range
        varied = hi > lo
        checks += (
            GateCheck(
                name="rewards_vary",
                passed=varied,
                value=float(hi - lo),
                threshold=0.0,
                reason=(
                    f"the held-out rewards range from {lo:.6g} to {hi:.6g}."
                    if varied
                    else f"every held-out reward is {lo:.6g}: every policy's estimate is "
                    "that value, so the evaluation cannot tell the candidate from "
                    "production (no reward in the window, or all filled in by "
                    "missing_reward = default?)."
                ),
            ),
        )
    return GateDecision(
        promote=all(c.passed for c in checks),
        rule=rule,
        checks=checks,
        candidate=candidate.policy,
        production=production.policy,
    )


def _weighted_support_check(support: WeightedSupport, rule: GateRule) -> GateCheck:
    position, share, se = support.worst()
    low = share - SUPPORT_Z * se
    passed = low <= rule.max_unsupported
    slates = len(support.terms) > 1
    where = f" at position {position}" if slates else ""
    how = ", position by position" if slates else ": the logs hold no probability vectors"
    return GateCheck(
        name="support",
        passed=passed,
        value=float(share),
        threshold=float(rule.max_unsupported),
        reason=(
            f"support (from the importance weights{how}): "
            f"the candidate puts an estimated {100 * share:.1f}% (± {100 * se:.1f}%) of its "
            f"probability{where} on actions the logs never played "
            + (
                f"(not beyond the limit {100 * rule.max_unsupported:g}% by "
                f"{SUPPORT_Z:g} standard errors)."
                if passed
                else f"(beyond the limit {100 * rule.max_unsupported:g}% by more than "
                f"{SUPPORT_Z:g} standard errors); its estimates cannot be trusted."
            )
        ),
    )


def _compared_at(value: float, reward_range: tuple[float, float] | None) -> float:
    """Production's estimate as the bar: clipped into the reward range when noise put it
    at most :data:`RANGE_SLACK` of the range past an end (else as it is: the production
    check refuses it)."""
    if reward_range is None or not np.isfinite(value):
        return value
    lo, hi = reward_range
    clipped = float(np.clip(value, lo, hi))
    return clipped if abs(value - clipped) <= RANGE_SLACK * (hi - lo) else value


def _production_check(
    estimator: str, prod: Any, reward_range: tuple[float, float] | None
) -> GateCheck:
    """Production's estimate is the bar: it must be a possible mean reward — finite, and
    its interval reaching into the held-out rewards' range when known. Tiny or mislogged
    propensities put it at −3.7 on a [0, 1] reward (a bar every candidate clears) or at
    10²⁹⁶ (one none does). DR is not bounded by the range: a poor production with rare
    clicks was estimated at −0.0005 [−0.003, 0.002], and a better candidate refused in 14
    of 60 windows for "propensities that cannot be trusted" (OPE helper, stop 55); it is
    compared at the range's end instead."""
    value, low, high = float(prod.value), float(prod.ci_low), float(prod.ci_high)
    finite = bool(np.isfinite(value))
    lo, hi = reward_range if reward_range is not None else (-np.inf, np.inf)
    within = finite and lo <= value <= hi
    # just past the range, its interval reaching into it: noise, compared at the end; a
    # mislogged propensity put it at -3.87 with an interval reaching to 0.62, and the
    # worse candidate passed a bar of 0 (review, stop 55)
    reaches = (
        finite
        and _compared_at(value, reward_range) != value
        and bool(np.isfinite(low) and np.isfinite(high))
        and low <= hi
        and high >= lo
    )
    where = "" if reward_range is None else f" [{lo:.6g}, {hi:.6g}]"
    state = "not finite" if not finite else f"outside the held-out reward range{where}"
    if within:
        reason = (
            f"production's {estimator} estimate {value:.6g} lies within the held-out reward "
            f"range{where}."
        )
    elif reaches:
        reason = (
            f"production's {estimator} estimate {value:.6g} is outside the held-out reward "
            f"range{where}, but its interval [{low:.6g}, {high:.6g}] reaches into it: "
            f"compared at {float(np.clip(value, lo, hi)):.6g}."
        )
    else:
        reason = (
            f"production's {estimator} estimate {value:.6g} (effective sample size "
            f"{prod.ess:.1f}) is {state}: no policy's mean reward can be, so the window's "
            "propensities cannot be trusted and the candidate is not compared against it."
        )
    return GateCheck(
        name="production_estimate",
        passed=within or reaches,
        value=value,
        threshold=float(lo if finite and value < lo else hi),
        reason=reason,
    )


def reward_range(rewards: Any) -> tuple[float, float] | None:
    """The least and the greatest of the finite ``rewards`` (None when there are none),
    for :func:`decide`; two ranges merge by ``merge_ranges``."""
    r = np.asarray(rewards, dtype=np.float64)
    r = r[np.isfinite(r)]
    return (float(r.min()), float(r.max())) if r.size else None


def merge_ranges(ranges: Any) -> tuple[float, float] | None:
    """One range over the given :func:`reward_range`\\ s (None ones skipped)."""
    found = [r for r in ranges if r is not None]
    if not found:
        return None
    return min(lo for lo, _ in found), max(hi for _, hi in found)


def freshness_check(candidate_stop: datetime, newest_stop: datetime, newest: str) -> GateCheck:
    """Whether the candidate's training window stops no earlier than that of version
    ``newest`` (the newest of production and ``@staging``): the data a model was trained
    on, by time."""
    fresh = candidate_stop >= newest_stop
    return GateCheck(
        name="fresh",
        passed=fresh,
        value=candidate_stop.timestamp(),
        threshold=newest_stop.timestamp(),
        reason=(
            f"the candidate's window stops at {candidate_stop.isoformat()}, "
            + (
                f"not before version {newest}'s ({newest_stop.isoformat()})."
                if fresh
                else f"before version {newest}'s ({newest_stop.isoformat()}): a run for an "
                "earlier interval (a backfill) never replaces a model trained on later data."
            )
        ),
    )
