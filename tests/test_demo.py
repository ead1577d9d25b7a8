"""`banditops demo` end to end, small: service → day 1 → Airflow retrain → day 2 → retrain → day 3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
    ),
]


def test_demo_runs_the_whole_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.demo import run_demo

    for key in list(os.environ):
        if key.startswith(("BANDITOPS_", "AIRFLOW")):
            monkeypatch.delenv(key)
    # run_demo points os.environ at its workspace; monkeypatch restores it afterwards
    for key in (
        "BANDITOPS_WORKSPACE",
        "BANDITOPS_DATABASE_URL",
        "BANDITOPS_MLFLOW_TRACKING_URI",
        "AIRFLOW_HOME",
    ):
        monkeypatch.setenv(key, "")
    result = run_demo(tmp_path / "ws", users=200, requests_per_day=1500, seed=3)
    days, versions = result["days"], result["versions"]
    assert [d["day"] for d in days] == [1, 2, 3]
    assert days[0]["fallback_share"] == 1.0 and days[0]["model_version"] is None
    assert days[1]["fallback_share"] == 0.0 and days[1]["model_version"].endswith("/1")
    assert all(d["errors"] == 0 for d in days)
    # the bandit learnt: CTR after the first nightly run beats the uniform fallback of day 1
    assert days[1]["ctr"] > days[0]["ctr"] + 0.1
    assert versions[0]["version"] == "1" and versions[0]["realized_ctr"] is not None
    lo, hi = versions[0]["ope_ci"]
    assert lo <= versions[0]["ope_estimate"] <= hi
    saved = json.loads((tmp_path / "ws" / "demo.json").read_text())
    assert saved["days"] == days and (tmp_path / "ws" / "demo.png").stat().st_size > 0
