"""``banditops airflow``: an embedded Airflow home under the workspace, and Airflow on it.

* ``init`` writes ``<workspace>/airflow/airflow.cfg`` (SQLite metadata in the home,
  LocalExecutor, this repository's ``dags/``, no example DAGs, DAGs unpaused when first
  seen, the API server on loopback, generated secrets kept across re-runs), then runs
  the real ``airflow db migrate`` and ``airflow dags reserialize``;
* ``standalone`` first does what ``init`` does (so a home made before, by hand or by an
  older version, shows exactly this repository's DAGs), then runs ``airflow standalone``
  (scheduler, DAG processor, API server, triggerer) on that home, bound to
  ``127.0.0.1:<port>``, waits for the API server, and prints the UI's URL with the admin
  password Airflow 3's simple auth manager generated into
  ``<home>/simple_auth_manager_passwords.json.generated``; Ctrl-C (or SIGTERM) stops every
  Airflow process it started;
* ``env`` prints the shell lines that point ``airflow`` commands at the home
  (``eval "$(banditops airflow env)"``).

Every ``airflow`` process runs with the home's configuration only: ``AIRFLOW__*``
variables and ``AIRFLOW_CONFIG`` of the calling shell are left out (they would override
it), and ``BANDITOPS_WORKSPACE`` points the DAGs' pipelines at the same workspace, whose
``banditops.toml`` configures every task (and the retrain form's defaults).
Nothing here imports Airflow: it configures itself once per process, from the
environment this module sets for its subprocesses.
"""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from eventstore.settings import WORKSPACE_ENV, workspace_of

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
#: The project's DAG ids: one DAG per file of ``dags/``, named after it (the DAG
#: integrity test checks that each file defines exactly the DAG of its name).
DAG_IDS = sorted(p.stem for p in DAGS.glob("bandit_*.py"))
DEFAULT_PORT = 8080
LOOPBACK = "127.0.0.1"
#: Where Airflow 3's simple auth manager writes the passwords it generates.
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
ADMIN = "admin"
#: Task slots of the embedded LocalExecutor (Airflow's default, 32, starts 32 processes).
PARALLELISM = 4
#: Options of the generated configuration that hold secrets (kept when ``init`` re-runs).
SECRETS = (("core", "fernet_key"), ("api", "secret_key"), ("api_auth", "jwt_secret"))

airflow_app = typer.Typer(
    help="An embedded Airflow (SQLite, LocalExecutor, this repo's DAGs) under the workspace.",
    no_args_is_help=True,
)


@dataclass(frozen=True)
class AirflowHome:
    """The Airflow home ``<workspace>/airflow`` and how processes run on it."""

    workspace: Path

    @property
    def path(self) -> Path:
        return self.workspace / "airflow"

    @property
    def config_file(self) -> Path:
        return self.path / "airflow.cfg"

    @property
    def database(self) -> Path:
        return self.path / "airflow.db"

    @property
    def password_file(self) -> Path:
        return self.path / PASSWORD_FILE

    @classmethod
    def of(cls, workspace: Path | None) -> AirflowHome:
        """The home of ``workspace`` (default: ``BANDITOPS_WORKSPACE``), made absolute."""
        if workspace is None:
            workspace = workspace_of()
        return cls(Path(workspace).expanduser().resolve())

    def config(
        self, existing: configparser.ConfigParser | None = None
    ) -> dict[str, dict[str, str]]:
        """The configuration ``init`` writes, by section; secrets taken from ``existing``
        when it has them, generated otherwise."""
        values = {
            "core": {
                "dags_folder": str(DAGS),
                "executor": "LocalExecutor",
                "load_examples": "False",
                "dags_are_paused_at_creation": "False",
                "parallelism": str(PARALLELISM),
                "execution_api_server_url": execution_api_url(DEFAULT_PORT),
            },
            "database": {
                "sql_alchemy_conn": f"sqlite:///{self.database}",
                # a busy timeout for SQLite's one writer at a time (ops/airflow_db.py)
                "sql_alchemy_connect_args": "ops.airflow_db.CONNECT_ARGS",
                "sql_alchemy_connect_args_async": "ops.airflow_db.CONNECT_ARGS",
            },
            "api": {"host": LOOPBACK, "port": str(DEFAULT_PORT)},
            "api_auth": {},
            "logging": {"base_log_folder": str(self.path / "logs")},
        }
        generated: dict[tuple[str, str], Callable[[], str]] = {
            ("core", "fernet_key"): lambda: urlsafe_b64encode(os.urandom(32)).decode(),
            ("api", "secret_key"): lambda: secrets.token_urlsafe(32),
            ("api_auth", "jwt_secret"): lambda: secrets.token_urlsafe(48),
        }
        for (section, key), make in generated.items():
            kept = existing.get(section, key, fallback="") if existing is not None else ""
            values[section][key] = kept or make()
        return values

    def write_config(self) -> dict[str, dict[str, str]]:
        """Write ``airflow.cfg`` (keeping the secrets of an existing one); returns it."""
        existing = None
        if self.config_file.exists():
            existing = configparser.ConfigParser(interpolation=None)
            existing.read(self.config_file)
        values = self.config(existing)
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_dict(values)
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.config_file.with_suffix(".tmp")
        with tmp.open("w") as fh:
            fh.write(
                "# Written by `banditops airflow init`: the embedded Airflow of this workspace.\n"
                "# Re-running it rewrites this file and keeps the generated secrets.\n"
            )
            parser.write(fh)
        tmp.chmod(0o600)
        tmp.replace(self.config_file)
        return values

    def env(self, port: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of an ``airflow`` process on this home: ``base`` (default the
        current environment) without ``AIRFLOW__*`` / ``AIRFLOW_CONFIG``, plus the home,
        the workspace, the venv's ``bin`` first on ``PATH`` and, with ``port``, the API
        server's port and the execution API URL that goes with it."""
        source = dict(os.environ if base is None else base)
        env = {k: v for k, v in source.items() if not _overrides_config(k)}
        env["AIRFLOW_HOME"] = str(self.path)
        env[WORKSPACE_ENV] = str(self.workspace)
        env["PATH"] = os.pathsep.join([str(_venv_bin()), source.get("PATH", os.defpath)])
        if port is not None:
            env["AIRFLOW__API__HOST"] = LOOPBACK
            env["AIRFLOW__API__PORT"] = str(port)
            env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = execution_api_url(port)
        return env

    def set_paused(self, dag_ids: list[str], paused: bool) -> None:
        """Pause or unpause DAGs in the metadata database (no Airflow process running)."""
        connection = sqlite3.connect(self.database)
        try:
            with connection:
                connection.executemany(
                    "UPDATE dag SET is_paused = ? WHERE dag_id = ?",
                    [(paused, dag_id) for dag_id in dag_ids],
                )
        finally:
            connection.close()

    def dags(self) -> list[tuple[str, bool]]:
        """``(dag_id, is_paused)`` of every serialized DAG in the metadata database."""
        connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        try:
            rows = connection.execute(
                "SELECT s.dag_id, d.is_paused FROM serialized_dag s "
                "JOIN dag d ON d.dag_id = s.dag_id GROUP BY s.dag_id ORDER BY s.dag_id"
            ).fetchall()
        finally:
            connection.close()
        return [(str(dag_id), bool(paused)) for dag_id, paused in rows]


def execution_api_url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}/execution/"


def _overrides_config(name: str) -> bool:
    return name.startswith("AIRFLOW__") or name == "AIRFLOW_CONFIG"


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def _airflow() -> str:
    return str(_venv_bin() / "airflow")


def run_airflow(home: AirflowHome, *args: str) -> None:
    """``airflow <args>`` on ``home``; raises with the command's output when it fails."""
    done = subprocess.run(
        [_airflow(), *args], env=home.env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"`airflow {' '.join(args)}` failed ({done.returncode}):\n{tail}")


def initialize(home: AirflowHome, echo: Any = typer.echo) -> list[tuple[str, bool]]:
    """Write the configuration, migrate the metadata DB and serialize the DAGs."""
    values = home.write_config()
    echo(f"wrote {home.config_file}")
    core, database = values["core"], values["database"]
    echo(f"  executor {core['executor']}, metadata {database['sql_alchemy_conn']}")
    echo(f"  DAGs from {core['dags_folder']} (examples off, unpaused at creation)")
    started = time.monotonic()
    run_airflow(home, "db", "migrate")
    echo(f"migrated the metadata database {home.database} ({time.monotonic() - started:.0f} s)")
    started = time.monotonic()
    run_airflow(home, "dags", "reserialize")
    dags = home.dags()
    listed = ", ".join(f"{d}{' (paused)' if paused else ''}" for d, paused in dags)
    echo(f"serialized {len(dags)} DAGs ({time.monotonic() - started:.0f} s): {listed}")
    missing = sorted({p.stem for p in DAGS.glob("bandit_*.py")} - {d for d, _ in dags})
    if missing:  # a DAG file that does not import (a setting it reads at parse time)
        errors = subprocess.run(
            [_airflow(), "dags", "list-import-errors"],
            env=home.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        lines = (errors.stdout + errors.stderr).splitlines()
        causes = list(dict.fromkeys(ln.strip() for ln in lines if "rror" in ln and ln.strip()))
        raise ValueError(
            f"{', '.join(missing)} did not import, so Airflow has no such DAG "
            f"(`airflow dags list-import-errors`): {' | '.join(causes[-3:])[:600]}"
        )
    return dags


def env_lines(home: AirflowHome, current: Mapping[str, str] | None = None) -> list[str]:
    """Shell lines that point ``airflow`` commands at ``home``."""
    current = dict(os.environ if current is None else current)
    lines = [f"unset {name}" for name in sorted(current) if _overrides_config(name)]
    lines += [
        f"export AIRFLOW_HOME={shlex.quote(str(home.path))}",
        f"export BANDITOPS_WORKSPACE={shlex.quote(str(home.workspace))}",
        f'export PATH={shlex.quote(str(_venv_bin()))}:"$PATH"',
    ]
    return lines


# ---------------------------------------------------------------------- standalone
def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def api_healthy(port: int, timeout_s: float = 2.0) -> bool:
    """True once the API server answers ``GET /api/v2/monitor/health`` with 200."""
    url = f"http://{LOOPBACK}:{port}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def admin_password(home: AirflowHome) -> str | None:
    """The admin password the simple auth manager generated (None before it did)."""
    try:
        passwords = json.loads(home.password_file.read_text())
    except (OSError, ValueError):
        return None
    value = passwords.get(ADMIN)
    return None if value is None else str(value)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt here, so both stop Airflow the same way.

    SIGINT is set explicitly: a process started from a non-interactive shell's background
    job inherits SIGINT *ignored*, and Python then installs no Ctrl-C handler of its own.
    """

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """Stop ``process`` and every process of its group: SIGINT to ``process`` (``airflow
    standalone`` then terminates its components), then SIGTERM to the whole group (task
    processes a component still waits for), at last SIGKILL, each after a grace period
    while some member of the group lives."""
    steps: tuple[tuple[Callable[[], None], float], ...] = (
        (lambda: os.kill(process.pid, signal.SIGINT), grace_s),
        (lambda: os.killpg(process.pid, signal.SIGTERM), 20.0),
        (lambda: os.killpg(process.pid, signal.SIGKILL), 10.0),
    )
    for send, wait_s in steps:
        if not group_members(process):
            return
        with suppress(ProcessLookupError):
            send()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and group_members(process):
            time.sleep(0.2)


def group_members(process: subprocess.Popen[bytes]) -> list[int]:
    """Live (not zombie) processes of ``process``'s group; the leader is reaped first."""
    import psutil  # an Airflow dependency

    process.poll()
    members = []
    for candidate in psutil.process_iter(["status"]):
        try:
            if os.getpgid(candidate.pid) == process.pid and (
                candidate.info["status"] != psutil.STATUS_ZOMBIE
            ):
                members.append(candidate.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


# ---------------------------------------------------------------------- commands
WorkspaceOption = Annotated[
    Path | None,
    typer.Option(help="Workspace holding the Airflow home (default: BANDITOPS_WORKSPACE)."),
]


@airflow_app.command("init")
def init_command(workspace: WorkspaceOption = None) -> None:
    """Prepare <workspace>/airflow: airflow.cfg, migrated SQLite metadata, DAGs serialized."""
    home = AirflowHome.of(workspace)
    try:
        initialize(home)
    except RuntimeError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from exc
    # the folder, however it was named (this option, the root's --workspace, the variable)
    where = f" --workspace {shlex.quote(str(home.workspace))}"
    typer.echo(
        f'next: `banditops airflow standalone{where}`, or `eval "$(banditops airflow env{where})"`'
    )


@airflow_app.command("env")
def env_command(workspace: WorkspaceOption = None) -> None:
    """Print the shell lines for airflow commands: eval "$(banditops airflow env)"."""
    for line in env_lines(AirflowHome.of(workspace)):
        typer.echo(line)


@airflow_app.command("standalone")
def standalone_command(
    workspace: WorkspaceOption = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="API server / UI port.")] = (
        DEFAULT_PORT
    ),
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds to wait for the API server.")
    ] = 300.0,
) -> None:
    """Run `airflow standalone` on 127.0.0.1:PORT with the workspace's home; Ctrl-C stops it.

    Prints the UI's URL and the admin password once the API server answers.
    """
    home = AirflowHome.of(workspace)
    if not port_free(port):
        raise typer.BadParameter(f"{LOOPBACK}:{port} is already in use.", param_hint="--port")
    # (re)initialise as `init` does: a home made by an older version, or by hand, may list
    # other DAGs or miss a migration; the generated secrets are kept
    typer.echo(f"preparing {home.path} as `banditops airflow init` does")
    try:
        initialize(home)
    except RuntimeError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from exc
    # The scheduler starts tasks before the API server they report to answers: a DAG run
    # it creates at once (an unpaused cron DAG's latest interval) would fail to start and
    # wait out its retry delay, holding every other run of the DAG (max_active_runs=1). So
    # the unpaused DAGs stay paused until the API server is up.
    held = [dag_id for dag_id, paused in home.dags() if not paused]
    home.set_paused(held, True)
    log_path = home.path / "standalone.log"
    with _sigterm_as_interrupt(), log_path.open("ab") as log:
        process = subprocess.Popen(
            [_airflow(), "standalone"],
            env=home.env(port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
            # Ctrl-C reaches it even when this command was started with SIGINT ignored
            preexec_fn=_default_sigint,
        )
        typer.echo(f"airflow standalone (pid {process.pid}) on {home.path}; log: {log_path}")
        released: list[str] = []
        try:
            code = _serve(home, process, port, timeout, log_path, held, released)
        except KeyboardInterrupt:
            typer.echo("stopping Airflow…")
            code = 0
        finally:
            stop_group(process)
            home.set_paused([d for d in held if d not in released], False)
    typer.echo(f"stopped (airflow standalone exited with {process.returncode})")
    if code:
        raise typer.Exit(code=code)


def unpause(port: int, password: str, dag_ids: list[str]) -> None:
    """Unpause ``dag_ids`` through the REST API (``PATCH /api/v2/dags/{id}``) as admin."""
    base = f"http://{LOOPBACK}:{port}"

    def call(method: str, path: str, body: dict[str, Any], token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            base + path, json.dumps(body).encode(), headers=headers, method=method
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    token = call("POST", "/auth/token", {"username": ADMIN, "password": password})
    for dag_id in dag_ids:
        call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}, token["access_token"])


def _serve(
    home: AirflowHome,
    process: subprocess.Popen[bytes],
    port: int,
    timeout: float,
    log: Path,
    held: list[str],
    released: list[str],
) -> int:
    """Wait for the API server, unpause the ``held`` DAGs (adding them to ``released``),
    print how to log in, then wait for Ctrl-C; 1 on failure."""
    deadline = time.monotonic() + timeout
    while not api_healthy(port):
        if process.poll() is not None or time.monotonic() > deadline:
            why = "exited" if process.returncode is not None else f"not ready after {timeout:g} s"
            typer.echo(f"airflow standalone {why}; the end of {log}:", err=True)
            typer.echo(log.read_text(errors="replace")[-3000:], err=True)
            return 1
        time.sleep(0.5)
    password = admin_password(home)
    if held and password is not None:
        unpause(port, password, held)
        released.extend(held)
    typer.echo(f"Airflow UI: http://{LOOPBACK}:{port}/")
    if password is None:
        typer.echo("login: users of [core] simple_auth_manager_users (no generated password)")
    else:
        typer.echo(f"login: {ADMIN} / password: {password}  (from {home.password_file})")
    typer.echo("press Ctrl-C to stop")
    while process.poll() is None:
        time.sleep(0.5)
    typer.echo(f"airflow standalone exited by itself ({process.returncode}); see {log}", err=True)
    return 1
