"""``benchmarks.decision_copy``: a small run times both copies of every policy."""

from __future__ import annotations

from benchmarks import decision_copy


def test_the_decision_copy_benchmark_reports_every_policy_and_size() -> None:
    rows = decision_copy.run(arms=[60, 120], repeats=8)
    assert [(r["policy"], r["arms"]) for r in rows] == [
        (name, arms) for name in decision_copy.POLICIES for arms in (60, 120)
    ]
    for r in rows:
        assert r["candidates"] == 50
        assert 0 < r["decision_copy_p50_ms"] <= r["decision_copy_p99_ms"]
        assert 0 < r["deepcopy_p50_ms"] <= r["deepcopy_p99_ms"]
