"""``banditops airflow init | env | standalone`` for real: the CLI in subprocesses (Airflow
configures itself once per process), the metadata DB read back, the REST API used."""

from __future__ import annotations

import configparser
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ops.airflow_cli import DAG_IDS, DAGS, PASSWORD_FILE, AirflowHome, env_lines
from ops.cli import app
from tests.serving_helpers import free_port

BANDITOPS = Path(sys.executable).with_name("banditops")


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Airflow or banditops settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "BANDITOPS_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


# ---------------------------------------------------------------------- no Airflow process
def test_init_config_keeps_its_secrets_and_env_points_airflow_at_the_home(
    tmp_path: Path,
) -> None:
    home = AirflowHome.of(tmp_path / "ws")
    first = home.write_config()
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read(home.config_file)
    assert parsed.get("core", "executor") == "LocalExecutor"
    assert parsed.get("core", "dags_folder") == str(DAGS)
    assert parsed.getboolean("core", "load_examples") is False
    assert parsed.getboolean("core", "dags_are_paused_at_creation") is False
    assert parsed.get("database", "sql_alchemy_conn") == f"sqlite:///{home.database}"
    assert parsed.get("api", "host") == "127.0.0.1"
    assert home.config_file.stat().st_mode & 0o077 == 0  # secrets inside: owner only
    second = home.write_config()
    for section, key in (("core", "fernet_key"), ("api", "secret_key"), ("api_auth", "jwt_secret")):
        assert second[section][key] == first[section][key] and len(first[section][key]) >= 40
    assert (
        AirflowHome.of(tmp_path / "other").config()["api_auth"]["jwt_secret"]
        != (first["api_auth"]["jwt_secret"])
    )

    env = home.env(port=8123, base={"PATH": "/usr/bin", "AIRFLOW__CORE__DAGS_FOLDER": "/x"})
    assert env["AIRFLOW__API__PORT"] == "8123" and env["AIRFLOW_HOME"] == str(home.path)
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    assert "AIRFLOW__CORE__DAGS_FOLDER" not in env
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)

    # the printed lines work in a shell: they set the home and drop overriding variables
    lines = env_lines(home, {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"})
    shell = subprocess.run(
        [
            "bash",
            "-c",
            "\n".join(lines) + '\necho "$AIRFLOW_HOME|$BANDITOPS_WORKSPACE|'
            '${AIRFLOW__CORE__EXECUTOR-unset}"; command -v airflow',
        ],
        env={"PATH": "/usr/bin:/bin", "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"},
        capture_output=True,
        text=True,
        check=True,
    )
    shown, airflow = shell.stdout.splitlines()
    assert shown == f"{home.path}|{home.workspace}|unset"
    assert airflow == str(Path(sys.executable).with_name("airflow"))


def test_env_command_prints_the_export_lines(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["airflow", "env", "--workspace", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert f"export AIRFLOW_HOME={tmp_path / 'w' / 'airflow'}" in result.output.splitlines()


# ---------------------------------------------------------------------- real Airflow
#: the tests of one ``initialized`` home run in one process (pytest-xdist), which runs
#: ``banditops airflow init`` once for them all
ONE_INIT = pytest.mark.xdist_group(name="airflow_cli_init")


@dataclass
class Initialized:
    home: AirflowHome
    output: str
    seconds: float


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> Initialized:
    """``banditops airflow init`` in a fresh workspace (real migrate and reserialize)."""
    workspace = tmp_path_factory.mktemp("airflow-cli") / "ws"
    started = time.monotonic()
    done = subprocess.run(
        [str(BANDITOPS), "airflow", "init", "--workspace", str(workspace)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return Initialized(AirflowHome.of(workspace), done.stdout, time.monotonic() - started)


@ONE_INIT
def test_init_migrates_sqlite_metadata_and_serializes_the_dags_unpaused(
    initialized: Initialized,
) -> None:
    home = initialized.home
    assert home.database.stat().st_size > 100_000
    assert home.dags() == [(dag_id, False) for dag_id in DAG_IDS]
    out = initialized.output
    assert f"wrote {home.config_file}" in out
    assert f"migrated the metadata database {home.database}" in out
    assert re.search(rf"serialized {len(DAG_IDS)} DAGs \(\d+ s\): {', '.join(DAG_IDS)}\n", out)
    assert "(paused)" not in out


@ONE_INIT
def test_airflow_waits_a_minute_for_the_sqlite_lock(initialized: Initialized) -> None:
    """Airflow's own engine on the home's metadata database has a 60 s busy timeout
    (``ops/airflow_db.py``), not sqlite3's 5 s."""
    code = (
        "from airflow import settings\n"
        "raw = settings.engine.raw_connection()\n"
        "print(raw.cursor().execute('PRAGMA busy_timeout').fetchone()[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=initialized.home.env(port=8124, base=_clean_env()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "60000"


def _lines(stream: object) -> tuple[queue.Queue[str], threading.Thread]:
    """The lines of ``stream`` as they come, read by a thread (ends at EOF)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line.rstrip("\n"))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


def _wait_for(
    lines: queue.Queue[str], pattern: str, deadline: float, seen: list[str]
) -> re.Match[str]:
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    pytest.fail(f"no line matching {pattern!r}; output so far:\n" + "\n".join(seen))


def _group(pgid: int) -> list[str]:
    """Live (not zombie) processes of a process group."""
    import psutil

    members = []
    for process in psutil.process_iter(["status", "cmdline"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(" ".join(process.info["cmdline"] or []))
        except (ProcessLookupError, psutil.Error):
            continue
    return members


@dataclass
class Standalone:
    """``banditops airflow standalone`` running: its process, port and output lines."""

    process: subprocess.Popen[str]
    port: int
    lines: queue.Queue[str]
    reader: threading.Thread
    seen: list[str]


@pytest.fixture
def standalone(initialized: Initialized) -> Iterator[Standalone]:
    port = free_port()
    process = subprocess.Popen(
        [
            str(BANDITOPS),
            "airflow",
            "standalone",
            "--workspace",
            str(initialized.home.workspace),
            "--port",
            str(port),
            "--timeout",
            "240",
        ],
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, reader = _lines(process.stdout)
    try:
        yield Standalone(process, port, lines, reader, [])
    finally:
        if process.poll() is None:  # the test failed before stopping it
            process.send_signal(signal.SIGINT)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        reader.join(10)
        if process.stdout is not None:
            process.stdout.close()


@ONE_INIT
@pytest.mark.slow
def test_standalone_serves_the_api_with_the_generated_password_and_stops_on_ctrl_c(
    initialized: Initialized, standalone: Standalone
) -> None:
    process, port, lines, seen = (
        standalone.process,
        standalone.port,
        standalone.lines,
        standalone.seen,
    )
    home = initialized.home
    t0 = time.monotonic()
    deadline = t0 + 240
    leader = int(_wait_for(lines, r"^airflow standalone \(pid (\d+)\)", deadline, seen).group(1))
    _wait_for(lines, rf"^Airflow UI: http://127\.0\.0\.1:{port}/$", deadline, seen)
    password = _wait_for(lines, r"^login: admin / password: (\S+)", deadline, seen).group(1)
    assert password == json.loads((home.path / PASSWORD_FILE).read_text())["admin"]
    ready_s = time.monotonic() - t0

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        assert http.get("/api/v2/monitor/health").status_code == 200
        assert http.get("/api/v2/dags").status_code == 401  # the API wants a token
        refused = http.post("/auth/token", json={"username": "admin", "password": "wrong"})
        assert refused.status_code == 401
        token = http.post("/auth/token", json={"username": "admin", "password": password})
        assert token.status_code == 201, token.text
        auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
        dags = http.get("/api/v2/dags", headers=auth)
        assert dags.status_code == 200, dags.text
        listed = {d["dag_id"]: d for d in dags.json()["dags"]}
    assert sorted(listed) == DAG_IDS
    assert not any(d["is_paused"] for d in listed.values())
    assert all(d["fileloc"].startswith(str(DAGS)) for d in listed.values())

    stopping = time.monotonic()
    process.send_signal(signal.SIGINT)  # Ctrl-C
    assert process.wait(90) == 0
    standalone.reader.join(10)
    while not lines.empty():
        seen.append(lines.get())
    # standalone stops its components on SIGINT (exit 0); one that outlives the grace
    # period (tasks of the unpaused DAGs still running on a busy machine) gets SIGTERM
    assert seen[-2] == "stopping Airflow…", seen
    assert re.fullmatch(r"stopped \(airflow standalone exited with (0|-15)\)", seen[-1]), seen
    assert _group(leader) == []  # every process of its group is gone
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2)
    print(f"standalone ready after {ready_s:.0f} s, stopped in {time.monotonic() - stopping:.0f} s")
