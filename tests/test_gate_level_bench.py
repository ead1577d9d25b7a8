"""``benchmarks.gate_level`` runs and tells the paired rule from the unpaired one, and the
level shared among compared candidates from the plain one."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import gate_level


def test_the_gate_level_benchmark_reports_error_and_power(tmp_path: Path) -> None:
    out = gate_level.main(["--windows", "20", "--rows", "2000", "--json", str(tmp_path / "g.json")])
    rows = {r["setting"]: r for r in json.loads((tmp_path / "g.json").read_text())["rows"]}
    assert out["rows"] and set(rows) == {s.name for s in gate_level.SETTINGS}
    assert rows["overlapping, +0.01"]["paired"] >= 0.8 > rows["overlapping, +0.01"]["unpaired"]
    for name, row in rows.items():
        if row["true_difference"] <= 0:
            assert row["paired"] <= 0.2, (name, row)
    chosen = {c["candidates"]: c for c in out["selection"]}
    assert set(chosen) == set(gate_level.SELECTION_SIZES)
    # the shared level's bound is below the plain one's on the same draws
    assert all(c["shared"] <= c["plain"] for c in chosen.values())
    assert chosen[1]["shared"] == chosen[1]["plain"]
