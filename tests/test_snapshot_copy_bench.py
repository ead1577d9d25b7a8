"""``benchmarks.snapshot_copy``: a small run measures both copies of both policies."""

from __future__ import annotations

from benchmarks import snapshot_copy


def test_the_snapshot_copy_benchmark_reports_both_copies() -> None:
    rows = snapshot_copy.run(arms=[50], snapshots=3)
    assert [(r["policy"], r["arms"]) for r in rows] == [
        (name, 50) for name in snapshot_copy.POLICIES
    ]
    for r in rows:
        for way in ("ours", "on_loop", "serialise_ours", "serialise_savez"):
            got = r[way]
            assert got["copy_p50_ms"] > 0
            assert got["loop_late_p99_ms"] <= got["loop_late_max_ms"]
