"""``make compose-test``: build the images, run ``docker-compose.yml`` and use it as a user would.

Steps (each prints one line with its time):

1. tools: ``docker.io``, ``docker-compose`` and ``debootstrap`` from apt-get when missing;
   ``dockerd`` started when no daemon answers (and stopped at the end);
2. a local base image, ``debootstrap --variant=minbase bookworm`` with python3.11 and its
   venv module and this machine's CA bundle; its root filesystem is kept as a tarball under
   ``--cache-dir`` (the first cache: it survives ``docker system prune``);
3. the images, built against that base (``BASE_IMAGE``), torch from the machine's wheel
   directory (``PIP_FIND_LINKS``) served on loopback, pip's cache in a BuildKit cache mount
   (the second cache), plus stand-ins for the postgres and redis images (no registry);
4. the stack, with an override that puts every service on the host network on ports of
   ``--port-base`` (so that nothing clashes with this machine's PostgreSQL and Redis and all
   traffic stays on loopback), two serving replicas;
5. against it: every service healthy; decisions and rewards through both replicas;
   ``bandit_retrain`` triggered through Airflow's REST API once the traffic's reward windows
   have closed (``REWARD_WINDOW_S``), run by the Celery worker against the PostgreSQL event
   store; the version in MLflow's registry; ``banditops promote``;
   every replica serving the new production version; ``down`` and ``up`` with nothing lost.

Whatever fails prints the logs of the services that are not healthy. Everything the run
started is stopped (the stack with its volumes, the wheel server, dockerd).

``--break`` runs the stack with a wrong database URL in ``serving-migrate`` and passes
only when the harness reports that service as failing, with its log.

    python docker/compose_test.py [--break] [--port-base 24800] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from base64 import urlsafe_b64encode
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from eventstore.settings import CoreSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
BASE_IMAGE = "banditops-ct-base:bookworm"
PROJECT = "banditops-ct"
TAG = "compose-test"
#: image name → (Dockerfile, whether it installs torch)
IMAGES = {
    "banditops-serving": ("docker/serving.Dockerfile", True),
    "banditops-airflow": ("docker/airflow.Dockerfile", True),
    "banditops-mlflow": ("docker/mlflow.Dockerfile", False),
    "banditops-ct-postgres": ("docker/compose-test/postgres.Dockerfile", False),
    "banditops-ct-redis": ("docker/compose-test/redis.Dockerfile", False),
}
#: what must not be inside the serving image (`pip list` names)
NOT_IN_SERVING = ("apache-airflow", "apache-airflow-core", "great-expectations", "matplotlib")
SERVING_MAX_BYTES = 1.5e9
#: the stack's model and production alias: the settings' defaults (the compose file
#: sets none of its own)
MODEL_NAME = CoreSettings.model_fields["model_name"].default
PRODUCTION = CoreSettings.model_fields["production_alias"].default
#: the retrain run's parameters: a fast linear policy, a small bootstrap
RETRAIN_CONF = {
    "algorithm": "shared_linucb",
    "policy_options": {"alpha": 0.5, "interactions": True},
    "min_rows": 200,
    "n_resamples": 50,
    "min_ess": 5.0,
    "auto_promote": False,
}
DECISIONS = 400
#: the reward window of the run (``BANDITOPS_REWARD_WINDOW_S``, 86400 s in ``.env.example``):
#: a replay holds only the decisions whose window has closed by the run's data interval end
#: (a reward may still arrive until then), so the harness uses a short one and triggers the
#: retrain once it has closed on the last decision. Each reward follows its decision at
#: once: the window only has to outlast one request on a loaded machine.
REWARD_WINDOW_S = 30
#: health-check tolerance on a shared, loaded test machine (2 cores, load average above
#: 30 seen): a probe's Python may take seconds to start, and the first start is slow.
#: A passing probe still marks a service healthy at once.
LOADED_MACHINE = {"start_period": "300s", "timeout": "30s", "retries": 20}


class HarnessError(RuntimeError):
    """A check failed; ``services`` are the ones whose logs explain it."""

    def __init__(self, message: str, services: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.services = services


def log(message: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(
    args: list[str], *, check: bool = True, capture: bool = False, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        args, text=True, capture_output=capture, check=False, stdin=subprocess.DEVNULL, **kwargs
    )
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout or "")[-4000:] if capture else ""
        raise HarnessError(f"{' '.join(args[:6])} ... exited {done.returncode}\n{detail}")
    return done


# ---------------------------------------------------------------------- ports
@dataclass(frozen=True)
class Ports:
    """Every port the stack listens on, on loopback, from one base."""

    base: int

    @property
    def postgres(self) -> int:
        return self.base + 32

    @property
    def redis(self) -> int:
        return self.base + 79

    @property
    def mlflow(self) -> int:
        return self.base + 50

    @property
    def airflow_api(self) -> int:
        return self.base + 80

    @property
    def scheduler_health(self) -> int:
        return self.base + 74

    @property
    def worker_logs(self) -> int:
        return self.base + 93

    @property
    def triggerer_logs(self) -> int:
        return self.base + 94

    @property
    def wheels(self) -> int:
        return self.base + 99

    @property
    def serving(self) -> tuple[int, int]:
        return (self.base + 1, self.base + 2)


# ---------------------------------------------------------------------- the override
def _rewrite(value: Any, table: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for old, new in table:
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [_rewrite(v, table) for v in value]
    if isinstance(value, dict):
        return {k: _rewrite(v, table) for k, v in value.items()}
    return value


def _replace_option(args: list[str], name: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(name) + 1] = value
    return out


def host_network_override(
    compose: dict[str, Any], ports: Ports, *, broken: str | None = None
) -> dict[str, Any]:
    """An override of ``compose`` (the file as YAML reads it) that runs every service on
    the host network on ``ports``, with two serving replicas (``serving``, ``serving-2``).
    ``broken`` names a service whose database URL gets a wrong password."""
    services = compose["services"]
    network = [
        ("@postgres:5432/", f"@127.0.0.1:{ports.postgres}/"),
        ("redis://redis:6379", f"redis://127.0.0.1:{ports.redis}"),
        ("http://mlflow:5000", f"http://127.0.0.1:{ports.mlflow}"),
        ("http://airflow-apiserver:8080", f"http://127.0.0.1:{ports.airflow_api}"),
        ("http://serving:8000", f"http://127.0.0.1:{ports.serving[0]}"),
        ("localhost:8080", f"127.0.0.1:{ports.airflow_api}"),
        ("localhost:8974", f"127.0.0.1:{ports.scheduler_health}"),
        ("127.0.0.1:5000", f"127.0.0.1:{ports.mlflow}"),
    ]
    airflow_ports = {
        "AIRFLOW__API__PORT": str(ports.airflow_api),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(ports.scheduler_health),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports.worker_logs),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports.triggerer_logs),
    }
    out: dict[str, Any] = {}
    for name, spec in services.items():
        over: dict[str, Any] = {"network_mode": "host"}
        env = spec.get("environment") or {}
        changed = {k: v for k, v in _rewrite(env, network).items() if env.get(k) != v}
        if "AIRFLOW__CORE__EXECUTOR" in env:
            changed.update(airflow_ports)
        command = spec.get("command")
        if isinstance(command, list):
            new = _rewrite(command, network)
            if name == "mlflow":
                new = _replace_option(new, "--port", str(ports.mlflow))
                new = _replace_option(new, "--host", "127.0.0.1")
            if new != command:
                over["command"] = new
        check = spec.get("healthcheck")
        if check:
            test = _rewrite(check["test"], network)
            if test != check["test"]:
                over["healthcheck"] = {**check, "test": test}
        if name == "postgres":
            changed["PGPORT"] = str(ports.postgres)
            over["command"] = ["postgres", "-c", "listen_addresses=127.0.0.1"]
        if name == "redis":
            over["command"] = [
                "redis-server", "--port", str(ports.redis), "--bind", "127.0.0.1",
                "--protected-mode", "no", "--save", "", "--appendonly", "no",
            ]  # fmt: skip
            over["healthcheck"] = {
                **spec["healthcheck"],
                "test": ["CMD", "redis-cli", "-p", str(ports.redis), "ping"],
            }
        if name == broken:
            url = changed.get("BANDITOPS_DATABASE_URL") or ""
            changed["BANDITOPS_DATABASE_URL"] = re.sub(
                r"(//[^:/]+:).*(@127\.0\.0\.1:)", r"\1wrong-password\2", url
            )
        if changed:
            over["environment"] = changed
        if check:
            over["healthcheck"] = {**over.get("healthcheck", check), **LOADED_MACHINE}
        out[name] = over
    # the replicas: one port each on the host network
    serving = services["serving"]
    for index, port in enumerate(ports.serving):
        name = "serving" if index == 0 else f"serving-{index + 1}"
        command = _replace_option(serving["command"], "--port", str(port))
        command = _replace_option(command, "--host", "127.0.0.1")
        over = {
            "network_mode": "host",
            "command": command,
            "healthcheck": {
                **serving["healthcheck"],
                **LOADED_MACHINE,
                "test": _rewrite(
                    serving["healthcheck"]["test"], [("127.0.0.1:8000", f"127.0.0.1:{port}")]
                ),
            },
        }
        if index == 0:
            over["deploy"] = {"replicas": 1}
            over["environment"] = out["serving"].get("environment", {})
            out["serving"] = over
        else:
            copy = {k: v for k, v in serving.items() if k not in ("ports", "deploy")}
            copy["environment"] = {**serving["environment"], **out["serving"]["environment"]}
            out[name] = {**copy, **over}
    return {"services": out}


def applied(compose: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``compose`` with ``override`` merged in as compose merges files (``environment`` by
    key, anything else replaced) and without published ports, which the host network has no
    use for (and which docker-compose 1.x refuses there; only 2.x has ``!reset``)."""
    services = {}
    for name, spec in override["services"].items():
        service = {k: v for k, v in compose["services"].get(name, {}).items() if k != "ports"}
        for key, value in spec.items():
            if key == "environment":
                service[key] = {**service.get(key, {}), **value}
            else:
                service[key] = value
        service.pop("ports", None)
        services[name] = service
    return {**compose, "services": services}


# ---------------------------------------------------------------------- the environment
def test_environment(ports: Ports) -> dict[str, str]:
    """``.env.example`` with fresh secrets, the images of this run and short intervals."""
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            env[key.strip()] = value.strip()
    for key in list(env):
        if key.endswith(("_PASSWORD", "_SECRET", "_SECRET_KEY", "_TOKEN", "_SALT")):
            env[key] = secrets.token_urlsafe(18)
    env.update(
        COMPOSE_PROJECT_NAME=PROJECT,
        IMAGE_TAG=TAG,
        POSTGRES_IMAGE=f"banditops-ct-postgres:{TAG}",
        REDIS_IMAGE=f"banditops-ct-redis:{TAG}",
        AIRFLOW_FERNET_KEY=urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        BANDITOPS_MODEL_NAME=MODEL_NAME,
        BANDITOPS_POLL_INTERVAL_S="2",
        BANDITOPS_REWARD_WINDOW_S=str(REWARD_WINDOW_S),
        SERVING_WORKERS="1",
        MLFLOW_WORKERS="1",
        SERVING_REPLICAS="1",
        # two replicas of one worker (serving, serving-2: host_network_override) learn
        # each other's rewards; without it the second refuses to start beside the first
        BANDITOPS_REPLICA_SYNC_S="2",
        MLFLOW_PORT=str(ports.mlflow),
        AIRFLOW_PORT=str(ports.airflow_api),
        SERVING_PORTS=str(ports.serving[0]),
    )
    return env


# ---------------------------------------------------------------------- docker
@dataclass
class Docker:
    """The docker and compose clients of this run, and what it started."""

    workdir: Path
    compose_cmd: list[str] = field(default_factory=list)
    docker: str = "docker"
    started_daemon: subprocess.Popen[bytes] | None = None
    files: list[Path] = field(default_factory=list)

    def compose(self, *args: str, check: bool = True, capture: bool = False) -> Any:
        base = [
            *self.compose_cmd, "--project-name", PROJECT, "--env-file", str(self.workdir / "env"),
            "--project-directory", str(COMPOSE_FILE.parent),
        ]  # fmt: skip
        for file in self.files:
            base += ["-f", str(file)]
        return run([*base, *args], check=check, capture=capture)


def ensure_tools() -> None:
    missing = [
        pkg
        for pkg, tool in (("docker.io", "dockerd"), ("docker-compose", "docker-compose"),
                          ("debootstrap", "debootstrap"))
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
    ]  # fmt: skip
    if missing:
        log(f"installing {', '.join(missing)} with apt-get")
        run(["apt-get", "update", "-qq"])
        run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def builder_client() -> str:
    """A docker client that builds with BuildKit: Debian's (the engine's own version) when
    the one on PATH has no buildx plugin."""
    first = shutil.which("docker") or "docker"
    plugin = run([first, "buildx", "version"], check=False, capture=True)
    if plugin.returncode == 0 or not Path("/usr/bin/docker").exists():
        return first
    return "/usr/bin/docker"


def ensure_daemon(d: Docker) -> None:
    if run([d.docker, "info"], check=False, capture=True).returncode == 0:
        log("dockerd: already running (left running at the end)")
        return
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    logfile = (d.workdir / "dockerd.log").open("wb")
    d.started_daemon = subprocess.Popen(
        [dockerd], stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    for _ in range(120):
        if run([d.docker, "info"], check=False, capture=True).returncode == 0:
            log(f"dockerd: started (pid {d.started_daemon.pid})")
            return
        if d.started_daemon.poll() is not None:
            break
        time.sleep(0.5)
    raise HarnessError("dockerd did not start:\n" + (d.workdir / "dockerd.log").read_text()[-3000:])


def stop_daemon(d: Docker) -> None:
    if d.started_daemon is not None:
        d.started_daemon.terminate()
        try:
            d.started_daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            d.started_daemon.kill()
        log("dockerd: stopped")


#: what the base's root filesystem holds besides minbase (part of its cache key)
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
    "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
    'CMD ["python3"]',
)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def default_cache_dir() -> Path:
    home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(home) / "banditops" / "compose-test"


def base_tarball(cache_dir: Path) -> Path:
    """Where the base's root filesystem is kept between runs (and ``docker system prune``):
    named by what goes into it, so that another package list or CA bundle builds anew."""
    key = hashlib.sha256(f"{BASE_PACKAGES}\n".encode() + CA_BUNDLE.read_bytes()).hexdigest()
    return cache_dir / f"base-bookworm-{key[:12]}.tar"


def ensure_base(d: Docker, cache_dir: Path) -> str:
    """The base image: present, imported from the cached root filesystem, or built with
    debootstrap (and its root filesystem cached). Returns how it was obtained."""
    if run([d.docker, "image", "inspect", BASE_IMAGE], check=False, capture=True).returncode == 0:
        return "present"
    start = time.monotonic()
    tarball = base_tarball(cache_dir)
    how = f"imported from {tarball}"
    if not tarball.is_file():
        rootfs = d.workdir / "rootfs"
        run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
             "bookworm", str(rootfs), "http://deb.debian.org/debian"],
            capture=True,
        )  # fmt: skip
        # this machine's CA bundle: pip and apt inside the builds reach the registries as
        # it does
        shutil.copy(CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".tar.partial")
        run(["tar", "-C", str(rootfs), "-cf", str(partial), "."])
        partial.replace(tarball)
        shutil.rmtree(rootfs)
        how = f"built with debootstrap (root filesystem kept in {tarball})"
    args = [d.docker, "import", *[a for c in BASE_CHANGES for a in ("-c", c)], str(tarball)]
    imported = run([*args, BASE_IMAGE], check=False, capture=True)
    if imported.returncode != 0:
        raise HarnessError(f"docker import failed: {imported.stderr[-2000:]}")
    return f"{how} in {time.monotonic() - start:.0f} s"


@contextlib.contextmanager
def wheel_server(port: int) -> Iterator[list[str]]:
    """Build arguments that take torch from the machine's wheel directory, served on
    loopback (the builds run on the host network); the CPU index when there is none."""
    wheels = [
        w
        for d in os.environ.get("PIP_FIND_LINKS", "").split()
        if Path(d).is_dir()
        for w in sorted(Path(d).glob("torch-*+cpu-cp311-*.whl"))
    ]
    if not wheels:
        yield []
        return
    wheel = wheels[-1]
    version = wheel.name.split("-")[1]

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = partial(Quiet, directory=str(wheel.parent))
    # a fixed port: the build argument, and so the builds' layer cache, stay the same
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield [
            "--build-arg", f"TORCH_PIP_ARGS=--find-links http://127.0.0.1:{server.server_address[1]}/",
            "--build-arg", f"TORCH_SPEC=torch=={version}",
        ]  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()


def build_images(d: Docker, torch_args: list[str]) -> dict[str, float]:
    times = {}
    for image, (dockerfile, torch) in IMAGES.items():
        start = time.monotonic()
        args = [
            d.docker, "build", "--network", "host", "--progress", "plain",
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", *(torch_args if torch else []),
            "-f", dockerfile, "-t", f"{image}:{TAG}", ".",
        ]  # fmt: skip
        logfile = d.workdir / f"build-{image}.log"
        with logfile.open("w") as out:
            done = subprocess.run(
                args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "DOCKER_BUILDKIT": "1"}, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        if done.returncode != 0:
            raise HarnessError(f"building {image} failed:\n{logfile.read_text()[-6000:]}")
        times[image] = time.monotonic() - start
        log(f"built {image}:{TAG} in {times[image]:.0f} s")
    return times


def image_sizes(d: Docker) -> dict[str, int]:
    sizes = {}
    for image in IMAGES:
        out = run([d.docker, "image", "inspect", "-f", "{{.Size}}", f"{image}:{TAG}"], capture=True)
        sizes[image] = int(out.stdout.strip())
    return sizes


def check_serving_image(d: Docker, size: int) -> None:
    listed = run(
        [d.docker, "run", "--rm", "--entrypoint", "pip", f"banditops-serving:{TAG}", "list",
         "--format", "json"],
        capture=True,
    )  # fmt: skip
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    inside = sorted(names & set(NOT_IN_SERVING))
    if inside:
        raise HarnessError(f"the serving image holds {inside}")
    if "torch" not in names or "banditops" not in names:
        raise HarnessError("the serving image lacks torch or banditops")
    if size >= SERVING_MAX_BYTES:
        raise HarnessError(f"the serving image is {size / 1e9:.2f} GB (limit 1.5 GB)")
    log(
        f"serving image: {len(names)} packages, none of {list(NOT_IN_SERVING)}; {size / 1e9:.2f} GB"
    )


# ---------------------------------------------------------------------- the stack
def containers(d: Docker) -> list[dict[str, Any]]:
    ids = run(
        [d.docker, "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        capture=True,
    ).stdout.split()
    if not ids:
        return []
    return list(json.loads(run([d.docker, "inspect", *ids], capture=True).stdout))


def service_states(d: Docker) -> dict[str, dict[str, Any]]:
    """Service → {status, health, exit_code, id} of its (last) container."""
    out = {}
    for c in containers(d):
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        state = c["State"]
        out[service] = {
            "status": state["Status"],
            "health": (state.get("Health") or {}).get("Status"),
            "exit_code": state["ExitCode"],
            "id": c["Id"],
            "restarts": c.get("RestartCount", 0),
        }
    return out


def failing_services(d: Docker, *, unhealthy: bool = True) -> list[str]:
    """Services whose container exited with an error or restarted, and (``unhealthy``)
    those whose health check fails (which may pass again while a service starts)."""
    bad = []
    for service, s in sorted(service_states(d).items()):
        crashed = s["status"] in ("exited", "restarting") and s["exit_code"] != 0
        sick = unhealthy and s["health"] == "unhealthy"
        if crashed or s["restarts"] or sick:
            bad.append(service)
    return bad


def named_in(d: Docker, message: str) -> tuple[str, ...]:
    """The services whose containers (by id prefix) or names an error message mentions,
    and those failing now."""
    found = set(failing_services(d))
    for service, state in service_states(d).items():
        if state["id"][:12] in message or re.search(rf"\bfor {re.escape(service)}\b", message):
            found.add(service)
    return tuple(sorted(found))


def remove_leftovers(d: Docker) -> None:
    """Containers, volumes and networks of this project left by an interrupted run."""
    label = f"label=com.docker.compose.project={PROJECT}"
    for kind, listing in (
        ("container", ["ps", "-aq"]),
        ("volume", ["volume", "ls", "-q"]),
        ("network", ["network", "ls", "-q"]),
    ):
        ids = run([d.docker, *listing, "--filter", label], capture=True).stdout.split()
        if ids:
            run(
                [d.docker, kind, "rm", *(["-f"] if kind == "container" else []), *ids], capture=True
            )
            log(f"removed {len(ids)} {kind}(s) left by an earlier run")


def print_logs(d: Docker, services: list[str]) -> None:
    states = service_states(d)
    for service in services:
        if service not in states:
            continue
        out = run(
            [d.docker, "logs", "--tail", "80", states[service]["id"]], check=False, capture=True
        )
        print(f"----- logs of {service} (last 80 lines) -----", flush=True)
        print((out.stdout + out.stderr).rstrip(), flush=True)
        print(f"----- end of {service} -----", flush=True)


def wait_healthy(d: Docker, services: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states = service_states(d)
        bad = failing_services(d, unhealthy=False)
        if bad:
            raise HarnessError(f"failing: {bad}", tuple(bad))
        waiting = [s for s in services if states.get(s, {}).get("health") != "healthy"]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise HarnessError(f"not healthy after {timeout_s:.0f} s: {waiting}", tuple(waiting))
        time.sleep(3)


def http_json(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise HarnessError(f"{method} {url}: HTTP {exc.code} {exc.read().decode()[:800]}") from exc
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return text  # e.g. MLflow's /health answers "OK"


def until(what: str, probe: Any, timeout_s: float, services: tuple[str, ...] = ()) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (HarnessError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(2)
    raise HarnessError(f"{what}: not within {timeout_s:.0f} s (last: {last!r})"[:2000], services)


# ---------------------------------------------------------------------- the checks
@dataclass
class Stack:
    d: Docker
    ports: Ports
    env: dict[str, str]

    def serving_url(self, replica: int) -> str:
        return f"http://127.0.0.1:{self.ports.serving[replica]}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.airflow_api}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    def psql(self, database: str, query: str) -> str:
        out = self.d.compose(
            "exec", "-T", "postgres", "psql", "-U", "postgres", "-d", database, "-tAc", query,
            capture=True,
        )  # fmt: skip
        return str(out.stdout).strip()

    def airflow_token(self) -> str:
        body = {
            "username": self.env["AIRFLOW_ADMIN_USERNAME"],
            "password": self.env["AIRFLOW_ADMIN_PASSWORD"],
        }
        return str(http_json("POST", f"{self.airflow_url}/auth/token", body)["access_token"])


def check_health(s: Stack) -> None:
    for replica in range(len(s.ports.serving)):
        ready = http_json("GET", f"{s.serving_url(replica)}/readyz")
        if ready["status"] != "ready":
            raise HarnessError(f"replica {replica}: /readyz {ready}", ("serving",))
    http_json("GET", f"{s.mlflow_url}/health")
    health = http_json("GET", f"{s.airflow_url}/api/v2/monitor/health")
    unhealthy = {k: v for k, v in health.items() if (v or {}).get("status") != "healthy"}
    if unhealthy:
        raise HarnessError(f"Airflow components not healthy: {unhealthy}", ("airflow-apiserver",))
    log(f"healthy: both replicas ready, MLflow, Airflow {sorted(health)}")


def send_traffic(s: Stack, n: int, seed: int) -> int:
    """``n`` decisions with rewards, alternating between the replicas; returns the rewards."""
    rng = np.random.default_rng(seed)
    token = s.env["BANDITOPS_API_TOKEN"]
    items = rng.normal(size=(3, 3))
    for i in range(n):
        url = s.serving_url(i % len(s.ports.serving))
        context = rng.normal(size=4)
        body = {
            "context": [round(float(x), 4) for x in context],
            "candidates": [
                {"id": f"item-{j}", "features": [round(float(x), 4) for x in items[j]]}
                for j in range(3)
            ],
        }
        decision = http_json("POST", f"{url}/v1/decisions", body, token)
        arm = int(decision["arm_id"].split("-")[1])
        p = 1 / (1 + np.exp(-2 * float(context[:3] @ items[arm])))
        reward = {"event_id": decision["event_id"], "reward": float(rng.random() < p)}
        http_json("POST", f"{url}/v1/rewards", reward, token)
    return n


def wait_for_closed_windows(sent_at: float) -> None:
    """Sleep until the reward window of a decision made at ``sent_at`` (``time.time()``;
    the containers share this machine's clock) has closed: the retrain triggered next
    replays every decision sent before."""
    left = sent_at + REWARD_WINDOW_S + 2 - time.time()
    if left > 0:
        log(f"waiting {left:.0f} s for the last decision's {REWARD_WINDOW_S} s reward window")
        time.sleep(left)


def run_retrain(s: Stack) -> tuple[str, dict[str, Any]]:
    token = s.airflow_token()
    api = f"{s.airflow_url}/api/v2"
    until(
        "bandit_retrain parsed",
        lambda: http_json("GET", f"{api}/dags/bandit_retrain", token=token),
        180,
        ("airflow-dag-processor",),
    )
    http_json("PATCH", f"{api}/dags/bandit_retrain", {"is_paused": False}, token)
    created = http_json(
        "POST",
        f"{api}/dags/bandit_retrain/dagRuns",
        {"logical_date": None, "conf": RETRAIN_CONF},
        token,
    )
    run_id = created["dag_run_id"]
    log(f"triggered bandit_retrain through the REST API: {run_id}")

    def finished() -> Any:
        state = http_json("GET", f"{api}/dags/bandit_retrain/dagRuns/{run_id}", token=token)[
            "state"
        ]
        return state if state in ("success", "failed") else None

    state = until("bandit_retrain finished", finished, 900, ("airflow-worker", "airflow-scheduler"))
    tis = http_json(
        "GET", f"{api}/dags/bandit_retrain/dagRuns/{run_id}/taskInstances", token=token
    )["task_instances"]
    if state != "success":
        failed = [t["task_id"] for t in tis if t["state"] != "success"]
        for ti in tis:
            if ti["state"] == "failed":  # the task's own log (kept by the worker)
                url = (
                    f"{api}/dags/bandit_retrain/dagRuns/{run_id}/taskInstances/"
                    f"{ti['task_id']}/logs/{max(int(ti.get('try_number') or 1), 1)}"
                )
                try:
                    print(json.dumps(http_json("GET", url, token=token), indent=1)[-6000:])
                except (HarnessError, OSError) as exc:
                    print(f"(log of {ti['task_id']} unavailable: {exc})")
        raise HarnessError(
            f"bandit_retrain {state}; tasks not successful: {failed}", ("airflow-worker",)
        )
    return run_id, {t["task_id"]: t for t in tis}


def xcom(s: Stack, run_id: str, task: str) -> Any:
    token = s.airflow_token()
    url = (
        f"{s.airflow_url}/api/v2/dags/bandit_retrain/dagRuns/{run_id}/taskInstances/{task}"
        "/xcomEntries/return_value?deserialize=true"
    )
    value = http_json("GET", url, token=token)["value"]
    return json.loads(value) if isinstance(value, str) else value


def registry(s: Stack) -> dict[str, Any]:
    url = f"{s.mlflow_url}/api/2.0/mlflow/registered-models/get?name={MODEL_NAME}"
    return dict(http_json("GET", url)["registered_model"])


def served_versions(s: Stack) -> list[str | None]:
    out = []
    for replica in range(len(s.ports.serving)):
        info = http_json("GET", f"{s.serving_url(replica)}/v1/model")
        out.append((info.get("production") or {}).get("version"))
        if info.get("last_load_error"):  # why a replica keeps what it serves
            log(f"replica {replica}: {json.dumps(info)[:1500]}")
    return out


def scenario(s: Stack) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    check_health(s)
    start = time.monotonic()
    rewards = send_traffic(s, DECISIONS, seed=7)
    sent_at = time.time()
    events = int(s.psql("banditops", "select count(*) from decisions"))
    log(
        f"{DECISIONS} decisions and {rewards} rewards through both replicas in "
        f"{time.monotonic() - start:.0f} s; {events} decisions in the PostgreSQL event store"
    )
    if events != DECISIONS:
        raise HarnessError(f"the event store holds {events} decisions, {DECISIONS} were sent")
    facts["decisions"] = events
    wait_for_closed_windows(sent_at)

    start = time.monotonic()
    run_id, tasks = run_retrain(s)
    facts["retrain_s"] = round(time.monotonic() - start)
    # a worker stores a task's Celery result after it has told Airflow the task ended:
    # the last result can land a moment after the run is reported successful
    deadline = time.monotonic() + 60
    while True:
        celery_done = int(
            s.psql("airflow", "select count(*) from celery_taskmeta where status = 'SUCCESS'")
        )
        if celery_done >= len(tasks) or time.monotonic() > deadline:
            break
        time.sleep(1)
    if celery_done < len(tasks):
        raise HarnessError(
            f"{celery_done} Celery results for {len(tasks)} tasks", ("airflow-worker",)
        )
    replay = xcom(s, run_id, "extract_replay")
    rows = int(replay.get("rows", -1))
    if rows != DECISIONS:
        raise HarnessError(f"the replay read {rows} rows; the event store holds {DECISIONS}")
    registered = xcom(s, run_id, "register_candidate")
    version = str(registered["version"])
    log(
        f"bandit_retrain succeeded in {facts['retrain_s']} s: {len(tasks)} tasks, "
        f"{celery_done} Celery results in PostgreSQL, replay of {rows} rows, version {version}"
    )
    facts["tasks"], facts["version"] = len(tasks), version

    model = registry(s)
    versions = {v["version"] for v in model.get("latest_versions", [])}
    if version not in versions:
        raise HarnessError(f"version {version} not in MLflow's registry: {versions}", ("mlflow",))
    log(f"MLflow registry: {MODEL_NAME} versions {sorted(versions)}")

    # --force: this step checks that a promotion moves @production and that both replicas
    # load it. Whether the candidate's DR lower bound on the 80 held-out rows of 400
    # decisions clears production's estimate is chance (the serving replicas are not
    # seeded): CI once saw 0.452 against 0.496, and the promotion was refused. The gate
    # itself is tested in tests/test_gate.py and the promote DAG's tests.
    s.d.compose("exec", "-T", "serving", "banditops", "promote", version, "--force",
                "--reason", "compose-test", "--by", "compose-test")  # fmt: skip
    aliases = {a["alias"]: a["version"] for a in registry(s).get("aliases", [])}
    if aliases.get(PRODUCTION) != version:
        raise HarnessError(f"@{PRODUCTION} is {aliases.get(PRODUCTION)}, expected {version}")
    served = f"{MODEL_NAME}/{version}"  # how /v1/model names the served version
    start = time.monotonic()
    until(
        f"every replica serving version {version}",
        lambda: all(v == served for v in served_versions(s)),
        120,
        ("serving", "serving-2"),
    )
    log(
        f"promoted version {version}; both replicas serve it after {time.monotonic() - start:.0f} s"
    )

    # a decision by the new version, then down and up with the volumes
    send_traffic(s, 10, seed=8)
    before = {
        "decisions": s.psql("banditops", "select count(*) from decisions"),
        "rewards": s.psql("banditops", "select count(*) from rewards"),
        "dag_runs": s.psql(
            "airflow", "select count(*) from dag_run where dag_id = 'bandit_retrain'"
        ),
    }
    start = time.monotonic()
    s.d.compose("down")
    s.d.compose("up", "-d")
    wait_healthy(s.d, long_running(s.d), 600)
    check_health(s)
    after = {
        "decisions": s.psql("banditops", "select count(*) from decisions"),
        "rewards": s.psql("banditops", "select count(*) from rewards"),
        "dag_runs": s.psql(
            "airflow", "select count(*) from dag_run where dag_id = 'bandit_retrain'"
        ),
    }
    if after != before:
        raise HarnessError(f"down/up lost data: before {before}, after {after}")
    until(
        f"every replica serving version {version} after the restart",
        lambda: all(v == served for v in served_versions(s)),
        120,
        ("serving", "serving-2"),
    )
    aliases = {a["alias"]: a["version"] for a in registry(s).get("aliases", [])}
    if aliases.get(PRODUCTION) != version:
        raise HarnessError(f"after the restart @{PRODUCTION} is {aliases.get(PRODUCTION)}")
    log(
        f"down and up in {time.monotonic() - start:.0f} s: nothing lost {after}, "
        f"@production still {version}, both replicas serve it"
    )
    facts["after_restart"] = after
    return facts


def long_running(d: Docker) -> list[str]:
    config = yaml.safe_load(d.compose("config", capture=True).stdout)
    return sorted(
        name
        for name, spec in config["services"].items()
        if str(spec.get("restart", "no")) != "no" and spec.get("healthcheck")
    )


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--break",
        dest="broken",
        action="store_true",
        help="wrong database URL in serving-migrate: expect that failure",
    )
    parser.add_argument("--port-base", type=int, default=24800)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="kept between runs: the base's root filesystem (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    # a stop (CI's timeout, kill) unwinds like an error: what was started is stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    ports = Ports(args.port_base)
    total = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compose-test-") as tmp:
        d = Docker(Path(tmp))
        try:
            ensure_tools()
            d.docker = builder_client()
            d.compose_cmd = (
                [d.docker, "compose"]
                if run([d.docker, "compose", "version"], check=False, capture=True).returncode == 0
                else ["docker-compose"]
            )
            ensure_daemon(d)
            log(f"base image {BASE_IMAGE}: {ensure_base(d, args.cache_dir)}")
            with wheel_server(ports.wheels) as torch_args:
                times = build_images(d, torch_args)
            sizes = image_sizes(d)
            check_serving_image(d, sizes["banditops-serving"])
            for image in IMAGES:
                log(f"{image}:{TAG}: {sizes[image] / 1e9:.2f} GB, built in {times[image]:.0f} s")
            return stack(d, ports, broken=args.broken)
        except HarnessError as exc:
            log(f"FAILED: {exc}")
            return 1
        finally:
            stop_daemon(d)
            log(f"total {time.monotonic() - total:.0f} s")


def stack(d: Docker, ports: Ports, *, broken: bool) -> int:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    env = test_environment(ports)
    (d.workdir / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    override = host_network_override(compose, ports, broken="serving-migrate" if broken else None)
    rendered = d.workdir / "docker-compose.hostnet.yml"
    rendered.write_text(yaml.safe_dump(applied(compose, override), sort_keys=False))
    d.files = [rendered]
    remove_leftovers(d)
    s = Stack(d, ports, env)
    try:
        if broken:
            return expect_broken(s)
        start = time.monotonic()
        up = d.compose("up", "-d", check=False, capture=True)
        if up.returncode != 0:
            raise HarnessError(f"compose up failed: {up.stderr[-1500:]}", named_in(d, up.stderr))
        wait_healthy(d, long_running(d), 900)
        log(f"stack up and healthy in {time.monotonic() - start:.0f} s: {long_running(d)}")
        facts = scenario(s)
        log(f"PASSED: {json.dumps(facts)}")
        return 0
    except (HarnessError, OSError, KeyError, ValueError) as exc:
        log(f"FAILED: {type(exc).__name__}: {exc}")
        services = list(getattr(exc, "services", ())) or failing_services(d)
        print_logs(d, sorted(set(services) | set(failing_services(d))))
        return 1
    finally:
        d.compose("down", "--volumes", "--remove-orphans", check=False, capture=True)
        remove_leftovers(d)
        log("stack and its volumes removed")


def expect_broken(s: Stack) -> int:
    """The stack with a wrong database URL in serving-migrate: the harness must name that
    service and print its log, which must show the refused login."""
    up = s.d.compose("up", "-d", "serving", check=False, capture=True)
    failing = failing_services(s.d)
    log(f"compose up exited {up.returncode}; failing services: {failing}")
    if up.returncode == 0 or failing != ["serving-migrate"]:
        log("FAILED: the broken database URL was not reported as serving-migrate failing")
        return 1
    from io import StringIO

    buffer = StringIO()
    with contextlib.redirect_stdout(buffer):
        print_logs(s.d, failing)
    printed = buffer.getvalue()
    print(printed, flush=True)
    # the CLI's error is wrapped at the log's width: compare without the line breaks
    if 'password authentication failed for user "banditops"' not in " ".join(printed.split()):
        log("FAILED: serving-migrate's log does not show the refused login")
        return 1
    log(
        "PASSED (--break): serving-migrate failed on the wrong database URL and its log was printed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
