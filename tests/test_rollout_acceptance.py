"""Acceptance of the staged rollout, through real HTTP: a seeded simulator sends users
and clicks to the decision service, which serves the registry's ``@production`` and the
rollout's ``@staging`` version with the share the event store says; the controller step
(what each ``bandit_rollout`` run does) reads the outcome per arm and decides.

* a better candidate advances 5 → 20 → 50 → 100 % and becomes ``@production``;
* a worse one is rolled back at the first stage, once it has enough evidence, and leaves
  ``@staging``; most users never saw it;
* an equal one holds until its maximum duration and expires with a clear verdict.
Stage durations and sample sizes are tiny settings, so each stage takes a few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.rollouts import current_rollout, rollout_history
from tests.rollout_support import MODEL, LiveService, live_service, register
from training.rollout import StepResult, rollout_step
from training.settings import PipelineSettings

BATCH = 300
WINDOW_S = 0.5


@dataclass
class World:
    root: Path
    settings: PipelineSettings
    registry: Any
    service: LiveService
    engine: Any
    production: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from modelregistry.registry import ModelRegistry

    root = tmp_path_factory.mktemp("rollout")
    store_url = f"sqlite:///{root / 'events.db'}"
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    engine = make_engine(store_url)
    upgrade(engine)
    settings = PipelineSettings(
        workspace=root / "pipelines",
        database_url=store_url,
        mlflow_tracking_uri=tracking,
        model_name=MODEL,
        sqlite_synchronous="NORMAL",
        rollout_min_stage_s=0.0,
        rollout_min_samples=30,
        rollout_design_n=100,
        rollout_margin=0.02,
        rollout_alpha=0.05,
        rollout_max_duration_s=3600.0,
        # a step counts the decisions whose reward window has closed (the replay's rule)
        reward_window_s=WINDOW_S,
    )
    registry = ModelRegistry.from_settings(settings)
    production = register(registry, "uniform", root, "production")
    registry.promote(production, by="test", reason="the first production")
    with live_service(root / "service", store_url, tracking) as service:
        yield World(root, settings, registry, service, engine, production)
    engine.dispose()


def _drive(
    world: World, settings: PipelineSettings, seed: int, max_rounds: int = 20
) -> list[StepResult]:
    """Alternate one poll of the service, a batch of traffic and one controller step until
    the rollout ends; the steps taken."""
    rng = np.random.default_rng(seed)
    steps = [rollout_step(settings)]
    assert steps[0].action == "start", steps[0]
    for _ in range(max_rounds):
        info = world.service.poll()
        assert info["candidate_share"] == steps[-1].rollout.share  # type: ignore[union-attr]
        world.service.traffic(BATCH, rng)
        time.sleep(WINDOW_S)  # the batch's reward windows close
        steps.append(rollout_step(settings))
        if steps[-1].action not in ("hold", "advance"):
            break
    return steps


def _interval(step: StepResult) -> tuple[float, float]:
    """The confidence sequence's interval a step decided on."""
    r = step.readout
    assert r is not None and r.ci_low is not None and r.ci_high is not None, step
    return r.ci_low, r.ci_high


def _gate(world: World, kind: str, key: str) -> str:
    version = register(world.registry, kind, world.root, key)
    world.registry.record_gate(version, True, ["offline gate passed (test)"])
    return version


def test_worse_candidate_is_rolled_back_at_the_first_stage(world: World) -> None:
    version = _gate(world, "worse", "worse")
    steps = _drive(world, world.settings, seed=1)
    actions = [s.action for s in steps]
    assert actions[-1] == "rollback" and "advance" not in actions, actions
    last = steps[-1]
    assert last.rollout is not None and last.rollout.stage_index == 0  # still at 5 %
    assert _interval(last)[1] < -world.settings.rollout_margin
    assert (
        last.readout is not None and last.readout.n_candidate >= world.settings.rollout_min_samples
    )
    # most users never saw it: at most the first stage's share of the traffic
    assert last.readout.n_candidate < 0.1 * (last.readout.n_production + last.readout.n_candidate)
    assert "worse than production" in last.reason
    # the registry: staging removed, the numbers tagged; production unchanged
    assert world.registry.by_alias("staging") is None
    tags = world.registry.get(version).tags
    assert tags["rollout_action"] == "rollback" and tags["rollout_status"] == "rolled_back"
    assert float(tags["rollout_ci_high"]) == pytest.approx(last.readout.ci_high)
    assert world.registry.by_alias("production").version == world.production
    # the audit: every step, newest first
    history = rollout_history(world.engine, MODEL, rollout_id=last.rollout.id)
    assert [h.action for h in reversed(history)] == actions
    assert world.service.poll()["candidate"] is None  # no candidate traffic any more
    assert rollout_step(world.settings).action == "idle"  # never rolled out again


def test_cli_starts_shows_and_stops_a_rollout(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``banditops rollout start|status|stop``: a stop is recorded with who and why, the
    candidate gets no more traffic, and the controller never restarts that version."""
    from typer.testing import CliRunner

    from ops.cli import app

    version = register(world.registry, "equal", world.root, "by-hand")
    for key, value in {
        "DATABASE_URL": world.settings.store_url,
        "MLFLOW_TRACKING_URI": world.settings.tracking_uri,
        "WORKSPACE": str(world.root / "cli"),
    }.items():
        monkeypatch.setenv(f"BANDITOPS_{key}", value)
    runner = CliRunner()
    # not @staging: the next step would stop it, and it got no traffic (before: started)
    out = runner.invoke(app, ["rollout", "start", version, "--reason", "canary by hand"])
    assert out.exit_code == 2, out.output
    assert out.output.startswith(f"error: version {version} is not @staging (no version is)")
    assert current_rollout(world.engine, MODEL) is None
    out = runner.invoke(app, ["rollout", "start", world.production])
    assert out.exit_code == 2 and "is @production already" in out.output, out.output
    out = runner.invoke(app, ["rollout", "start", "999"])
    assert out.exit_code == 2 and out.output.startswith("error: ") and "999" in out.output
    world.registry.set_alias("staging", version, by="alice", reason="canary")
    out = runner.invoke(app, ["rollout", "start", version, "--reason", "canary by hand"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith(
        f"start: canary by hand: version {version} at 5% of the users against production "
        f"{world.production}"
    ), out.output
    assert world.service.poll()["candidate_share"] == 0.05
    out = runner.invoke(app, ["rollout", "status"])
    assert out.exit_code == 0 and f"of {MODEL}/{version}: running, stage 1 at 5%" in out.output
    started = current_rollout(world.engine, MODEL)
    assert started is not None and started.ends_by is not None
    shown = " ".join(out.output.split())  # the console wraps long lines
    assert f"ends by {started.ends_by:%Y-%m-%d %H:%M:%S})" in shown, out.output
    out = runner.invoke(app, ["rollout", "stop", "--by", "alice", "--reason", "wrong version"])
    assert out.exit_code == 0 and "stopped by alice: wrong version" in out.output, out.output
    assert current_rollout(world.engine, MODEL) is None
    assert world.registry.get(version).tags["rollout_status"] == "stopped"
    out = runner.invoke(app, ["rollout", "stop"])
    assert out.exit_code == 2 and out.output.startswith("error: no rollout"), out.output


def test_equal_candidate_holds_then_expires_with_a_verdict(world: World) -> None:
    """Three rounds of traffic hold (the interval keeps 0); a step after the maximum
    duration (here: 1 s, already past, where the rounds ran under an hour's) expires."""
    version = _gate(world, "equal", "equal")
    steps = _drive(world, world.settings, seed=2, max_rounds=3)
    assert [s.action for s in steps] == ["start", "hold", "hold", "hold"], steps
    assert all(_interval(s)[0] <= 0 <= _interval(s)[1] for s in steps[1:])
    assert steps[-1].readout.n_candidate >= world.settings.rollout_min_samples  # type: ignore[union-attr]
    assert "waiting for a confident difference" in steps[-1].reason
    expiring = world.settings.model_copy(update={"rollout_max_duration_s": 1.0})
    last = rollout_step(expiring)
    assert last.action == "expire", last
    assert _interval(last)[0] <= 0.0 <= _interval(last)[1]
    assert "expired after" in last.reason and "no evidence either way" in last.reason
    assert f"@production stays {world.production}" in last.reason
    assert world.registry.by_alias("staging") is None
    assert world.registry.get(version).tags["rollout_status"] == "expired"
    assert current_rollout(world.engine, MODEL) is None


def test_a_person_staged_version_whose_gate_failed_is_promoted_by_its_online_test(
    world: World,
) -> None:
    """The gate failed offline; a person's approved override moved @staging to it. The
    rollout's last step promotes it on the online test, as the override asked (before:
    the registry refused the promotion, the step raised at every run, and every user
    kept getting the candidate at 100 %)."""
    version = register(world.registry, "better", world.root, "overridden")
    world.registry.record_gate(version, False, ["offline gate failed (test)"])
    world.registry.set_alias("staging", version, by="alice", reason="approved override")
    steps = _drive(world, world.settings, seed=5)
    assert steps[-1].action == "promote", [s.action for s in steps]
    assert "offline gate had failed" in steps[-1].reason
    assert world.registry.by_alias("production").version == version
    assert world.registry.get(version).tags["promoted_despite_gate"] == "true"
    world.registry.promote(world.production, by="test", reason="the uniform baseline again")
    world.registry.remove_alias("staging", by="test", reason="done")


def test_better_candidate_reaches_100_percent_and_production(world: World) -> None:
    version = _gate(world, "better", "better")
    steps = _drive(world, world.settings, seed=3)
    actions = [s.action for s in steps]
    assert actions[-1] == "promote", actions
    shares = [s.rollout.share for s in steps if s.action in ("start", "advance")]  # type: ignore[union-attr]
    assert shares == [0.05, 0.2, 0.5, 1.0]
    last = steps[-1]
    assert _interval(last)[0] > 0
    assert world.registry.by_alias("production").version == version
    tags = world.registry.get(version).tags
    assert tags["rollout_status"] == "promoted" and tags["promoted_by"] == "bandit_rollout"
    info = world.service.poll()
    assert info["production"]["version"] == f"{MODEL}/{version}"
    assert info["candidate_share"] == 0.0


@pytest.mark.parametrize("how", ["banditops", "mlflow"])
def test_a_production_moved_by_hand_mid_rollout_stops_it(world: World, how: str) -> None:
    """A person moves @production while a rollout runs: the production arm's outcomes
    would mix versions, so the next step stops the rollout and says why (before: it went
    on comparing with the old version's decisions, and could promote over the move).
    Moved with MLflow's own client (its UI), the move left no banditops record, and the
    rollout held on."""
    before = world.registry.by_alias("production").version
    other = register(world.registry, "uniform", world.root, f"other-production-{how}")
    version = _gate(world, "equal", f"moved-under-{how}")
    started = rollout_step(world.settings)
    assert started.action == "start" and started.rollout is not None
    assert started.rollout.production_version == before
    if how == "banditops":
        world.registry.set_alias("production", other, by="bob", reason="by hand")
    else:
        world.registry.client.set_registered_model_alias(MODEL, "production", other)
    step = rollout_step(world.settings)
    assert step.action == "stop", step
    assert (
        f"@production is on version {other}, not on version {before} as when the rollout "
        "started" in step.reason
    )
    assert current_rollout(world.engine, MODEL) is None
    assert world.registry.get(version).tags["rollout_status"] == "stopped"
    world.registry.set_alias("production", before, by="test", reason="the tests' production")


def test_production_moved_away_and_back_stops_but_the_move_that_set_it_does_not(
    world: World,
) -> None:
    """A move away from the recorded production and back (A → B → A) leaves the alias
    where it was, but the production arm's outcomes mixed versions: the rollout stops,
    naming the move away. The move that *put* production on the recorded version,
    stamped by a registry host whose clock runs ahead of the controller's, is no reason
    to stop: it stopped a healthy rollout (audit, stop 54)."""
    before = world.registry.by_alias("production").version
    version = _gate(world, "equal", "skewed-clock")
    # the controller's clock runs behind the registry host's: its "now" lies before the
    # stamp of the move below (and after every earlier test's moves in this world)
    stamps = [
        datetime.fromisoformat(str(m["at"]))
        for m in world.registry.alias_history()
        if m.get("alias") == "production"
    ]
    behind = max(stamps, default=datetime.now(UTC) - timedelta(minutes=2))
    behind += timedelta(milliseconds=1)
    time.sleep(0.01)
    world.registry.set_alias("production", before, by="bob", reason="set again")  # now-stamped
    started = rollout_step(world.settings, now=behind)
    assert started.action == "start" and started.rollout is not None
    step = rollout_step(world.settings, now=behind + timedelta(minutes=10))
    assert step.action == "hold", step
    other = register(world.registry, "uniform", world.root, "away-and-back")
    world.registry.set_alias("production", other, by="bob", reason="away")
    world.registry.set_alias("production", before, by="bob", reason="and back")
    step = rollout_step(world.settings, now=behind + timedelta(minutes=20))
    assert step.action == "stop" and f"to {other}" in step.reason, step
    assert world.registry.get(version).tags["rollout_status"] == "stopped"
