"""`banditops models / promote / rollback` against a real SQLite MLflow registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bandit_core import make_policy, save_policy
from modelregistry.registry import ModelRegistry
from ops.cli import app

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
)


def test_models_promote_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANDITOPS_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("BANDITOPS_MLFLOW_TRACKING_URI", raising=False)
    registry = ModelRegistry(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    for seed in (1, 2):
        policy = make_policy("linucb", dim_user=2)
        policy.update(np.full(2, seed), "a", 1.0)
        registry.register_candidate(
            state_path=save_policy(policy, tmp_path / f"s{seed}.npz"), run_key=f"run-{seed}"
        )
    runner = CliRunner()
    assert runner.invoke(app, ["promote", "1", "--reason", "first"]).exit_code == 0
    out = runner.invoke(app, ["promote", "2", "--by", "alice"])
    assert out.exit_code == 0 and "@production → version 2" in out.output
    listing = runner.invoke(app, ["models"])
    assert listing.exit_code == 0 and "production" in listing.output and "run-2" in listing.output
    back = runner.invoke(app, ["rollback", "--reason", "bad CTR"])
    assert back.exit_code == 0 and "@production → version 1" in back.output
    assert registry.get("2").tags["rolled_back_by"] == "cli"
    unknown = runner.invoke(app, ["promote", "9"])
    assert unknown.exit_code != 0 and "no version '9'" in unknown.output
    again = runner.invoke(app, ["rollback"])
    assert again.exit_code == 2 and again.output.startswith("error: version")
    assert "no previous version" in again.output


def test_promote_of_a_failed_gate_needs_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANDITOPS_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("BANDITOPS_MLFLOW_TRACKING_URI", raising=False)
    registry = ModelRegistry(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    policy = make_policy("linucb", dim_user=2)
    registry.register_candidate(state_path=save_policy(policy, tmp_path / "s.npz"), run_key="r")
    registry.record_gate("1", False, ["dr lower bound 0.10 < 0.29"])
    runner = CliRunner()
    refused = runner.invoke(app, ["promote", "1"])
    assert refused.exit_code != 0 and "--force" in refused.output
    assert registry.by_alias("production") is None
    forced = runner.invoke(app, ["promote", "1", "--force"])
    assert forced.exit_code == 0 and "failed its gate" in forced.output
    assert registry.by_alias("production").version == "1"


def test_models_json_reports_rows_floor_dr_gate_and_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("BANDITOPS_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("BANDITOPS_MLFLOW_TRACKING_URI", raising=False)
    registry = ModelRegistry(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    policy = make_policy("linucb", dim_user=2)
    challengers = [
        {"algorithm": "shared_lints", "dr": 0.31, "ci_low": 0.29},
        {"algorithm": "neural_linear", "dr": 0.30, "ci_low": 0.26},
    ]
    registry.register_candidate(  # a retrain's version (the tags the pipeline writes)
        state_path=save_policy(policy, tmp_path / "a.npz"),
        run_key="nightly-1",
        params={"algorithm": "linucb"},
        metrics={
            "ope.candidate.dr.value": 0.31,
            "ope.candidate.dr.ci_low": 0.29,
            "ope.candidate.dr.ci_high": 0.33,
        },
        tags={
            "algorithm": "linucb",
            "window_rows": "1500",
            "head_rows": "1500",
            "eval_rows": "300",
            "train_rows": "1200",
            "window_stop": "2026-12-03T00:00:00+00:00",
            "floor": "0.05",
            "challengers": json.dumps(challengers),
        },
    )
    registry.record_gate("1", True, ["dr lower bound 0.29 ≥ 0.20"])
    registry.register_candidate(  # an old version: none of it recorded
        state_path=save_policy(policy, tmp_path / "b.npz"), run_key="old"
    )
    registry.register_candidate(  # a version of 9d58d9d: its window's rows as ``rows``
        state_path=save_policy(policy, tmp_path / "c.npz"), run_key="older", tags={"rows": "2000"}
    )
    runner = CliRunner()
    out = runner.invoke(app, ["models", "--json"])
    assert out.exit_code == 0, out.output
    first, second, third = json.loads(out.output)
    assert third["window_rows"] == 2000 and third["head_rows"] is None
    assert first["version"] == "1" and "staging" in first["aliases"]
    assert first["algorithm"] == "linucb" and first["floor"] == 0.05
    assert (first["window_rows"], first["head_rows"], first["eval_rows"]) == (1500, 1500, 300)
    assert first["dr"] == {"value": 0.31, "ci_low": 0.29, "ci_high": 0.33}
    assert first["gate_passed"] is True and first["gate_reasons"] == ["dr lower bound 0.29 ≥ 0.20"]
    assert first["candidates"] == challengers
    assert second["version"] == "2" and second["gate_passed"] is None
    for key in ("algorithm", "window_rows", "head_rows", "floor", "dr", "candidates"):
        assert second[key] is None, key
    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0, table.output
    assert "1500" in table.output and "shared_lints," in table.output
    assert "neural_linear" in table.output
    assert "passed" in table.output and "0.05" in table.output


def test_models_lists_the_newest_and_every_aliased_version_and_says_what_it_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``banditops models`` read every version's run (5.7 s at two years of nightly
    versions on SQLite); it lists the newest ``LISTED_VERSIONS`` and every older one
    that holds an alias, says how many it left out, and ``--all`` lists every version.
    The JSON stays a list of the same objects (the note goes to stderr)."""
    import json

    from modelregistry.registry import LISTED_VERSIONS
    from modelregistry.report import SUMMARY_KEYS
    from tests.registry_support import count_calls, many_versions

    monkeypatch.setenv("BANDITOPS_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("BANDITOPS_MLFLOW_TRACKING_URI", raising=False)
    registry = ModelRegistry(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    total = 2 * LISTED_VERSIONS
    many_versions(registry, total, {"production": 2, "staging": 7})
    left_out = total - LISTED_VERSIONS - 2
    calls = count_calls(monkeypatch)
    runner = CliRunner()
    out = runner.invoke(app, ["models", "--json"])
    assert out.exit_code == 0, out.output
    listed = json.loads(out.stdout)
    newest = [str(n) for n in range(total - LISTED_VERSIONS + 1, total + 1)]
    assert [v["version"] for v in listed] == ["2", "7", *newest]  # oldest first, as before
    assert all(tuple(v) == SUMMARY_KEYS for v in listed)
    assert listed[0]["aliases"] == ["production"] and listed[0]["run_key"] == "night-2"
    assert f"{left_out} older versions without an alias not listed" in out.stderr
    assert calls == {"get_run": 0, "search_runs": 1}
    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0, table.output
    assert "night-7" in table.output and "night-8" not in table.output
    assert f"{left_out} older versions" in table.output and "--all" in table.output
    every = runner.invoke(app, ["models", "--json", "--all"])
    assert len(json.loads(every.stdout)) == total and not every.stderr
    few = runner.invoke(app, ["models", "--json", "--limit", "3"])
    assert [v["version"] for v in json.loads(few.stdout)] == ["2", "7", *newest[-3:]]
    both = runner.invoke(app, ["models", "--all", "--limit", "3"])
    assert both.exit_code == 2 and "not both" in both.output
