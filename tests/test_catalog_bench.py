"""The catalog benchmark end to end on a small catalog: its JSON carries the acceptance
figures (the full run, 100,000 items at 100 rps, is in docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.catalog import main


def test_the_catalog_benchmark_reports_recall_and_latencies_in_process_and_over_http(
    tmp_path: Path,
) -> None:
    out = tmp_path / "catalog.json"
    args = [
        "--items",
        "3000",
        "--k",
        "20",
        "--new",
        "5",
        "--rps",
        "20",
        "--seconds",
        "1.5",
        "--json",
    ]
    main([*args, str(out)])
    data = json.loads(out.read_text())
    assert {"benchmark", "items", "k", "recall_at_k", "select_p99_ms", "http_p99_ms"} <= set(data)
    assert (data["benchmark"], data["items"], data["k"]) == ("catalog", 3000, 20)
    assert data["recall_at_k"] >= 0.95
    assert 0.0 < data["select_p99_ms"] < 1000.0 and 0.0 < data["http_p99_ms"] < 10_000.0
    http = data["http"]
    assert http["errors"] == 0 and http["candidate_counts"] == {"20": 30}
    assert data["in_process"]["floored_share"] > 0.0  # new items get the floor
