"""``banditops demo``: the whole loop on embedded defaults, in one workspace folder.

1. start the decision service (uvicorn on a loopback port, a subprocess) with no model:
   it serves the uniform fallback;
2. simulate day 1 of traffic through real HTTP (users with features, a catalog of items
   with features, clicks from a logistic model with user × item interactions, rewards
   arriving with a delay);
3. run the nightly ``bandit_retrain`` DAG through Airflow (``dag.test()``): extract,
   validate, train, rebuild the head, evaluate off-policy on the held-out part, refit on
   the whole window, register and promote;
4. the service picks the new ``@production`` version up by itself (it polls the registry);
5. simulate day 2, run the DAG again, simulate day 3;
6. day 4, a staged rollout that goes wrong: a deliberately worse candidate (the day-3
   window with its rewards inverted, trained with the same algorithm and registered like
   any version) gets ``@staging``; the rollout controller (what each ``bandit_rollout``
   run does) starts it at the first stage (5 % of users, sticky by hashed user id) and,
   between batches of traffic, reads both arms' online reward and rolls it back as soon
   as the sequential test says it is worse; ``@production`` never moves;
7. print per-day CTR / regret / fallback share and per-version OPE estimate vs realised
   CTR, write plots and JSON, and the commands that open the MLflow and Airflow UIs.

Everything lives under ``--workspace`` (SQLite event store, SQLite MLflow registry and
Airflow metadata, artifacts); a re-run reuses the installed environment and starts the
workspace afresh. The settings the demo runs with (its reward window, the retrain form's
values…) are written to the workspace's ``banditops.toml`` first and every process reads
them from there, so ``banditops airflow standalone --workspace <ws>`` (or the service, or
the CLI) on that workspace later runs the same loop. ``BANDITOPS_*`` variables of the
calling shell are left out: the demo runs on its file alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bandit_core.envs import LogisticClickEnvironment
from eventstore.contract import RETRAIN_DAG
from eventstore.outcomes import FALLBACK
from eventstore.rollouts import Readout
from eventstore.settings import ENV_PREFIX, WORKSPACE_ENV, env_name
from ops import config_file
from ops.airflow_cli import AirflowHome, initialize
from serving.traffic import TrafficStats, simulate_traffic, wait_ready
from training.rollout import StepResult
from training.settings import PipelineSettings

ROOT = Path(__file__).resolve().parents[1]
#: The registered model (the settings' default: the demo does not change it).
MODEL_NAME = str(PipelineSettings.model_fields["model_name"].default)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_environment(seed: int) -> LogisticClickEnvironment:
    """24 items with features, 10 candidates per request, user × item interactions."""
    return LogisticClickEnvironment.make(
        np.random.default_rng(seed),
        n_items=24,
        dim_user=6,
        dim_arm=4,
        n_candidates=10,
        bias=-1.5,
        interaction_scale=2.5,
    )


def demo_settings(root: Path, algorithm: str, seed: int) -> dict[str, Any]:
    """The settings the demo runs with in the workspace ``root``, as written to its
    ``banditops.toml`` (only those that differ from the defaults)."""
    return {
        # the service polls the registry only when one is named (the workspace's SQLite)
        "mlflow_tracking_uri": f"sqlite:///{root.resolve() / 'mlflow.db'}",
        "sqlite_synchronous": "NORMAL",
        "reward_window_s": 2.0,
        "poll_interval_s": 1.0,
        "seed": seed,
        # the nightly retrain's form (also what a run triggered from the Airflow UI uses)
        "retrain_window_days": 1.0,
        "retrain_algorithm": algorithm,
        "retrain_policy_options": {"interactions": True, "n_sim": 200}
        if algorithm.startswith("shared")
        else {},
        "retrain_min_rows": 500,
        "retrain_min_ess": 30.0,
        # a retrained version as good as production must pass: with 0.05 the gate's
        # 95% lower bound against production's estimate made the second promotion a
        # coin flip (their DR intervals are ±0.03 on a day of traffic)
        "retrain_tolerance": 0.1,
        "retrain_auto_promote": True,
        "retrain_seed": seed,
        # day 4's staged rollout, demo-sized: a step may act as soon as each arm has 30
        # rewards (no minimum time on a stage), tuned for a few hundred rewards
        "rollout_min_stage_s": 0.0,
        "rollout_min_samples": 30,
        "rollout_design_n": 100,
        "rollout_margin": 0.02,
    }


@dataclass
class Workspace:
    root: Path

    @property
    def settings(self) -> PipelineSettings:
        """The pipelines' settings of this workspace (from its ``banditops.toml``)."""
        return PipelineSettings(workspace=self.root)

    @property
    def tracking_uri(self) -> str:
        return self.settings.tracking_uri

    @property
    def airflow_home(self) -> Path:
        return AirflowHome(self.root).path

    def env(self) -> dict[str, str]:
        """The variables every process of the demo shares: the workspace (its file holds
        every ``BANDITOPS_*`` setting) and Airflow's."""
        return {
            WORKSPACE_ENV: str(self.root),
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            # dag.test() warns while the empty shard maps (shards = 1) resolve, and Airflow's
            # in-process execution API imports Starlette's deprecated test client: noise
            # for a newcomer; task failures are still errors, and every task log is kept
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "GIT_PYTHON_REFRESH": "quiet",
        }


def without_banditops_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without ``BANDITOPS_*`` variables (they would override the workspace file)."""
    return {k: v for k, v in env.items() if not k.startswith(ENV_PREFIX)}


class Service:
    """``python -m ops serve`` in a subprocess, logging to the workspace; ``seed``
    fixes its decisions' randomness (``BANDITOPS_SEED``), so a demo run repeats."""

    def __init__(self, ws: Workspace, seed: int | None = None) -> None:
        self.ws = ws
        self.seed = seed
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Service:
        with (self.ws.root / "service.log").open("ab") as log:
            self.proc = self._start(log)
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            wait_ready(client, timeout_s=90.0)
        return self

    def _start(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env={
                **without_banditops_env(dict(os.environ)),
                **self.ws.env(),
                **({} if self.seed is None else {env_name("seed"): str(self.seed)}),
                # the demo serves on loopback for its own clients: no token, said so
                env_name("auth_disabled"): "true",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def production_version(self, client: httpx.Client) -> str | None:
        info = client.get("/v1/model").json()
        prod = info.get("production")
        return None if prod is None else str(prod["version"])


def wait_for_version(
    client: httpx.Client, service: Service, version: str, timeout_s: float = 60.0
) -> float:
    """Seconds until the service serves registry version ``version`` (it polls by itself)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        served = service.production_version(client)
        if served is not None and served.endswith(f"/{version}"):
            return time.monotonic() - start
        time.sleep(0.25)
    raise TimeoutError(f"the service did not pick up version {version} within {timeout_s:.0f} s.")


def day_row(day: int, stats: TrafficStats, version: str | None) -> dict[str, Any]:
    return {
        "day": day,
        "ctr": stats.ctr,
        "regret": stats.regret,
        "fallback_share": stats.fallback_share,
        "model_version": version,
        "decisions": stats.decisions,
        "errors": stats.errors,
    }


def plot_summary(days: list[dict[str, Any]], versions: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].bar([f"day {d['day']}" for d in days], [d["ctr"] for d in days], color="#4c72b0")
    axes[0].set_ylabel("click-through rate")
    axes[0].set_title("CTR per day")
    for d, ax_x in zip(days, range(len(days)), strict=True):
        axes[0].text(
            ax_x, d["ctr"], d["model_version"] or FALLBACK, ha="center", va="bottom", fontsize=8
        )
    shown = [v for v in versions if None not in (v["realized_ctr"], v["ope_estimate"])]
    xs = np.arange(len(shown))
    est = [v["ope_estimate"] for v in shown]
    lo = [v["ope_estimate"] - v["ope_ci"][0] for v in shown]
    hi = [v["ope_ci"][1] - v["ope_estimate"] for v in shown]
    axes[1].errorbar(
        xs - 0.1, est, yerr=[lo, hi], fmt="o", capsize=4, label="OPE (DR) with 95% interval"
    )
    axes[1].plot(
        xs + 0.1,
        [v["realized_ctr"] for v in shown],
        "s",
        color="#dd8452",
        label="realised CTR online",
    )
    axes[1].set_xticks(xs, [f"v{v['version']}" for v in shown])
    axes[1].set_title("offline estimate vs online result")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: Written first into every demo workspace: the demo replaces a folder only when it holds
#: this file (or is empty), never one a person gave by mistake (``--workspace ~``).
DEMO_MARKER = ".banditops-demo"


def fresh_workspace(path: Path) -> Workspace:
    """An empty ``path`` for the demo, marked as the demo's.

    Raises
    ------
    ValueError
        ``path`` exists and is neither empty nor a previous demo's workspace (the demo
        deleted whatever folder ``--workspace`` named).
    """
    if path.exists():
        if path.is_dir() and not (path / DEMO_MARKER).is_file() and any(path.iterdir()):
            raise ValueError(
                f"--workspace {path} exists and is not a banditops demo's workspace (it has "
                f"no {DEMO_MARKER} file); the demo replaces only its own: give a new or "
                "empty folder, or delete this one yourself."
            )
        if path.is_dir():
            shutil.rmtree(path)
        else:
            raise ValueError(f"--workspace {path} is a file, not a folder.")
    path.mkdir(parents=True)
    (path / DEMO_MARKER).write_text("a banditops demo workspace: `banditops demo` replaces it\n")
    return Workspace(path.resolve())


def now_window(start: datetime) -> tuple[datetime, datetime]:
    return start, datetime.now(UTC) + timedelta(seconds=1)


def prepare_airflow(ws: Workspace) -> None:
    """The workspace's Airflow home as ``banditops airflow init`` makes it (configuration,
    migrated metadata, DAGs serialized), so the Airflow UI later opens on the same home."""
    initialize(AirflowHome(ws.root), echo=lambda message: None)


def run_nightly(conf: dict[str, Any]) -> str:
    """One run of the ``bandit_retrain`` DAG through Airflow (``dag.test()``, in process).

    Returns the final state of the DAG run. The environment must already point at the
    workspace (Airflow reads its configuration when first imported).
    """
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "bandit_retrain.py"))
    if bag.import_errors:
        raise RuntimeError(f"the retrain DAG does not import: {bag.import_errors}")
    dag = bag.get_dag(RETRAIN_DAG)
    run = dag.test(run_conf=conf)
    return str(run.state)


#: Day 4: requests per batch between two controller steps, and the most batches sent.
ROLLOUT_BATCH = 400
ROLLOUT_MAX_BATCHES = 12


def rollout_row(step: StepResult) -> dict[str, Any]:
    """A controller step as the demo's summary shows it."""
    r = step.rollout
    out: dict[str, Any] = {
        "action": step.action,
        "stage": None if r is None else r.stage_index + 1,
        "share": None if r is None else r.share,
        "status": None if r is None else r.status,
        "reason": step.reason,
    }
    out.update(vars(step.readout or Readout()))  # a start has no numbers yet
    return out


def worse_candidate(ws: Workspace, start: datetime, end: datetime, seed: int) -> str:
    """Register a deliberately worse version; its number.

    The window ``[start, end)`` (day 3) is extracted as the nightly run extracts it, its
    rewards inverted (a click becomes no click), the retrain's algorithm trained on every
    row with the same options, and the policy registered through the registry like any
    version: a model that learnt to avoid what users click.
    """
    import pandas as pd

    from modelregistry.pyfunc_model import example_table
    from modelregistry.registry import ModelRegistry
    from training.replay import REPLAY_FILE, extract_replay, load_replay
    from training.train import TrainConfig, train

    settings = ws.settings
    out = ws.root / "day4"
    extract_replay(
        settings.store_url,
        start,
        end,
        out,
        reward_window=timedelta(seconds=settings.reward_window_s),
        duplicate_rule=settings.duplicate_rule,
        missing_reward=settings.missing_reward,
        default_reward=settings.default_reward,
        reward_min=settings.reward_min,
        reward_max=settings.reward_max,
    )
    frame = pd.read_parquet(out / REPLAY_FILE)
    frame["reward"] = settings.reward_min + settings.reward_max - frame["reward"]
    inverted = out / "inverted.parquet"
    frame.to_parquet(inverted)
    config = TrainConfig(
        algorithm=settings.retrain_algorithm,
        options=dict(settings.retrain_policy_options),
        seed=seed,
        min_rows=settings.retrain_min_rows,
    )
    trained = train(inverted, config, out / "train", whole_window=True)
    registry = ModelRegistry(ws.tracking_uri, MODEL_NAME)
    head = load_replay(inverted).subset(slice(0, 2))  # its input example, as the retrain's
    info = registry.register_candidate(
        state_path=trained.state_path,
        run_key="demo-day4-inverted-rewards",
        input_example=example_table(head.contexts, head.candidate_ids, head.candidate_features),
        params={"algorithm": trained.algorithm, "n_train": trained.n_train},
        tags={"demo": "deliberately worse: trained on day 3 with its rewards inverted"},
    )
    return str(info.version)


def run_day4(
    ws: Workspace,
    client: httpx.Client,
    env: LogisticClickEnvironment,
    rng: np.random.Generator,
    population: np.ndarray,
    window: tuple[datetime, datetime],
    seed: int,
    step: Any,
) -> dict[str, Any]:
    """Day 4: a worse candidate's staged rollout, rolled back by the controller."""
    from eventstore.contract import CANDIDATE
    from eventstore.engine import make_engine
    from eventstore.rollouts import traffic_users
    from modelregistry.registry import ModelRegistry
    from training.rollout import rollout_step

    settings = ws.settings
    registry = ModelRegistry(ws.tracking_uri, MODEL_NAME)
    production = registry.by_alias(settings.production_alias)
    began = time.monotonic()
    step("day 4: training a deliberately worse candidate (day 3 with rewards inverted)")
    version = worse_candidate(ws, *window, seed=seed)
    registry.set_alias(
        settings.candidate_alias,
        version,
        by="banditops demo",
        reason="a deliberately worse candidate (rewards inverted) to show the rollback",
    )
    steps = [rollout_step(settings)]  # what the next bandit_rollout run does: start it
    if steps[0].action != "start" or steps[0].rollout is None:
        raise RuntimeError(f"the rollout of version {version} did not start: {steps[0].reason}")
    started = steps[0].rollout.started_at
    share = steps[0].rollout.share
    step(f"day 4: rollout of version {version} at {share:.0%}; traffic and controller steps")
    deadline = time.monotonic() + 30.0
    while client.get("/v1/model").json().get("candidate_share") != share:
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not pick the rollout's share up within 30 s.")
        time.sleep(0.25)
    stats: list[TrafficStats] = []
    for _ in range(ROLLOUT_MAX_BATCHES):
        batch = simulate_traffic(client, env, ROLLOUT_BATCH, rng, user_features=population)
        stats.append(batch)
        # the batch's outcomes count once their reward windows close: a step taken at
        # once saw only those the load had let close, and a slow machine ran out of batches
        time.sleep(settings.reward_window_s)
        steps.append(rollout_step(settings))
        if steps[-1].action not in ("hold", "advance"):
            break
    engine = make_engine(settings.store_url, settings.sqlite_synchronous)
    try:
        users = traffic_users(engine, MODEL_NAME, version, started)
    finally:
        engine.dispose()
    after = ModelRegistry(ws.tracking_uri, MODEL_NAME)
    staging = after.by_alias(settings.candidate_alias)
    kept = after.by_alias(settings.production_alias)
    return {
        "rollout_id": steps[0].rollout.id,
        "candidate_version": version,
        "production_version": None if production is None else production.version,
        "production_after": None if kept is None else kept.version,
        "staging_after": None if staging is None else staging.version,
        "outcome": steps[-1].action,
        "seconds": round(time.monotonic() - began, 1),
        "decisions": sum(s.decisions for s in stats),
        "errors": sum(s.errors for s in stats),
        "users": users,
        "candidate_user_share": users[CANDIDATE] / users["all"] if users["all"] else 0.0,
        "steps": [rollout_row(s) for s in steps],
        "traffic": stats,
    }


def run_demo(
    workspace: Path,
    users: int,
    requests_per_day: int,
    seed: int,
    algorithm: str,
    progress: Any = None,
) -> dict[str, Any]:
    """The whole loop; returns ``{"days": [...], "versions": [...], "rollout": {...}}``.
    Its defaults are ``banditops demo``'s options."""
    from modelregistry.registry import ModelRegistry
    from modelregistry.report import version_summaries

    step = progress or (lambda message: None)
    replaced = (workspace / DEMO_MARKER).is_file()
    ws = fresh_workspace(workspace)
    if replaced:  # said, not silent: it held a previous demo's models and runs
        step(f"replaced the previous demo workspace {workspace}")
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        del os.environ[key]  # the demo runs on its workspace file alone
    os.environ.update(ws.env())
    config_file.write(ws.root, demo_settings(ws.root, algorithm, seed))
    settings = ws.settings
    env = demo_environment(seed)
    rng = np.random.default_rng(seed + 1)
    population = np.stack([env.sample(rng)[0] for _ in range(users)])
    conf = {
        k: v
        for k, v in settings.retrain_defaults().items()
        if k not in ("window_start", "window_end", "epochs", "shards")
    }
    days: list[dict[str, Any]] = []
    rollout: dict[str, Any] = {}
    per_day: list[TrafficStats] = []
    step("migrating the Airflow metadata and serializing the DAGs")
    prepare_airflow(ws)
    with (
        Service(ws, seed=seed) as service,
        httpx.Client(base_url=service.url, timeout=30.0) as client,
    ):
        for day in (1, 2, 3):
            day3_start = datetime.now(UTC)
            version = service.production_version(client)
            step(f"day {day}: {requests_per_day} requests through HTTP ({version or FALLBACK})")
            stats = simulate_traffic(client, env, requests_per_day, rng, user_features=population)
            per_day.append(stats)
            days.append(day_row(day, stats, version))
            if day == 3:
                time.sleep(2.5)  # day 3's last rewards' window closes before it is extracted
                rollout = run_day4(
                    ws, client, env, rng, population,
                    now_window(day3_start), seed, step,
                )  # fmt: skip
                break
            time.sleep(2.5)  # let the last rewards' window close before the nightly run
            step(f"night {day}: bandit_retrain DAG through Airflow")
            state = run_nightly({**conf, "seed": seed + day})
            if state != "success":
                raise RuntimeError(
                    f"the nightly DAG run ended in state {state!r}; see {ws.airflow_home}/logs"
                )
            newest = ModelRegistry(ws.tracking_uri, MODEL_NAME).by_alias(settings.production_alias)
            if newest is not None:
                step(f"night {day}: waiting for the service to load version {newest.version}")
                wait_for_version(client, service, newest.version)
    rollout_traffic: list[TrafficStats] = rollout.pop("traffic")
    versions = []
    for summary in version_summaries(ModelRegistry(ws.tracking_uri, MODEL_NAME).listing()):
        label = f"{MODEL_NAME}/{summary['version']}"
        # every reward the version's decisions got online, days 1–3 and day 4's batches
        realized = [r for s in [*per_day, *rollout_traffic] for r in s.by_version.get(label, [])]
        dr = summary["dr"] or {}
        versions.append(
            {
                **summary,  # what `banditops models --json` says of it (one place)
                "ope_estimate": dr.get("value"),
                "ope_ci": [dr.get("ci_low"), dr.get("ci_high")],
                "realized_ctr": float(np.mean(realized)) if realized else None,
                "gate": "; ".join(summary["gate_reasons"]),
            }
        )
    result = {"days": days, "versions": versions, "rollout": rollout, "workspace": str(ws.root)}
    (ws.root / "demo.json").write_text(json.dumps(result, indent=2))
    plot_summary(days, versions, ws.root / "demo.png")
    return result
