"""The host-network override of ``make compose-test`` (docker/compose_test.py), without an
engine: every service on the host network, every address it uses on loopback at a port of
the run's range, none of them the machine's PostgreSQL or Redis port."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import sqlalchemy as sa
import yaml

from eventstore.replay import read_replay
from serving.store.repository import write_events
from tests.serving_helpers import decision_row, reward_row

pytest_plugins = ["tests.serving_fixtures"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_test", ROOT / "docker/compose_test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compose_test"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker/docker-compose.yml").read_text()))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return [str(value)]


def test_every_service_is_on_loopback_ports_of_the_range(
    harness: ModuleType, compose: dict[str, Any]
) -> None:
    ports = harness.Ports(24800)
    override = harness.host_network_override(compose, ports)
    services = harness.applied(compose, override)["services"]
    assert set(services) == set(compose["services"]) | {"serving-2"}
    assert all(s["network_mode"] == "host" for s in services.values())
    assert not any("ports" in s for s in services.values())
    used = set()
    for name, service in services.items():
        texts = _strings(service.get("environment", {})) + _strings(service.get("command", []))
        texts += _strings(service.get("healthcheck", {}))
        for text in (re.sub(r"\$\{[^}]*\}", "x", t) for t in texts):
            for url in re.findall(r"[a-z][a-z0-9+]*://[^\s\"']+", text):
                parts = urlsplit(url)
                if parts.hostname is None or parts.scheme.startswith("db+"):
                    continue
                assert parts.hostname == "127.0.0.1", f"{name}: {url}"
                assert parts.port is not None and 24800 < parts.port < 24900, f"{name}: {url}"
                used.add(parts.port)
    assert {5432, 6379, 8000, 8080, 5000}.isdisjoint(used)
    assert ports.serving[1] in {int(p) for p in services["serving-2"]["command"] if p.isdigit()}
    # the replicas listen on their own ports and are probed there
    for name, port in zip(("serving", "serving-2"), ports.serving, strict=True):
        command = services[name]["command"]
        assert command[command.index("--port") + 1] == str(port)
        assert f"127.0.0.1:{port}/" in " ".join(services[name]["healthcheck"]["test"])
    # health checks keep their timing (only the probe's address changes)
    for name, service in services.items():
        base = compose["services"].get(name, compose["services"]["serving"])
        if "healthcheck" in base:
            timing = {
                k: v
                for k, v in base["healthcheck"].items()
                if k not in ("test", *harness.LOADED_MACHINE)
            }
            assert harness.LOADED_MACHINE.items() <= service["healthcheck"].items()
            assert timing.items() <= service["healthcheck"].items(), name
    assert services["postgres"]["environment"]["PGPORT"] == str(ports.postgres)
    assert str(ports.redis) in services["redis"]["command"]


def test_the_broken_mode_changes_only_the_named_services_password(
    harness: ModuleType, compose: dict[str, Any]
) -> None:
    ports = harness.Ports(24800)
    good = harness.applied(compose, harness.host_network_override(compose, ports))["services"]
    bad = harness.applied(
        compose, harness.host_network_override(compose, ports, broken="serving-migrate")
    )["services"]
    url = bad["serving-migrate"]["environment"]["BANDITOPS_DATABASE_URL"]
    assert ":wrong-password@127.0.0.1:" in url
    assert good["serving-migrate"]["environment"]["BANDITOPS_DATABASE_URL"] != url
    assert bad["serving"] == good["serving"]


def test_the_test_environment_replaces_every_secret(harness: ModuleType) -> None:
    example = {
        k: v
        for k, _, v in (
            line.partition("=")
            for line in (ROOT / "docker/.env.example").read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
    }
    env = harness.test_environment(harness.Ports(24800))
    assert not any(v.startswith("change-me") for v in env.values())
    assert env["AIRFLOW_FERNET_KEY"] != example["AIRFLOW_FERNET_KEY"]
    assert set(example) <= set(env)


@pytest.mark.parametrize(
    ("command", "runs"),
    [
        (["celery", "worker"], "airflow celery worker"),
        (["api-server"], "airflow api-server"),
        (["bash", "-c", "echo shell"], "shell"),
    ],
)
def test_the_airflow_entrypoint_prefixes_airflow_commands(
    tmp_path: Path, command: list[str], runs: str
) -> None:
    fake = tmp_path / "airflow"
    fake.write_text('#!/bin/sh\necho "airflow $*"\n')
    fake.chmod(0o755)
    done = subprocess.run(
        ["sh", str(ROOT / "docker/airflow-entrypoint.sh"), *command],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == runs


def test_the_retrain_is_triggered_once_the_traffic_windows_have_closed(
    harness: ModuleType, engine: sa.Engine, rng: np.random.Generator
) -> None:
    """The replay holds only decisions whose reward window closed by the run's data interval
    end: with ``.env.example``'s day-long window a retrain right after the traffic replays
    nothing (``validate_features`` then fails its row count, as the harness once did); with
    the harness's window and its wait, every decision sent is replayed."""
    sent_at = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    row = decision_row(rng, created_at=sent_at - timedelta(seconds=1))
    with engine.begin() as conn:
        write_events(conn, [row])
        write_events(conn, [reward_row(row.event_id, 1.0, ts=sent_at)])
    env = harness.test_environment(harness.Ports(24800))
    window = timedelta(seconds=float(env["BANDITOPS_REWARD_WINDOW_S"]))
    assert window == timedelta(seconds=harness.REWARD_WINDOW_S)
    start = sent_at - timedelta(days=7)

    def replayed(as_of: datetime, reward_window: timedelta) -> int:
        return len(read_replay(engine, start, as_of, reward_window=reward_window, as_of=as_of))

    example = (ROOT / "docker/.env.example").read_text()
    found = re.search(r"^BANDITOPS_REWARD_WINDOW_S=(\d+)$", example, re.M)
    assert found is not None
    example_window = timedelta(seconds=int(found.group(1)))
    assert replayed(sent_at + timedelta(minutes=5), example_window) == 0
    assert replayed(sent_at + timedelta(seconds=5), window) == 0
    triggered = sent_at + window + timedelta(seconds=2)  # where wait_for_closed_windows ends
    assert replayed(triggered, window) == 1
