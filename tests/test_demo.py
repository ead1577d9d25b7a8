"""`banditops demo` end to end, small: service → day 1 → Airflow retrain → day 2 → retrain → day 3."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
    ),
]


def test_demo_runs_the_whole_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelregistry.registry import ModelRegistry
    from ops.demo import MODEL_NAME, run_demo

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
    assert days[2]["fallback_share"] == 0.0 and days[2]["model_version"].endswith("/2")
    # every day was served over HTTP: each request answered and logged by the service
    assert all(d["errors"] == 0 and d["decisions"] == 1500 for d in days)
    store = sqlite3.connect(tmp_path / "ws" / "banditops.db")
    try:
        logged = dict(
            store.execute(
                "SELECT COALESCE(model_version, 'fallback'), COUNT(*) FROM decisions "
                "GROUP BY COALESCE(model_version, 'fallback')"
            ).fetchall()
        )
    finally:
        store.close()
    assert logged == {
        "fallback": 1500,
        days[1]["model_version"]: 1500,
        days[2]["model_version"]: 1500,
    }
    # the bandit learnt: CTR after the first nightly run beats the uniform fallback of day 1
    assert days[1]["ctr"] > days[0]["ctr"] + 0.1
    assert days[2]["ctr"] > days[0]["ctr"] + 0.1
    # two nightly runs registered two versions, and each was promoted to @production
    assert [v["version"] for v in versions] == ["1", "2"]
    assert "production" in versions[1]["aliases"]
    history = ModelRegistry(f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}", MODEL_NAME)
    production = [m["version"] for m in history.alias_history() if m["alias"] == "production"]
    assert production == ["1", "2"]
    for v in versions:
        assert v["realized_ctr"] is not None
        # each registered head learnt every row of its window (the refit), of which the
        # evaluation held out the last part
        assert v["head_rows"] == v["window_rows"] > v["eval_rows"] > 0
        assert v["algorithm"] == "shared_lints" and "candidates" in v and "floor" in v
        lo, hi = v["ope_ci"]
        assert lo <= v["ope_estimate"] <= hi
    saved = json.loads((tmp_path / "ws" / "demo.json").read_text())
    assert saved["days"] == days and (tmp_path / "ws" / "demo.png").stat().st_size > 0
