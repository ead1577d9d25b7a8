"""What an operator does to the loop in Airflow's UI (clear a task, let a killed step
restart) must leave it consistent: the operator helper of stop 44 found three ways it did
not, each reproduced here against a real MLflow registry (SQLite) and event store.

* a rollback (or expiry) whose step died between its record and the alias removal left
  ``@staging`` on the rolled-back version for good;
* clearing a failed ``promote`` moved to production a version whose rollout had ended
  (expired, rolled back) meanwhile;
* clearing an earlier run's failed ``gate`` moved ``@staging`` back over a newer version
  (the freshness check had run before the newer one existed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from eventstore.contract import GATE_REASONS_TAG, WINDOW_STOP_TAG
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.rollouts import ENDS, list_rollouts, record_step, start_rollout
from tests.rollout_support import MODEL, policy_state
from training import runspec, steps
from training.refs import EvaluatedRef, RegisteredRef
from training.rollout import rollout_step
from training.settings import PipelineSettings

END = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)


@dataclass
class Loop:
    root: Path
    settings: PipelineSettings
    registry: Any
    engine: Any
    production: str

    def register(self, key: str, window_stop: datetime | None = None) -> str:
        state = policy_state("uniform", self.root / f"{key}.npz")
        tags = {} if window_stop is None else {WINDOW_STOP_TAG: window_stop.isoformat()}
        info = self.registry.register_candidate(state_path=state, run_key=key, tags=tags)
        return str(info.version)

    def staged(self) -> str | None:
        held = self.registry.by_alias(self.settings.candidate_alias)
        return None if held is None else str(held.version)

    def production_now(self) -> str | None:
        held = self.registry.by_alias(self.settings.production_alias)
        return None if held is None else str(held.version)

    def ended(self, version: str, action: str) -> None:
        """A rollout of the staged ``version`` recorded as ended by ``action`` (the
        controller's record), the alias left where it was: the step died after it."""
        rollout = start_rollout(
            self.engine,
            MODEL,
            version,
            0.05,
            reason="test",
            production_version=self.production,
            at=datetime.now(UTC) - timedelta(minutes=5),
        )
        record_step(self.engine, rollout.id, action, reason=f"{action} (test)")  # type: ignore[arg-type]


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    from modelregistry.registry import ModelRegistry

    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    engine = make_engine(store_url)
    upgrade(engine)
    settings = PipelineSettings(
        workspace=tmp_path / "ws",
        database_url=store_url,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        model_name=MODEL,
        runs_dir=tmp_path / "runs",
        retrain_auto_promote=True,
    )
    registry = ModelRegistry.from_settings(settings)
    world = Loop(tmp_path, settings, registry, engine, "")
    world.production = world.register("production", END - timedelta(days=2))
    registry.promote(world.production, by="test", reason="the first production")
    yield world
    engine.dispose()


@pytest.mark.parametrize(
    ("action", "auto_start"), [("rollback", True), ("expire", True), ("rollback", False)]
)
def test_an_end_whose_alias_removal_was_lost_is_finished_at_the_next_step(
    loop: Loop, action: str, auto_start: bool
) -> None:
    version = loop.register("worse")
    loop.registry.record_gate(version, True, ["passed (test)"])
    loop.ended(version, action)
    assert loop.staged() == version  # what the killed step left

    settings = loop.settings.model_copy(update={"rollout_auto_start": auto_start})
    step = rollout_step(settings)
    assert step.action == "idle" and "removed now" in step.reason, step
    assert loop.staged() is None
    assert rollout_step(settings).action == "idle"  # nothing more to do
    assert loop.registry.last_move(loop.settings.candidate_alias)["version"] is None


def test_the_approval_shows_what_the_online_rollout_said(loop: Loop) -> None:
    from eventstore.contract import ROLLOUT_REASON_TAG, ROLLOUT_STATUS_TAG
    from training.promotion import plan_promotion

    version = loop.register("worse")
    loop.registry.tag_version(
        version, {ROLLOUT_STATUS_TAG: "rolled_back", ROLLOUT_REASON_TAG: "worse by 0.24"}
    )
    plan = plan_promotion(version, settings=loop.settings)
    assert "- online rollout: rolled_back — worse by 0.24" in plan["body"], plan["body"]


def test_a_version_staged_again_after_its_rollout_ended_stays_staged(loop: Loop) -> None:
    version = loop.register("worse")
    loop.registry.record_gate(version, True, ["passed (test)"])
    loop.ended(version, "rollback")
    loop.registry.remove_alias(loop.settings.candidate_alias, by="test", reason="gone")
    loop.registry.set_alias(
        loop.settings.candidate_alias, version, by="an operator", reason="once more, on purpose"
    )
    step = rollout_step(loop.settings)
    assert step.action == "idle" and "rolled out before" in step.reason, step
    assert loop.staged() == version


def test_a_gate_failed_version_staged_outside_banditops_is_not_rolled_out(loop: Loop) -> None:
    version = loop.register("failed")
    loop.registry.record_gate(version, False, ["failed (test)"])
    # MLflow's own UI or client: no approval, no record
    loop.registry.client.set_registered_model_alias(MODEL, loop.settings.candidate_alias, version)
    step = rollout_step(loop.settings)
    assert step.action == "idle" and "no recorded move put it there" in step.reason, step
    assert list_rollouts(loop.engine, MODEL, version=version) == []
    # an approved override is recorded: that one is rolled out
    loop.registry.set_alias(
        loop.settings.candidate_alias, version, by="alice", reason="approved override"
    )
    assert rollout_step(loop.settings).action == "start"


def _spec(loop: Loop, run_key: str) -> runspec.RunSpec:
    form = {"auto_promote": True}
    return runspec.plan(form, run_key=run_key, interval_end=END, settings=loop.settings)


def _registered(loop: Loop, version: str, run_key: str) -> RegisteredRef:
    return RegisteredRef(
        version=version, model_name=MODEL, run_key=run_key, created=True, rows=1, metrics=""
    )


@pytest.mark.parametrize("action", ["expire", "rollback", "stop"])
def test_a_cleared_promote_never_moves_a_version_whose_rollout_ended(
    loop: Loop, action: str
) -> None:
    version = loop.register("nightly", END - timedelta(hours=1))
    loop.registry.record_gate(version, True, ["passed (test)"])
    loop.ended(version, action)  # while the run's promote had failed
    promoted = steps.promote(_spec(loop, "nightly"), _registered(loop, version, "nightly"))
    assert not promoted.promoted and f"ended {ENDS[action]}" in promoted.reason, promoted
    assert loop.production_now() == loop.production
    (latest,) = list_rollouts(loop.engine, MODEL, version=version)
    assert latest.status != "promoted"


def test_a_late_gate_never_stages_an_older_window_over_a_newer_one(loop: Loop) -> None:
    older = loop.register("run-1", END - timedelta(hours=20))
    newer = loop.register("run-2", END - timedelta(hours=2))
    loop.registry.record_gate(newer, True, ["passed (test)"])
    assert loop.staged() == newer
    evaluated = EvaluatedRef(summary="", passed=True, reasons=["passed"], baseline_version=None)
    # the operator clears run 1's failed gate: its evaluation passed before run 2 existed
    assert steps.gate(_spec(loop, "run-1"), _registered(loop, older, "run-1"), evaluated) is False
    assert loop.staged() == newer
    reasons = loop.registry.get(older).tags[GATE_REASONS_TAG]
    assert f"before version {newer}'s" in reasons and "checked again" in reasons, reasons
    # nor does its promote step move production past the newer window
    loop.registry.promote(newer, by="test", reason="newer")
    loop.registry.set_alias(loop.settings.candidate_alias, older, by="test", reason="by hand")
    loop.registry.record_gate(older, True, ["passed (test)"])
    promoted = steps.promote(_spec(loop, "run-1"), _registered(loop, older, "run-1"))
    assert not promoted.promoted and f"before version {newer}'s" in promoted.reason, promoted
    assert loop.production_now() == newer


def test_a_fresh_gate_and_promote_still_move_their_aliases(loop: Loop) -> None:
    version = loop.register("run-3", END - timedelta(hours=1))
    evaluated = EvaluatedRef(summary="", passed=True, reasons=["passed"], baseline_version=None)
    assert steps.gate(_spec(loop, "run-3"), _registered(loop, version, "run-3"), evaluated)
    assert loop.staged() == version
    promoted = steps.promote(_spec(loop, "run-3"), _registered(loop, version, "run-3"))
    assert promoted.promoted and loop.production_now() == version


@pytest.mark.parametrize(
    ("field", "value"),
    [("tolerance", 0.99), ("min_ess", 0.0), ("max_unsupported", 1.0), ("support_threshold", 0.0)],
)
def test_auto_promote_needs_the_configured_gate(loop: Loop, field: str, value: float) -> None:
    """Whoever may trigger bandit_retrain could relax the gate in its form and promote
    straight to production with ``auto_promote``: no approval, no flag (operator helper,
    stop 44). Relaxed knobs still stage (the rollout's online test decides), but not
    together with auto_promote."""
    with pytest.raises(ValueError, match=f"auto_promote needs the configured gate: {field}"):
        runspec.plan({"auto_promote": True, field: value}, run_key="r1", interval_end=END,
                     settings=loop.settings)  # fmt: skip
    relaxed = runspec.plan(
        {"auto_promote": False, field: value},
        run_key="r2",
        interval_end=END,
        settings=loop.settings,
    )
    assert getattr(relaxed, field) == value and not relaxed.auto_promote
    stricter = {"tolerance": 0.0, "min_ess": 500.0, "max_unsupported": 0.05}
    assert runspec.plan(
        {"auto_promote": True, **stricter}, run_key="r3", interval_end=END, settings=loop.settings
    ).auto_promote


def test_a_run_cannot_turn_on_auto_promote_the_settings_leave_off(loop: Loop) -> None:
    """With approvers and the four-eyes rule configured on bandit_promote, whoever may
    trigger bandit_retrain asked for ``auto_promote`` in its form and the version moved
    production with no approval (security helper, stop 56). The form may turn it off."""
    strict = loop.settings.model_copy(
        update={"retrain_auto_promote": False, "promote_approvers": ["alice"]}
    )
    with pytest.raises(ValueError, match="auto_promote is off in the settings"):
        runspec.plan({"auto_promote": True}, run_key="r1", interval_end=END, settings=strict)
    assert not runspec.plan({}, run_key="r2", interval_end=END, settings=strict).auto_promote
    off = runspec.plan({"auto_promote": False}, run_key="r3", interval_end=END,
                       settings=loop.settings)  # fmt: skip
    assert not off.auto_promote


def test_a_rollout_past_the_end_fixed_at_its_start_expires_at_the_next_step(loop: Loop) -> None:
    """``bandit_rollout`` paused in Airflow's UI past a rollout's end: the replicas stopped
    splitting the users at ``ends_by``, and the controller's next step records the expiry,
    even though its setting was raised since (it can shorten a rollout, not lengthen it)."""
    version = loop.register("equal")
    loop.registry.record_gate(version, True, ["passed (test)"])
    loop.registry.set_alias(loop.settings.candidate_alias, version, by="test", reason="gate")
    started = start_rollout(
        loop.engine, MODEL, version, 0.05, reason="test", production_version=loop.production,
        max_duration_s=86_400.0,
    )  # fmt: skip
    assert started.ends_by == started.started_at + timedelta(days=1)
    later = started.started_at + timedelta(days=2)
    longer = loop.settings.model_copy(update={"rollout_max_duration_s": 30 * 86_400.0})
    assert rollout_step(longer, now=later - timedelta(days=1, seconds=1)).action == "hold"
    step = rollout_step(longer, now=later)
    assert step.action == "expire", step
    assert step.reason.startswith("expired after 2.0 d at stage 1/4 (5%): no evidence either way")
    assert loop.staged() is None
    # a shorter setting than the recorded end applies at the step
    again = loop.register("equal-again")
    loop.registry.record_gate(again, True, ["passed (test)"])
    loop.registry.set_alias(loop.settings.candidate_alias, again, by="test", reason="gate")
    started = start_rollout(
        loop.engine, MODEL, again, 0.05, reason="test", production_version=loop.production,
        max_duration_s=86_400.0,
    )  # fmt: skip
    hours = started.started_at + timedelta(hours=2)
    assert rollout_step(loop.settings, now=hours).action == "hold"
    shorter = loop.settings.model_copy(update={"rollout_max_duration_s": 3_600.0})
    assert rollout_step(shorter, now=hours).action == "expire"


def test_a_stop_is_taken_at_once_and_only_of_the_rollout_named(loop: Loop) -> None:
    """``bandit_rollout_stop``: no approval to wait for (a stop went through
    ``bandit_promote`` and queued behind a pending promotion's approval, up to its window
    and 30 min); a stop names the rollout the person saw."""
    from training.promotion import refuse_stop_conf, stop_rollout

    version = loop.register("equal")
    loop.registry.record_gate(version, True, ["passed (test)"])
    loop.registry.set_alias(loop.settings.candidate_alias, version, by="test", reason="gate")
    assert rollout_step(loop.settings).action == "start"
    for bad, expected in [
        ("v2", "version must be a registered version number"),
        (str(int(version) + 1), f"is of version {version}, not {int(version) + 1}; nothing"),
    ]:
        with pytest.raises((ValueError, LookupError), match=expected):
            stop_rollout(bad, "why", loop.settings, triggered_by="alice")
    with pytest.raises(ValueError, match="reason"):
        stop_rollout(version, "a\x00b", loop.settings, triggered_by="alice")
    assert list_rollouts(loop.engine, MODEL)[0].running  # nothing above stopped it
    out = stop_rollout(version, " ", loop.settings, triggered_by="alice")
    assert out["action"] == "stop", out
    (ended,) = list_rollouts(loop.engine, MODEL)
    assert ended.status == "stopped"
    assert ended.reason == "stopped by alice: stopped through bandit_rollout_stop"
    assert loop.staged() == version  # a person may still promote it
    with pytest.raises(LookupError, match="nothing to stop"):
        stop_rollout("", "again", loop.settings, triggered_by="alice")
    with pytest.raises(ValueError, match="trigger bandit_rollout_stop"):
        refuse_stop_conf({"version": "", "stop_rollout": True})
    refuse_stop_conf({"version": "3"})


@pytest.mark.parametrize("by", ["bandit_rollout", "alice"])
def test_a_promotion_whose_step_died_before_its_record_keeps_its_numbers(
    loop: Loop, by: str
) -> None:
    """The controller (or ``bandit_promote``) moved ``@production`` to the rollout's
    version and died before recording it: the next step recorded "moved outside the
    rollout", without the test's numbers or the approver. The recorded move's reason is
    the step's now."""
    version = loop.register("better")
    loop.registry.record_gate(version, True, ["passed (test)"])
    loop.registry.set_alias(loop.settings.candidate_alias, version, by="test", reason="gate")
    assert rollout_step(loop.settings).action == "start"
    numbers = "promoted at stage 4/4 (100%): better than production; Δ 0.031 [0.004, 0.058]"
    loop.registry.promote(version, by=by, reason=numbers)  # ... and the step died here
    step = rollout_step(loop.settings)
    assert step.action == "promote", step
    if by == "bandit_rollout":
        assert step.reason == f"{numbers} (recorded by a later step)"
    else:
        assert step.reason.startswith("promoted by alice at ") and numbers in step.reason
    (ended,) = list_rollouts(loop.engine, MODEL)
    assert ended.status == "promoted" and numbers in ended.reason


def test_a_version_rolled_back_from_production_is_not_rolled_out_again(loop: Loop) -> None:
    """An auto-promoted version holds ``@staging`` and ``@production``: ``banditops
    rollback`` (or ``bandit_promote`` with rollback) moved production back and left
    ``@staging``, and the next controller step started a rollout of the version just
    taken away (upgrade helper, stop 45)."""
    version = loop.register("auto-promoted")
    loop.registry.record_gate(version, True, ["passed (test)"])  # → @staging
    loop.registry.promote(version, by="test", reason="auto_promote")
    assert loop.staged() == version == loop.production_now()
    loop.registry.rollback(by="alice", reason="clicks fell")
    assert loop.production_now() == loop.production and loop.staged() is None
    assert loop.registry.last_move(loop.settings.candidate_alias)["reason"] == (
        f"rollback from {version}: clicks fell"
    )
    step = rollout_step(loop.settings)
    assert step.action == "idle", step
    # a rollback of @staging itself, or of a production whose version is not staged,
    # leaves the other alias alone
    other = loop.register("other")
    loop.registry.record_gate(other, True, ["passed (test)"])
    loop.registry.promote(version, by="test", reason="again")
    loop.registry.rollback(by="alice", reason="back")
    assert loop.staged() == other


def test_a_rollout_from_before_revision_0006_sees_a_production_moved_by_mlflow_itself(
    loop: Loop,
) -> None:
    """A rollout started by an older release recorded no production version: a move of
    ``@production`` by MLflow's own client (no recorded move) went unseen, and the
    production arm mixed two versions (upgrade helper, stop 45)."""
    version = loop.register("candidate")
    loop.registry.record_gate(version, True, ["passed (test)"])
    start_rollout(loop.engine, MODEL, version, 0.05, reason="started by an older release")
    assert rollout_step(loop.settings).action == "hold"
    other = loop.register("other")
    loop.registry.client.set_registered_model_alias(MODEL, "production", other)
    step = rollout_step(loop.settings)
    assert step.action == "stop", step
    assert step.reason.startswith(
        f"@production is on version {other}, not on version {loop.production} as when the "
        "rollout started"
    )


def test_a_step_that_finds_its_rollout_stopped_under_it_steps_again(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person stops the rollout (``banditops rollout stop``, ``bandit_rollout_stop``)
    while a ``bandit_rollout`` step reads it: the step wrote nothing and, before, failed
    its task with "is stopped, not running" (a red task in the UI for a stop that
    worked); now it steps again from the new state."""
    import training.rollout as controller

    version = loop.register("race")
    loop.registry.record_gate(version, True, ["passed (test)"])
    loop.registry.set_alias(loop.settings.candidate_alias, version, by="test", reason="race")
    assert rollout_step(loop.settings).action == "start"
    reads = {"n": 0}
    own_read = controller.current_rollout

    def read_then_stopped(engine: Any, name: str) -> Any:
        running = own_read(engine, name)
        reads["n"] += 1
        if reads["n"] == 1:  # the person's stop lands right after the step's read
            controller.stop(loop.settings, by="alice", reason="stopped by hand")
        return running

    monkeypatch.setattr(controller, "current_rollout", read_then_stopped)
    step = rollout_step(loop.settings)
    assert reads["n"] >= 2, reads  # read again after the refused record
    assert step.action == "idle" and "rolled out before" in step.reason, step
    (ended,) = list_rollouts(loop.engine, MODEL, version=version)
    assert ended.status == "stopped" and "alice" in ended.reason
