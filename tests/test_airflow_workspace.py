"""After the demo, ``banditops airflow standalone --workspace <ws>`` with nothing else set
runs the demo's loop from Airflow's REST API, as the UI's trigger button does.

For real and small: the workspace is populated as ``banditops demo`` does it (its settings
written to ``banditops.toml``, traffic through the real decision service over HTTP), its
Airflow home left as older demos left it (example DAGs on, a missing ``dags_folder``);
then ``banditops airflow standalone`` starts in a clean environment (no ``BANDITOPS_*``,
no ``AIRFLOW*``), and ``bandit_retrain`` is triggered with an empty ``conf`` and runs under
the scheduler (LocalExecutor), reading the demo's reward window and retrain form from the
workspace file, until a new version is in the workspace's registry.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import httpx
import numpy as np
import pytest

from ops import config_file
from ops.airflow_cli import DAG_IDS, DAGS, AirflowHome
from ops.demo import MODEL_NAME, Service, Workspace, demo_environment, demo_settings
from serving.traffic import simulate_traffic
from tests.serving_helpers import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
    ),
]

BANDITOPS = Path(sys.executable).with_name("banditops")
SEED = 4


def _populate(ws: Workspace) -> None:
    """What ``banditops demo`` does before its first night: its settings file, and a day of
    traffic through the service (the uniform fallback) over HTTP."""
    config_file.write(ws.root, demo_settings(ws.root, "shared_lints", SEED))
    env = demo_environment(SEED)
    rng = np.random.default_rng(SEED + 1)
    with Service(ws, seed=SEED) as service, httpx.Client(base_url=service.url) as client:
        stats = simulate_traffic(client, env, 800, rng, n_users=150)
    assert stats.errors == 0 and stats.decisions == 800
    time.sleep(2.5)  # the demo's reward window (2 s, from the file) closes


def _stale_home(ws: Workspace) -> None:
    """The Airflow home an older demo left: examples on, no dags folder."""
    home = AirflowHome(ws.root)
    home.path.mkdir(parents=True)
    home.config_file.write_text(
        "[core]\nload_examples = True\ndags_folder = /nonexistent/dags\n", encoding="utf-8"
    )


def _reader(stream: object) -> tuple[queue.Queue[str], threading.Thread]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line.rstrip("\n"))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


def _wait_for(lines: queue.Queue[str], pattern: str, deadline: float, seen: list[str]) -> str:
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match.group(1)
    pytest.fail(f"no line matching {pattern!r}; output so far:\n" + "\n".join(seen))


def _stop(
    process: subprocess.Popen[str], airflow_pid: int | None, reader: threading.Thread
) -> None:
    """Ctrl-C to ``banditops airflow standalone`` (it stops Airflow's process group); kill
    both groups if anything outlives that."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            process.wait(120)
    for group in (process.pid, airflow_pid):
        if group is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(30)
    reader.join(30)  # it reads to the end of the output
    if process.stdout is not None:
        process.stdout.close()


def test_standalone_on_a_demo_workspace_runs_a_ui_triggered_retrain(tmp_path: Path) -> None:
    from modelregistry.registry import ModelRegistry

    ws = Workspace((tmp_path / "ws").resolve())
    ws.root.mkdir()
    _populate(ws)
    _stale_home(ws)

    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "BANDITOPS_"))}
    process = subprocess.Popen(
        [str(BANDITOPS), "airflow", "standalone", "--workspace", str(ws.root), "--port", str(port)],
        env={**clean, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines, reader = _reader(process.stdout)
    seen: list[str] = []
    airflow_pid: int | None = None
    started = time.monotonic()
    try:
        deadline = started + 300
        airflow_pid = int(_wait_for(lines, r"^airflow standalone \(pid (\d+)\)", deadline, seen))
        password = _wait_for(lines, r"^login: admin / password: (\S+)", deadline, seen)
        ready_s = time.monotonic() - started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            token = http.post("/auth/token", json={"username": "admin", "password": password})
            assert token.status_code == 201, token.text
            http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
            dags = http.get("/api/v2/dags", params={"limit": 1000}).json()
            assert sorted(d["dag_id"] for d in dags["dags"]) == DAG_IDS, dags
            assert dags["total_entries"] == len(DAG_IDS)
            assert all(d["fileloc"].startswith(str(DAGS)) for d in dags["dags"])

            # what the UI's trigger button does: unpause, then a run with an empty form
            unpaused = http.patch("/api/v2/dags/bandit_retrain", json={"is_paused": False})
            assert unpaused.status_code == 200, unpaused.text
            run = http.post(
                "/api/v2/dags/bandit_retrain/dagRuns", json={"logical_date": None, "conf": {}}
            )
            assert run.status_code == 200, run.text
            run_id = run.json()["dag_run_id"]
            triggered = time.monotonic()
            state = "queued"
            while time.monotonic() - triggered < 900 and state not in ("success", "failed"):
                time.sleep(3)
                state = http.get(f"/api/v2/dags/bandit_retrain/dagRuns/{run_id}").json()["state"]
            tasks = http.get(f"/api/v2/dags/bandit_retrain/dagRuns/{run_id}/taskInstances").json()[
                "task_instances"
            ]
            states = {t["task_id"]: t["state"] for t in tasks}
        assert state == "success", (state, states, "\n".join(seen[-20:]))
        run_s = time.monotonic() - triggered
    finally:
        _stop(process, airflow_pid, reader)

    # the task processes read the demo's settings from the workspace file
    specs = [json.loads(p.read_text()) for p in (ws.root / "runs").glob("*/spec.json")]
    spec = next(s for s in specs if s["run_key"] == run_id)
    wanted = demo_settings(ws.root, "shared_lints", SEED)
    assert spec["reward_window_s"] == wanted["reward_window_s"]
    assert spec["train"]["algorithm"] == wanted["retrain_algorithm"]
    # the policy's own options plus the default cold-start floor (shared_lints randomizes:
    # no deterministic floor)
    assert spec["train"]["options"] == {
        **wanted["retrain_policy_options"],
        "cold_start_floor": 0.02,
    }
    assert (spec["min_rows"], spec["min_ess"]) == (
        wanted["retrain_min_rows"],
        wanted["retrain_min_ess"],
    )
    assert spec["store_url"] == ws.settings.store_url
    # and registered a new version in the workspace's registry
    version = ModelRegistry(ws.tracking_uri, MODEL_NAME).find_by_run_key(run_id)
    assert version is not None
    # the home was re-initialised: examples off, our dags folder
    text = AirflowHome(ws.root).config_file.read_text()
    assert "load_examples = False" in text and f"dags_folder = {DAGS}" in text
    print(f"standalone ready after {ready_s:.0f} s; the triggered retrain took {run_s:.0f} s")
