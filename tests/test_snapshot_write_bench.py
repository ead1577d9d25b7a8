"""``benchmarks.snapshot_write``: a small run measures the decisions' commits in all three
modes (no snapshot, one row, ours in parts)."""

from __future__ import annotations

from benchmarks import snapshot_write


def test_the_snapshot_write_benchmark_reports_every_mode() -> None:
    rows = snapshot_write.run(["sqlite"], [200], snapshots=2, part_bytes=4096)
    assert [(r["store"], r["arms"], r["mode"]) for r in rows] == [
        ("sqlite", 200, mode) for mode in snapshot_write.MODES
    ]
    for r in rows:
        assert r["decisions"] > 100
        assert 0 < r["commit_p50_ms"] <= r["commit_p99_ms"] <= r["commit_max_ms"]
        assert (r["write_p50_ms"] is None) == (r["mode"] == "none")
