"""The promotion gate: may the candidate model replace production?

Both policies are evaluated off-policy on the *same* held-out window (their reports must
carry the same data fingerprint). The default rule promotes when

* the lower end of the candidate's interval under ``estimator`` (DR) is at least the
  production point estimate minus ``tolerance`` of its magnitude:
  ``L_cand ≥ V_prod − tolerance · |V_prod|`` (``V_prod (1 − tolerance)`` for a positive
  value; the ``|·|`` keeps the rule meaningful for negative rewards), and
* the candidate's effective sample size under that estimator is at least ``min_ess``
  (too few effective rounds and the interval itself cannot be trusted).

Every check is reported, passed or not, with its numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from bandit_core._validation import Interval, validate_params
from validation.ope.report import OPEReport
from validation.ope.spec import ESTIMATORS


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
    """

    estimator: str = "dr"
    tolerance: float = 0.0
    min_ess: float = 100.0

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(
                f"The 'estimator' parameter of GateRule must be one of {', '.join(ESTIMATORS)}; "
                f"got {self.estimator!r}."
            )
        validate_params(
            "GateRule",
            {"tolerance": self.tolerance, "min_ess": self.min_ess},
            {
                "tolerance": Interval(float, 0.0, 1.0, closed="left"),
                "min_ess": Interval(float, 0.0, None),
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
        """String tags for a registry version (``gate.decision``, ``gate.reasons``)."""
        return {
            f"{prefix}.decision": "promote" if self.promote else "reject",
            f"{prefix}.estimator": self.rule.estimator,
            f"{prefix}.reasons": " | ".join(self.reasons),
        }


def decide(
    candidate: OPEReport, production: OPEReport, rule: GateRule | None = None
) -> GateDecision:
    """Apply ``rule`` to the candidate's and production's reports on one window.

    Parameters
    ----------
    candidate, production : OPEReport
        Reports of the two policies on the same logged batch.
    rule : GateRule, optional
        Default ``GateRule()``: DR lower bound ≥ production DR estimate, ESS ≥ 100.

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
    bar = prod.value - rule.tolerance * abs(prod.value)
    value_ok = cand.ci_low >= bar
    pct = f"{100 * cand.level:g}%"
    value_check = GateCheck(
        name="lower_bound",
        passed=value_ok,
        value=cand.ci_low,
        threshold=bar,
        reason=(
            f"{rule.estimator} {pct} lower bound of the candidate {cand.ci_low:.6g} "
            f"{'≥' if value_ok else '<'} production estimate {prod.value:.6g} with tolerance "
            f"{rule.tolerance:g} (bar {bar:.6g})."
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
    checks = (value_check, ess_check)
    return GateDecision(
        promote=all(c.passed for c in checks),
        rule=rule,
        checks=checks,
        candidate=candidate.policy,
        production=production.policy,
    )
