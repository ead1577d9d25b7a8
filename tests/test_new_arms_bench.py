"""``benchmarks.new_arms``: a small run times new and known arms per window."""

from __future__ import annotations

from benchmarks import new_arms


def test_the_new_arms_benchmark_reports_every_window_of_both_policies() -> None:
    rows = new_arms.run(arms=1500)
    assert [(r["policy"], r["arms_from"], r["arms_to"]) for r in rows] == [
        ("linucb", 0, 1000),
        ("linucb", 1000, 1500),
        ("hybrid_linucb", 0, 1000),
        ("hybrid_linucb", 1000, 1500),
    ]
    for r in rows:
        assert 0 < r["new_p50_us"] <= r["new_p99_us"] and r["known_p50_us"] > 0
