"""The promotion gate rule."""

from __future__ import annotations

import pytest

from validation.gate import GateRule, decide
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
    assert "effective sample size of the candidate 40.0 < minimum 100" in decision.reasons[0]


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
    assert d["rule"] == {"estimator": "dr", "tolerance": 0.0, "min_ess": 100.0}
    assert [c["name"] for c in d["checks"]] == ["lower_bound", "effective_sample_size"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"estimator": "best"}, "'estimator' parameter of GateRule must be one of"),
        (
            {"tolerance": 1.0},
            r"'tolerance' parameter of GateRule must be a float in the range \[0, 1\)",
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
