"""The OPE speed benchmark runs and writes the documented JSON (timings are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import ope_speed
from validation.ope import check_feedback


def test_speed_benchmark_json(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    ope_speed.main(["--rows", "5000", "--resamples", "20", "--repeats", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["benchmark"] == "ope_speed"
    assert [r["estimator"] for r in result["rows"]] == ["ips", "snips", "dr"]
    for row in result["rows"]:
        assert set(row) == {"estimator", "n", "seconds", "baseline_seconds"}
        assert row["n"] == 5000 and row["seconds"] > 0 and row["baseline_seconds"] > 0
    assert {"resamples", "n", "seconds"} <= set(result["bootstrap"])
    assert result["bootstrap"]["resamples"] == 20


def test_synthetic_log_is_valid_and_seeded() -> None:
    a = ope_speed.synthetic_log(300, 6, seed=1)
    b = ope_speed.synthetic_log(300, 6, seed=1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    fb = check_feedback(
        a["reward"],
        a["action"],
        a["pscore"],
        a["action_dist"],
        estimated_rewards=a["estimated_rewards"],
    )
    assert fb.n_actions == 6
