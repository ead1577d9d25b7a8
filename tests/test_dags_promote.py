"""``bandit_promote`` run for real by Airflow: the HITL ``ApprovalOperator`` parks the run
until a person answers through Airflow's Human-in-the-loop REST API (here: the core API
in process, called from a thread as user ``reviewer``), then the alias moves.

The registry holds version 1 (production, from the first nightly run) and version 2 (a
candidate the gate rejected); every test leaves ``production`` at version 1.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

pytest_plugins = ["tests.airflow_support"]


def _promote(dagtools: Any, conf: dict[str, Any], choice: str, comment: str) -> tuple[Any, Any]:
    when = datetime.now(UTC)
    with dagtools.approving("bandit_promote", when, choice, comment) as answers:
        run = dagtools.run_dag("bandit_promote", conf, when=when)
    return run, answers


def test_approved_promotion_moves_production_and_rollback_restores_it(
    first_retrain: Any, second_retrain: Any, dagtools: Any, pipeline_env: Any
) -> None:
    registry = dagtools.registry()
    v1 = dagtools.version_of(first_retrain.run_id).version
    v2 = dagtools.version_of(second_retrain.run_id).version
    assert registry.by_alias("production").version == v1

    run, answers = _promote(dagtools, {"version": v2}, "Approve", "canary looked fine")
    assert run.state == "success", run.tasks
    assert run.tasks == {"gate_report": "success", "approve": "success", "move_alias": "success"}
    # the approver saw the move and the version's gate report before answering
    detail = answers["detail"]
    assert detail["subject"] == f"promote banditops-policy @production: {v1} → {v2}"
    assert "gate: false" in detail["body"] and "lower bound" in detail["body"]
    assert answers["response"][0] == 200
    assert registry.by_alias("production").version == v2
    move = registry.alias_history()[-1]
    assert (move["alias"], move["version"], move["previous"]) == ("production", v2, v1)
    assert move["by"] == dagtools.REVIEWER and move["reason"].endswith("canary looked fine")
    assert registry.get(v2).tags["previous_production"] == v1

    run, answers = _promote(dagtools, {"rollback": True}, "Approve", "CTR dropped")
    assert run.state == "success", run.tasks
    assert answers["detail"]["subject"] == f"rollback banditops-policy @production: {v2} → {v1}"
    assert registry.by_alias("production").version == v1
    move = registry.alias_history()[-1]
    assert (move["alias"], move["version"], move["by"]) == ("production", v1, dagtools.REVIEWER)
    assert registry.get(v2).tags["rolled_back_by"] == dagtools.REVIEWER


def test_rejected_promotion_moves_nothing(
    first_retrain: Any, second_retrain: Any, dagtools: Any, pipeline_env: Any
) -> None:
    registry = dagtools.registry()
    history = registry.alias_history()
    v2 = dagtools.version_of(second_retrain.run_id).version
    run, answers = _promote(dagtools, {"version": v2}, "Reject", "not convinced")
    assert answers["response"][0] == 200
    assert run.state == "success", run.tasks
    assert run.tasks["approve"] == "success" and run.tasks["move_alias"] == "skipped"
    assert registry.alias_history() == history
    assert registry.by_alias("production").version == (
        dagtools.version_of(first_retrain.run_id).version
    )


def test_unknown_version_fails_before_asking_anyone(
    first_retrain: Any, dagtools: Any, pipeline_env: Any
) -> None:
    history = dagtools.registry().alias_history()
    run = dagtools.run_dag("bandit_promote", {"version": "999"})
    assert run.state == "failed"
    assert run.tasks["gate_report"] == "failed"
    assert (
        run.tasks["approve"] == "upstream_failed" and run.tasks["move_alias"] == "upstream_failed"
    )
    assert dagtools.registry().alias_history() == history
