"""``benchmarks.interval_coverage`` runs and reports both intervals on the same resamples."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import interval_coverage


def test_the_coverage_benchmark_reports_both_intervals(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    interval_coverage.main(["--windows", "8", "--resamples", "100", "--json", str(path)])
    rows = json.loads(path.read_text())["rows"]
    assert {r["rows"] for r in rows} == set(interval_coverage.SIZES)
    for r in rows:
        if r["what"].startswith("gate"):
            # the event-adjusted lower bound is never above the percentile one
            assert r["event_adjusted"] <= r["percentile"], r
        else:
            # nor is its interval narrower: it covers whenever the percentile one does
            assert r["event_adjusted"] >= r["percentile"], r
    # the closed-form reference: the exact test rejects equal arms at most 2.5 % of the time
    assert interval_coverage.count_test(10000, "equal") <= 0.025
    assert 0.4 < interval_coverage.count_test(10000, "+0.008") < 0.5
