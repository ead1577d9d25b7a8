"""Hostile and careless clients against a real ``banditops serve`` (issue 18): one test per
defect found by the adversarial pass, each failing on the service before the fix.

The module shares one service (Thompson sampling, so slates are costly) for the input
checks; tests that need other settings start their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import update

from bandit_core import Candidates, load_state, save_state
from bandit_core.policies.registry import policy_from_state
from bandit_core.types import PolicyState
from benchmarks.reliability_hostile import bomb_version, huge_dimension_version, nan_version
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.records import DecisionRow
from eventstore.schema import decisions
from eventstore.schema import rewards as reward_table
from serving.budget import NonFiniteChoiceError, check_choice_finite
from serving.decide import choose
from serving.json_body import MAX_DEPTH
from serving.store.repository import write_events
from tests.serving_helpers import (
    AUTH,
    DIM_ARM,
    DIM_USER,
    ROOT,
    TEST_TOKEN,
    ServiceProcess,
    decision_body,
    policy_file,
)

pytest_plugins = ["tests.serving_fixtures"]


def _env(
    tmp: Path, model: Path | None, store_url: str | None = None, **extra: str
) -> dict[str, str]:
    env = {
        "BANDITOPS_WORKSPACE": str(tmp / "ws"),
        "BANDITOPS_DATABASE_URL": store_url or f"sqlite:///{tmp / 'events.db'}",
        "BANDITOPS_USER_SALT": "hostile-salt-0123456",
        "BANDITOPS_POLL_INTERVAL_S": "3600",
        "BANDITOPS_SEED": "3",
    }
    if model is not None:
        env["BANDITOPS_MODEL_PATH"] = str(model)
    env.update(extra)
    return env


#: The ``thompson`` service's budgets. Its model (``shared_lints``, d = 7, 1,002 draws)
#: costs about 1.1·10⁷ units a choice among 1,000 candidates and 1.2·10⁶ among 75
#: (:func:`bandit_core.work.decision_work`).
FIXTURE_UNITS = {"max": 50_000_000, "inline": 1_000_000}


@pytest.fixture(scope="module")
def thompson(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """``banditops serve`` with a linear Thompson-sampling model (token: ``AUTH``)."""
    tmp = tmp_path_factory.mktemp("hostile")
    model = policy_file(tmp / "lints.npz", name="shared_lints")
    env = _env(
        tmp,
        model,
        BANDITOPS_HTTP_BODY_TIMEOUT_S="2",
        BANDITOPS_HTTP_HEAD_TIMEOUT_S="2",
        # budgets this small model's requests can cross (``FIXTURE_UNITS``): the
        # defaults are sized for models of hundreds of features
        BANDITOPS_MAX_WORK_UNITS=str(FIXTURE_UNITS["max"]),
        BANDITOPS_INLINE_WORK_UNITS=str(FIXTURE_UNITS["inline"]),
    )
    service = ServiceProcess(env, tmp / "service.log").start()
    yield service
    service.stop()


@pytest.fixture
def http(thompson: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=thompson.url, timeout=30.0, headers=AUTH) as client:
        yield client


def _slate(rng: np.random.Generator, n: int, k: int) -> dict[str, Any]:
    return {**decision_body(rng, n=n), "k": k}


# -------------------------------------------------------------- 1. request budget
def test_a_hostile_slate_is_refused_before_any_work(http: httpx.Client) -> None:
    """k = 20 over 1,000 candidates (4–7 s of CPU on the event loop before the fix)."""
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    got = http.post("/v1/decisions", json=_slate(rng, 1000, 20))
    elapsed = time.perf_counter() - started
    assert got.status_code == 422, got.text
    assert "max_work_units" in got.json()["detail"][0]["msg"]
    assert elapsed < 1.0
    assert http.get("/healthz").status_code == 200


def test_an_over_budget_slate_is_refused_before_its_body_is_validated(
    http: httpx.Client,
) -> None:
    """The budget is checked on the parsed body's lengths before validation: an over-budget
    slate whose last candidate is invalid gets the budget's 422 (its validation never ran),
    while the same candidates without ``k`` are within the budget and get the id's."""
    rng = np.random.default_rng(11)
    body = _slate(rng, 1000, 20)
    body["candidates"][999]["id"] = "bad\x00id"
    got = http.post("/v1/decisions", json=body)
    assert got.status_code == 422, got.text
    assert "max_work_units" in got.json()["detail"][0]["msg"]
    del body["k"]
    got = http.post("/v1/decisions", json=body)
    assert got.status_code == 422, got.text
    assert got.json()["detail"][0]["loc"] == ["body", "candidates", 999, "id"]


def test_an_over_budget_grouped_request_is_refused_before_its_body_is_validated(
    http: httpx.Client,
) -> None:
    """The groups' costs summed from the parsed body, before validation (the grouped
    route validated 30,000 variants first: about 95 ms of loop time per refusal)."""
    rng = np.random.default_rng(13)
    # 100 groups of 75 variants: about 1.2·10⁸ units, over the fixture's 5·10⁷
    body = decision_body(rng, n=75)
    groups = [{"id": f"g{g}", "variants": body["candidates"]} for g in range(100)]
    groups[99]["variants"] = [*body["candidates"][:-1], {"id": "bad\x00id", "features": [0.0]}]
    got = http.post("/v1/decisions/grouped", json={"context": body["context"], "groups": groups})
    assert got.status_code == 422, got.text
    assert "max_work_units" in got.json()["detail"][0]["msg"]
    within = {"context": body["context"], "groups": groups[98:]}
    got = http.post("/v1/decisions/grouped", json=within)
    assert got.status_code == 422 and "max_work_units" not in got.text, got.text


def _nice_of_threads(pid: int) -> list[int]:
    """The nice value (field 19 of ``/proc/PID/task/TID/stat``) of every thread of ``pid``."""
    values = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        fields = stat.read_text().rsplit(")", 1)[1].split()
        values.append(int(fields[16]))  # fields after "(comm)" start at field 3
    return values


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread niceness is Linux's")
def test_costly_decisions_run_in_a_thread_behind_the_event_loop(
    thompson: ServiceProcess, http: httpx.Client
) -> None:
    """The decision thread runs at ``costly_work_nice`` (19), every other thread of the
    service at the process's niceness."""
    rng = np.random.default_rng(12)
    # 1,000 candidates: over the fixture's inline_work_units, within its budget
    got = http.post("/v1/decisions", json=decision_body(rng, n=1000))
    assert got.status_code == 200, got.text
    assert thompson.proc is not None
    nice = _nice_of_threads(thompson.proc.pid)
    assert nice.count(19) == 1 and nice.count(0) == len(nice) - 1, nice


def test_a_decision_past_its_deadline_is_served_by_the_fallback(tmp_path: Path) -> None:
    """Every decision goes to the decision thread and misses a 1 µs deadline: the
    fallback answers with its exact (uniform) propensity, logged as fallback, counted."""
    model = policy_file(tmp_path / "lints.npz", name="shared_lints")
    env = _env(
        tmp_path,
        model,
        BANDITOPS_INLINE_WORK_UNITS="0",
        BANDITOPS_DECISION_DEADLINE_S="0.000001",
        BANDITOPS_API_TOKEN=TEST_TOKEN,
    )
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        rng = np.random.default_rng(2)
        with httpx.Client(base_url=service.url, timeout=30.0, headers=AUTH) as client:
            got = client.post("/v1/decisions", json=_slate(rng, 8, 3)).json()
            assert got["fallback"] is True and got["policy"] == "fallback:uniform"
            assert got["propensity"] == pytest.approx(1 / 8)
            assert got["slate_propensities"] == pytest.approx([1 / 8, 1 / 7, 1 / 6])
            assert got["model_version"] is None
            assert "banditops_deadline_fallbacks_total 1.0" in client.get("/metrics").text
    finally:
        service.stop()


# -------------------------------------------------------------- 2. numeric hygiene
def test_huge_finite_numbers_are_refused(http: httpx.Client) -> None:
    rng = np.random.default_rng(3)
    body = decision_body(rng)
    body["context"] = [1e100] * DIM_USER
    got = http.post("/v1/decisions", json=body)
    assert got.status_code == 422 and "max_abs_feature" in got.json()["detail"][0]["msg"]
    body = decision_body(rng)
    body["candidates"][1]["features"] = [1e200] * DIM_ARM
    assert http.post("/v1/decisions", json=body).status_code == 422
    item = http.put("/v1/items/huge", json={"features": [1e308, 0.0, 1.0]})
    assert item.status_code == 422, item.text
    # the head stays finite and keeps learning from ordinary rewards
    event = http.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
    assert http.post("/v1/rewards", json={"event_id": event, "reward": 1.0}).json()["applied"]
    assert np.isfinite(http.get("/v1/model").json()["production"]["head"]["theta_norm"])


def test_a_reward_of_an_unbounded_old_decision_is_rejected_not_learnt(tmp_path: Path) -> None:
    """A decision logged before the bound existed (context 1e200): its reward is stored
    as ``rejected``, never applied, and the head stays finite across a restart."""
    model = policy_file(tmp_path / "lints.npz", name="shared_lints")
    env = _env(tmp_path, model, BANDITOPS_API_TOKEN=TEST_TOKEN)
    service = ServiceProcess(env, tmp_path / "service.log").start()
    auth = {"Authorization": f"Bearer {TEST_TOKEN}"}
    try:
        with httpx.Client(base_url=service.url, timeout=30.0, headers=auth) as client:
            version = client.get("/v1/model").json()["production"]["version"]
            engine = make_engine(env["BANDITOPS_DATABASE_URL"])
            with engine.begin() as conn:
                write_events(conn, [_poisoned_decision("old-huge", version)])
            engine.dispose()
            got = client.post("/v1/rewards", json={"event_id": "old-huge", "reward": 1.0})
            assert got.json()["status"] == "rejected" and got.json()["applied"] is False
            assert client.post("/v1/admin/snapshot").status_code == 200
        service.kill()
        service = ServiceProcess(env, tmp_path / "service.log").start()
        with httpx.Client(base_url=service.url, timeout=30.0) as client:
            head = client.get("/v1/model").json()["production"]
            assert head["applied_rewards"] == 0 and np.isfinite(head["head"]["theta_norm"])
    finally:
        service.stop()


def _poisoned_decision(event_id: str, version: str) -> DecisionRow:
    return DecisionRow(
        event_id=event_id,
        created_at=datetime.now(UTC),
        user_hash=None,
        context=np.full(DIM_USER, 1e200),
        candidate_ids=("a", "b"),
        candidate_features=np.ones((2, DIM_ARM)),
        chosen=0,
        propensity=0.5,
        probabilities=np.array([0.5, 0.5]),
        scores=np.zeros(2),
        policy="shared_lints",
        model_version=version,
        traffic="production",
        fallback=False,
        explored=False,
    )


# -------------------------------------------------------------- 3 + 6. model admission
def _source(path: Path) -> Path:
    return policy_file(path.with_name(f"source-{path.name}"), name="shared_linucb")


def _nan_model(path: Path) -> Path:
    return nan_version(_source(path), path)


def _big_config_model(path: Path) -> Path:
    """A small file whose configuration declares dim_user = 100,000."""
    return huge_dimension_version(_source(path), path)


def _bomb_model(path: Path) -> Path:
    """A valid state plus a member that inflates to 1 GiB (a few MB compressed)."""
    return bomb_version(_source(path), path)


def _unknown_policy_model(path: Path) -> Path:
    """A valid state naming a policy nobody registered (it failed as a "load": logged
    with a traceback, tried again every ``retry_failed_s``)."""
    state = load_state(_source(path))
    return save_state(dataclasses.replace(state, policy="evil_algo"), path)


def _many_draws_model(path: Path) -> Path:
    """A 6 kB Thompson state whose configuration asks for 4·10⁷ draws a decision (it
    took GBs while probed, then every ordinary request was over the work budget)."""
    state = load_state(policy_file(path.with_name(f"source-{path.name}"), name="shared_lints"))
    state.config.update(n_sim=40_000_000, max_sim=40_000_000)
    return save_state(state, path)


def _nested_model(path: Path) -> Path:
    """A valid state inside 300 exploration floors (it raised RecursionError while the
    policy was built: a failure to load, retried every ``retry_failed_s``)."""
    state = load_state(_source(path))
    for _ in range(300):
        state = PolicyState(
            "exploration_floor",
            {"p_min": 0.01, "inner": {"policy": state.policy, "config": state.config}},
            {f"inner.{k}": v for k, v in state.arrays.items()},
            state.schema_version,
        )
    return save_state(state, path)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_nan_model, "non-finite"),
        (_big_config_model, "dim_user = 100000"),
        (_bomb_model, "more than"),
        (_unknown_policy_model, "unknown policy 'evil_algo'"),
        (_many_draws_model, "n_sim"),
        (_nested_model, "wraps more than 16 policies"),
    ],
    ids=[
        "nan-weights",
        "huge-dimensions",
        "decompression-bomb",
        "unknown-policy",
        "draws",
        "nested",
    ],
)
def test_an_unsafe_version_is_refused_once_and_the_previous_keeps_serving(
    tmp_path: Path, make: Any, reason: str
) -> None:
    model = policy_file(tmp_path / "policy.npz", name="shared_linucb")
    env = _env(
        tmp_path, model, BANDITOPS_API_TOKEN=TEST_TOKEN, BANDITOPS_MODEL_MAX_BYTES=str(64 << 20)
    )
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        with httpx.Client(
            base_url=service.url, timeout=60.0, headers={"Authorization": f"Bearer {TEST_TOKEN}"}
        ) as client:
            serving = client.get("/v1/model").json()["production"]["version"]
            bad = make(tmp_path / "bad.npz")
            bad.replace(model)
            for _ in range(3):  # refused once, not retried while it does not change
                info = client.post("/v1/admin/poll").json()
            assert info["production"]["version"] == serving
            assert info["load_failures"] == 1
            assert reason in info["last_load_error"]
            text = client.get("/metrics").text
            assert 'banditops_model_load_failures_total{reason="admission"} 1.0' in text
            rng = np.random.default_rng(4)
            assert client.post("/v1/decisions", json=decision_body(rng)).json()["fallback"] is False
        rss_kb = _rss_kb(service)
        assert rss_kb < 900_000, f"the service holds {rss_kb} kB"
    finally:
        service.stop()


def _rss_kb(service: ServiceProcess) -> int:
    assert service.proc is not None
    status = Path(f"/proc/{service.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


# -------------------------------------------------------------- 4. fallback width
def test_without_a_model_widths_are_capped(tmp_path: Path) -> None:
    env = _env(tmp_path, None, BANDITOPS_API_TOKEN=TEST_TOKEN, BANDITOPS_MAX_CONTEXT_FEATURES="64")
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        with httpx.Client(base_url=service.url, timeout=30.0, headers=AUTH) as client:
            wide = {"context": [0.5] * 5000, "candidates": [{"id": "a", "features": [1.0]}]}
            got = client.post("/v1/decisions", json=wide)
            assert got.status_code == 422 and "max_context_features" in got.text
            feats = {"context": [0.5], "candidates": [{"id": "a", "features": [1.0] * 5000}]}
            got = client.post("/v1/decisions", json=feats)
            assert got.status_code == 422 and "max_arm_features" in got.text
    finally:
        service.stop()


# -------------------------------------------------------------- 5. fail-closed auth
def _serve_exits(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops", "serve", "--port", "0"],
        cwd=ROOT,
        env={**_clean_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("BANDITOPS_")}


def test_without_a_token_the_service_refuses_to_start(tmp_path: Path) -> None:
    done = _serve_exits(_env(tmp_path, None), tmp_path)
    assert done.returncode != 0
    assert "BANDITOPS_AUTH_DISABLED" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_an_empty_token_is_a_settings_error(tmp_path: Path) -> None:
    done = _serve_exits(_env(tmp_path, None, BANDITOPS_API_TOKEN=""), tmp_path)
    assert done.returncode != 0
    output = " ".join((done.stdout + done.stderr).split())
    assert "api_token (BANDITOPS_API_TOKEN): is set but empty" in output
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("setting", ["BANDITOPS_JOURNAL_DIR", "BANDITOPS_RUNS_DIR"])
def test_a_folder_that_cannot_be_created_is_named_before_the_start(
    tmp_path: Path, setting: str
) -> None:
    """A folder setting under /proc (no folder can be made there): one line naming the
    setting, exit 2; the journal's failed the application's start with a traceback."""
    env = _env(tmp_path, None, BANDITOPS_API_TOKEN=TEST_TOKEN, **{setting: "/proc/banditops-x"})
    done = _serve_exits(env, tmp_path)
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output
    name = setting.removeprefix("BANDITOPS_").lower()
    assert output == (
        f"error: {name} ({setting}): the folder /proc/banditops-x cannot be created: "
        "No such file or directory."
    )


def test_a_port_another_process_listens_on_is_named_before_the_start(tmp_path: Path) -> None:
    """uvicorn's own answer was "ERROR: [Errno 98] … address already in use" and exit
    code 3, after the event store was migrated; it is one line naming --port, exit 2."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = _env(tmp_path, None, BANDITOPS_API_TOKEN=TEST_TOKEN)
        done = subprocess.run(
            [sys.executable, "-m", "ops", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**_clean_env(), **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output
    assert output == (
        f"error: --port {port}: 127.0.0.1:{port} cannot be bound: Address already in use "
        "(another process listens on it?)."
    )


def test_auth_disabled_warns_and_admin_stays_closed(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    env = _env(tmp_path, None, BANDITOPS_AUTH_DISABLED="true")
    service = ServiceProcess(env, log).start()
    try:
        with httpx.Client(base_url=service.url, timeout=30.0) as client:
            assert client.get("/v1/admin/state").status_code == 403
            assert client.post("/v1/admin/poll").status_code == 403
            forged = client.post("/v1/admin/poll", headers={"Authorization": "Bearer x"})
            assert forged.status_code == 403
    finally:
        service.stop()
    assert "AUTH DISABLED" in log.read_text()


# -------------------------------------------------------------- 7. no 5xx on bad input
def _raw(client: httpx.Client, path: str, text: str, method: str = "POST") -> httpx.Response:
    return client.request(
        method, path, content=text.encode(), headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize(
    "body",
    [
        '{"context": [0.1, 0.2, 0.3, 0.4], "candidates": [{"id": "\\ud800", "features": [1, 2, 3]}]}',
        '{"context": [0.1, 0.2, 0.3, 0.4], "candidates": [{"id": "a", "features": [1, 2, 3]}],'
        ' "user_id": "\\udfff"}',
        '{"context": {"\\ud800": 1.0}, "candidates": [{"id": "a", "features": [1, 2, 3]}]}',
        '{"context": [0.1, 0.2, 0.3, 0.4], "candidates": [{"id": "a\\u0000b", "features": [1, 2, 3]}]}',
        '{"context": [0.1, 0.2, 0.3, 0.4], "candidates": [{"id": "a", "features": [1, 2, 3]}], '
        '"x\\ud800": 1}',
    ],
    ids=["surrogate-id", "surrogate-user", "surrogate-key", "nul-id", "surrogate-extra"],
)
def test_bad_text_is_a_422(http: httpx.Client, body: str) -> None:
    got = _raw(http, "/v1/decisions", body)
    assert got.status_code == 422, got.text


@pytest.mark.parametrize(
    "stamp", ["9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+00:00", "0001-01-01T00:00:00-01:00"]
)
def test_timestamps_at_the_datetime_limits_are_a_422(http: httpx.Client, stamp: str) -> None:
    rng = np.random.default_rng(5)
    event = http.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
    got = http.post("/v1/rewards", json={"event_id": event, "reward": 1.0, "timestamp": stamp})
    assert got.status_code == 422, got.text


def _cursor(payload: str) -> str:
    import base64

    return base64.urlsafe_b64encode(payload.encode("utf-8", "surrogatepass")).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor("[" * 700 + "]" * 700),
        _cursor('[1, "\\ud800"]'),
        _cursor('[99999999999999999999999, "a"]'),
        "\udcff",
        "a\x00b",
    ],
    ids=["nested", "surrogate-json", "huge-seq", "surrogate-query", "nul-query"],
)
def test_bad_catalog_cursors_are_a_422(http: httpx.Client, cursor: str) -> None:
    from urllib.parse import quote

    got = http.get(f"/v1/items?cursor={quote(cursor, errors='surrogatepass')}")
    assert got.status_code == 422, got.text


def test_nul_in_ids_is_a_422_on_every_store(store_url: str, tmp_path: Path) -> None:
    """On PostgreSQL a NUL in a text column is refused by the server (a 503 or 500)."""
    model = policy_file(tmp_path / "policy.npz")
    env = _env(tmp_path, model, store_url, BANDITOPS_API_TOKEN=TEST_TOKEN)
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        with httpx.Client(
            base_url=service.url, timeout=30.0, headers={"Authorization": f"Bearer {TEST_TOKEN}"}
        ) as client:
            rng = np.random.default_rng(6)
            body = decision_body(rng, user="u\x00")
            assert client.post("/v1/decisions", json=body).status_code == 422
            body = decision_body(rng)
            body["candidates"][0]["id"] = "item\x00"
            assert client.post("/v1/decisions", json=body).status_code == 422
            assert client.put("/v1/items/a%00b", json={"features": [1.0]}).status_code == 422
            got = client.post("/v1/rewards", json={"event_id": "e\x00", "reward": 1.0})
            assert got.status_code == 422
            assert client.get("/v1/items/%00").status_code == 422
    finally:
        service.stop()


# -------------------------------------------------------------- 8. smaller
def test_every_parse_error_is_a_422(http: httpx.Client) -> None:
    for raw in (b'{"context": [0.1,', b'\xff\xfe{"context": 1}', b"[1, 2", b""):
        got = http.post("/v1/decisions", content=raw, headers={"content-type": "application/json"})
        assert got.status_code == 422, (raw, got.status_code, got.text)


@pytest.mark.parametrize("depth", [150, 500, 5000])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/decisions"),
        ("POST", "/v1/decisions/grouped"),
        ("POST", "/v1/rewards"),
        ("POST", "/v1/items"),
        ("PUT", "/v1/items/deep"),
    ],
)
def test_deeply_nested_bodies_are_a_422_naming_the_limit(
    thompson: ServiceProcess, http: httpx.Client, method: str, path: str, depth: int
) -> None:
    """1 kB nested 500 deep was read by ``json`` and echoed back by the 422 handler, which
    recursed past Python's limit: a 500 and a traceback in the log per request, on every
    endpoint with a body, with or without a token (serving helper, stop 53)."""
    logged = thompson.log.read_text()
    nested = "[" * depth + "]" * depth
    for body in (f'{{"context": {nested}}}', f'{{"x": {nested}}}', nested):
        got = _raw(http, path, body, method)
        assert got.status_code == 422, (body[:20], got.status_code, got.text[:300])
        if depth > MAX_DEPTH:
            assert "deeper than 200 levels" in got.text, got.text
        assert len(got.text) < 2_000  # the echo is cut, not the whole body
    assert "Traceback" not in thompson.log.read_text()[len(logged) :]


def test_a_trickled_body_times_out_with_408(thompson: ServiceProcess) -> None:
    """A client that declares a body and never sends it holds nothing past the timeout."""
    import socket

    with socket.create_connection(("127.0.0.1", thompson.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/decisions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n{"
        )
        started = time.perf_counter()
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.perf_counter() - started < 10


def test_a_body_its_client_abandoned_is_not_run(
    thompson: ServiceProcess, http: httpx.Client
) -> None:
    """A client that closed its connection before its declared body ended had the bytes
    sent so far run as the whole request when they parsed: a reward it gave up on was
    applied, and its retry answered ``duplicate`` (audit, stop 55). Nothing is run for a
    client that left."""
    import socket

    decided = http.post("/v1/decisions", json=decision_body(np.random.default_rng(7)))
    event = decided.json()["event_id"]
    body = json.dumps({"event_id": event, "reward": 1.0}).encode()
    head = (
        f"POST /v1/rewards HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        f"authorization: {AUTH['Authorization']}\r\ncontent-length: {len(body) + 100}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", thompson.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        time.sleep(0.2)  # the body's bytes are in; the rest never comes
    time.sleep(1.0)
    retried = http.post("/v1/rewards", json={"event_id": event, "reward": 0.0})
    assert retried.status_code == 200 and retried.json()["status"] == "applied", retried.text


def _answer(sock: Any) -> bytes:
    """What the server sends until it closes the connection."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def test_a_head_over_the_limit_is_431_however_it_arrives(
    thompson: ServiceProcess, http: httpx.Client
) -> None:
    """uvicorn bounds the head only in its h11 protocol; with httptools (which it picks)
    an 8 MB header was answered 200, and an endless one grew the service by 200 MB a
    connection. Now a head over BANDITOPS_HTTP_MAX_INCOMPLETE_EVENT_BYTES (16 KiB) is a
    431, whole or endless, while a large body under a small head is served."""
    import socket

    whole = http.get("/healthz", headers={"x-pad": "a" * (1 << 20)})
    assert whole.status_code == 431, whole.text
    with socket.create_connection(("127.0.0.1", thompson.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-endless: ")
        sent = 0
        with contextlib.suppress(ConnectionError):  # closed while we still send
            while sent < 64 << 20:
                sock.sendall(b"b" * (64 << 10))
                sent += 64 << 10
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert sent < 4 << 20  # refused within a few reads of the limit, not at the end
    padded = {**decision_body(np.random.default_rng(0), n=50), "user_id": "u" * 100}
    body = json.dumps(padded).encode() + b" " * (200 << 10)  # 200 KiB under a small head
    served = http.post("/v1/decisions", content=body, headers={"content-type": "application/json"})
    assert served.status_code in (200, 413), served.text  # the body limit decides, not 431


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"])
def test_a_head_not_received_in_time_is_408(thompson: ServiceProcess, sent: bytes) -> None:
    """A connection that sends nothing, or half a head, is answered 408 and closed after
    BANDITOPS_HTTP_HEAD_TIMEOUT_S (2 s here). Before, both stayed open for good: 1,000
    of them took every place of http_limit_concurrency and every request got 503."""
    import socket

    with socket.create_connection(("127.0.0.1", thompson.port), timeout=30) as sock:
        sock.sendall(sent)
        started = time.perf_counter()
        answer = _answer(sock)
        waited = time.perf_counter() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert 1.5 < waited < 10


def test_a_kept_alive_connection_serves_requests_whose_heads_arrive_in_pieces(
    thompson: ServiceProcess,
) -> None:
    """The head's deadline and count start again with each request of a connection."""
    import socket

    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    with socket.create_connection(("127.0.0.1", thompson.port), timeout=30) as sock:
        for _ in range(3):
            sock.sendall(head)
            time.sleep(0.8)  # within the 2 s timeout, and 2.4 s in all
            sock.sendall(b"x-note: " + b"n" * 12_000 + b"\r\n\r\n")  # 12 KiB of 16
            answer = b""
            while b'"status":"ok"' not in answer and (chunk := sock.recv(65536)):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_store_prune_errors_are_clean(tmp_path: Path) -> None:
    cases = [
        (["--older-than", "99999999999d"], "--older-than"),
        (["--older-than", "9000000d"], "--older-than"),
        (["--older-than", "1d", "--url", "postgresql+psycopg2://x@127.0.0.1:1/none"], "refused"),
        (["--older-than", "1d", "--url", "nonsense://"], "--url"),
    ]
    for args, expected in cases:
        done = subprocess.run(
            [sys.executable, "-m", "ops", "store", "prune", *args],
            cwd=ROOT,
            env={**_clean_env(), "BANDITOPS_WORKSPACE": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = done.stdout + done.stderr
        assert done.returncode != 0 and "Traceback" not in out, out
        assert expected in out, out


def test_the_bodies_of_hostile_json_never_reach_the_log_as_5xx(http: httpx.Client) -> None:
    """The 422 handler renders what it cannot encode as escapes (it echoed it before)."""
    got = _raw(http, "/v1/rewards", '{"event_id": "\\ud800", "reward": "\\udfff"}')
    assert got.status_code == 422
    json.loads(got.text)  # valid UTF-8 JSON


def test_thompson_splits_exact_ties_uniformly_with_their_propensity() -> None:
    """Two identical candidates tie exactly in every posterior draw: each is chosen half
    the time with propensity 1/2 (before: always the first, with propensity 1)."""
    from bandit_core import Candidates, make_policy

    policy = make_policy("shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM, n_sim=50)
    same = np.ones((2, DIM_ARM))
    rng = np.random.default_rng(7)
    chosen = []
    for _ in range(400):
        decision = policy.select(np.ones(DIM_USER), Candidates(("a", "b"), same), rng)
        assert decision.propensity == pytest.approx(0.5)
        np.testing.assert_allclose(decision.probabilities, [0.5, 0.5])
        chosen.append(decision.arm)
    share = np.mean(chosen)
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / 400)  # 4 standard errors


# -------------------------------------------------------------- the benchmark's verdict
def _benchmark(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / f"reliability{len(extra)}.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.reliability",
            "--cases",
            "hostile",
            "--stores",
            "sqlite",
            "--hostile-seconds",
            "2",
            "--json",
            str(out),
            *extra,
        ],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.exists(), done.stdout + done.stderr
    return done.returncode, json.loads(out.read_text())["rows"][0]


def test_the_reliability_benchmark_is_a_verdict(tmp_path: Path) -> None:
    """0 with nothing lost, duplicated, poisoned or 5xx; non-zero when the hostile case
    is broken on purpose (huge numbers let through poison the head)."""
    code, row = _benchmark(tmp_path)
    assert code == 0, row
    assert (row["lost"], row["duplicated"], row["poisoned"], row["server_errors"]) == (0, 0, 0, 0)
    assert row["slates"]["healthz_p99_ms"] > 0 and row["slates"]["ordinary_decision_p99_ms"] > 0
    code, row = _benchmark(tmp_path, "--sabotage")
    assert code != 0 and row["poisoned"] > 0, row


# -------------------------------------------------------------- 4. replay quarantine
def _window(
    tmp_path: Path, broken: int, total: int = 150, how: str = "wide"
) -> tuple[str, datetime, datetime]:
    """A store with ``total`` decisions and rewards, ``broken`` of them 500 features wide
    (logged by a service without width caps, or sent while no model served) or, with
    ``how="propensity"``, logged with propensity 0; ``how="reward"`` stores their reward
    outside ``[0, 1]`` (an edited store, or another tool's write) and gives the others a
    second reward."""
    from datetime import timedelta

    from tests.serving_helpers import decision_row, reward_row

    url = f"sqlite:///{tmp_path / f'window-{how}-{broken}.db'}"
    engine = make_engine(url)
    upgrade(engine)
    rng = np.random.default_rng(8)
    start = datetime.now(UTC) - timedelta(hours=1)
    rows: list[Any] = []
    edits: dict[str, dict[str, float]] = {}
    rewards: dict[str, float] = {}
    for i in range(total):
        row = decision_row(rng, created_at=start + timedelta(seconds=i))
        if i < broken and how == "wide":
            row = dataclasses.replace(row, event_id=f"wide-{i}", context=np.ones(500))
        elif i < broken and how == "mislogged":
            # a propensity its probabilities do not give (an edited or corrupt store)
            row = dataclasses.replace(row, event_id=f"mislogged-{i}", propensity=0.001)
        elif i < broken and how == "chosen":  # edited in the store below
            wrong = (row.chosen + 1) % len(row.candidate_ids) if i % 2 else 99
            row = dataclasses.replace(row, event_id=f"chosen-{i}")
            edits[row.event_id] = {"chosen": wrong}
        elif i < broken and how == "se":
            row = dataclasses.replace(row, event_id=f"se-{i}")
            edits[row.event_id] = {"propensity_se": float("inf") if i % 2 else -0.5}
        elif i < broken and how == "reward":  # edited in the store below
            row = dataclasses.replace(row, event_id=f"reward-{i}")
            rewards[row.event_id] = (7.0, -float("inf"))[i % 2]
        elif how == "newer" and i >= total - broken:  # a context feature added lately
            row = dataclasses.replace(row, event_id=f"newer-{i}", context=np.ones(DIM_USER + 1))
        elif how == "newer":
            pass
        elif i < broken:
            row = dataclasses.replace(row, event_id=f"zero-{i}", propensity=0.0)
        rows += [row, reward_row(row.event_id, float(rng.random() < 0.5), ts=row.created_at)]
        if how == "reward" and i >= broken:
            rows.append(reward_row(row.event_id, 1.0, ts=row.created_at))
    with engine.begin() as conn:
        write_events(conn, rows)
        for event_id, value in rewards.items():  # the service never stores these
            conn.execute(
                update(reward_table).where(reward_table.c.event_id == event_id), {"value": value}
            )
        for event_id, values in edits.items():  # the service never logs these
            edit = update(decisions).where(decisions.c.event_id == event_id)
            conn.execute(edit.values(**values))
    engine.dispose()
    return url, start - timedelta(minutes=1), start + timedelta(hours=1)


def test_rows_breaking_the_schema_are_quarantined_not_the_window(tmp_path: Path) -> None:
    """One wide row failed the whole GX window, so the nightly retrain never registered."""
    from datetime import timedelta

    from training.replay import extract_replay
    from training.validate import validate_features
    from validation.expectations import DataValidationError

    url, start, end = _window(tmp_path, broken=1)
    manifest = extract_replay(url, start, end, tmp_path / "ok", reward_window=timedelta(seconds=1))
    assert (manifest.quarantined, manifest.rows, manifest.dim_user) == (1, 149, DIM_USER)
    rules = {"min_rows": 100, "reward_min": 0.0, "reward_max": 1.0, "drift_threshold": 1.0}
    validate_features(manifest, tmp_path / "ok" / "docs", **rules)
    named = json.loads((tmp_path / "ok" / "docs" / "quarantine.json").read_text())
    assert [r["event_id"] for r in named["rows"]] == ["wide-0"]
    # rows of another width, however many (a client's, while no model fixed the width):
    # set aside, so they cannot keep the way out of the fallback failing (before: 10 of
    # 150 failed every run)
    url, start, end = _window(tmp_path, broken=10, how="wide")
    manifest = extract_replay(
        url, start, end, tmp_path / "many", reward_window=timedelta(seconds=1)
    )
    assert (manifest.quarantined, manifest.rows) == (10, 140)
    validate_features(manifest, tmp_path / "many" / "docs", **rules)
    # other breakage above the share: nothing is set aside and the suite fails the run
    url, start, end = _window(tmp_path, broken=10, how="propensity")
    manifest = extract_replay(
        url, start, end, tmp_path / "over", reward_window=timedelta(seconds=1)
    )
    assert manifest.quarantined == 0 and manifest.rows == 150
    with pytest.raises(DataValidationError):
        validate_features(manifest, tmp_path / "over" / "docs", **rules)


def test_a_window_whose_newest_decisions_changed_width_is_refused_naming_the_change(
    tmp_path: Path,
) -> None:
    """A context feature added by the clients in the last 30 % of the window: those rows
    were set aside as strays and a version of the old width was registered, silently,
    its head missing every decision since the change (audit, stop 54). The newest
    decisions, more than the quarantine's share and nothing else among them, of one
    other width: refused, naming it. One such row alone is still set aside."""
    from datetime import timedelta

    from training.replay import extract_replay

    url, start, end = _window(tmp_path, broken=10, how="newer")
    with pytest.raises(ValueError, match="the window's newest 10 of 150 decisions") as caught:
        extract_replay(url, start, end, tmp_path / "changed", reward_window=timedelta(seconds=1))
    assert f"have {DIM_USER + 1} context" in str(caught.value)
    assert "starts after the change (window_start)" in str(caught.value)
    url, start, end = _window(tmp_path, broken=1, how="newer")
    manifest = extract_replay(url, start, end, tmp_path / "one", reward_window=timedelta(seconds=1))
    assert (manifest.quarantined, manifest.rows) == (1, 149)


def test_an_extraction_cut_short_by_a_full_disk_leaves_no_part_file(tmp_path: Path) -> None:
    """A replay write that fails half-way (here the process may write no file past 16 KB
    once it has read the store, as on a full disk) left its ``replay.parquet.tmp`` in the run folder, and every
    nightly run key another (resources pass). The error goes up; nothing is left."""
    url, start, end = _window(tmp_path, broken=0, total=400)
    out = tmp_path / "cut"
    script = f"""
import resource, signal, sys
from datetime import datetime, timedelta
import pandas as pd
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as ENOSPC: an error, not a kill
from training.replay import extract_replay
write = pd.DataFrame.to_parquet
def cut_short(frame, path, **kw):  # the disk fills once the store has been read
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.RLIM_INFINITY))
    return write(frame, path, **kw)
pd.DataFrame.to_parquet = cut_short
try:
    extract_replay({url!r}, datetime.fromisoformat({start.isoformat()!r}),
                   datetime.fromisoformat({end.isoformat()!r}), {str(out)!r},
                   reward_window=timedelta(seconds=1))
except OSError as exc:
    print("refused:", exc)
    sys.exit(3)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "File too large" in done.stdout or "Errno 27" in done.stdout, done.stdout
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_stored_reward_outside_the_reward_range_is_quarantined_not_the_window(
    tmp_path: Path,
) -> None:
    """One reward outside ``[reward_min, reward_max]`` in the store (7, or −inf: an edited
    store, another tool's write, a range narrowed since) failed the suite, so every retrain
    failed while it stayed in the window. It is set aside like any row breaking the
    schema, under either duplicate rule (a sum of two rewards in range is kept)."""
    from datetime import timedelta

    from training.replay import extract_replay
    from training.validate import validate_features
    from validation.expectations import DataValidationError

    rules = {"min_rows": 100, "reward_min": 0.0, "reward_max": 1.0, "drift_threshold": 1.0}
    url, start, end = _window(tmp_path, broken=2, total=200, how="reward")
    for rule in ("first_wins", "sum"):
        out = tmp_path / rule
        manifest = extract_replay(
            url, start, end, out, reward_window=timedelta(seconds=1), duplicate_rule=rule
        )
        assert (manifest.quarantined, manifest.rows) == (2, 198), rule
        set_aside = pd.read_parquet(out / "quarantine.parquet")
        assert set_aside["event_id"].tolist() == ["reward-0", "reward-1"]
        reasons = set_aside["reason"].tolist()
        if rule == "sum":
            assert reasons[0] == "reward 7 is not a sum of 1 rewards each in [0, 1]"
        else:
            assert reasons == ["reward 7 is not in [0, 1]", "reward -inf is not in [0, 1]"]
        validate_features(manifest, out / "docs", **rules)
    # a window whose range was narrowed since: its rewards in the old range are more than
    # the share, so the suite fails the run on them, naming the expectation
    narrowed = tmp_path / "narrowed"
    manifest = extract_replay(
        url, start, end, narrowed, reward_window=timedelta(seconds=1), reward_max=0.5
    )
    assert manifest.quarantined == 0 and manifest.rows == 200
    with pytest.raises(DataValidationError, match="reward"):
        validate_features(manifest, narrowed / "docs", **{**rules, "reward_max": 0.5})


def test_a_logged_choice_that_does_not_hold_together_is_quarantined(tmp_path: Path) -> None:
    """Three held-out rows of 300 whose propensity (0.001) was not their logged
    probability (1/K) put production's DR estimate at −3.7 on a [0, 1] reward and a worse
    candidate passed the gate; a ``chosen`` naming another candidate (or none) trained
    and evaluated the wrong arm, or failed with an IndexError. Such rows are set aside,
    named; above the share the extraction fails, naming the first."""
    from datetime import timedelta

    from training.replay import extract_replay

    def extract(how: str, broken: int, total: int = 150) -> Any:
        url, start, end = _window(tmp_path, broken=broken, total=total, how=how)
        out = tmp_path / f"{how}-{broken}"
        return extract_replay(url, start, end, out, reward_window=timedelta(seconds=1)), out

    manifest, out = extract("mislogged", 1)
    assert (manifest.quarantined, manifest.rows) == (1, 149)
    set_aside = pd.read_parquet(out / "quarantine.parquet")
    assert set_aside["event_id"].tolist() == ["mislogged-0"]
    assert "propensity 0.001 is not its logged probability" in set_aside["reason"][0]
    manifest, out = extract("chosen", 2, total=200)
    assert (manifest.quarantined, manifest.rows) == (2, 198)
    reasons = pd.read_parquet(out / "quarantine.parquet")["reason"].tolist()
    assert "chosen 99 is not the index of one of its" in reasons[0]
    assert "not the logged arm" in reasons[1]
    manifest, out = extract("se", 2, total=200)  # before: the evaluation refused the run
    assert (manifest.quarantined, manifest.rows) == (2, 198)
    reasons = pd.read_parquet(out / "quarantine.parquet")["reason"].tolist()
    assert reasons == [
        "propensity_se -0.5 is not a standard error (finite, at least 0)",
        "propensity_se inf is not a standard error (finite, at least 0)",
    ]
    with pytest.raises(
        ValueError,
        match=r"10 of the window's 150 decisions log a choice "
        r"that does not hold together.*'mislogged-0'.*propensity 0.001",
    ):
        extract("mislogged", 10)


def test_a_version_whose_scores_overflow_on_client_scale_inputs_is_refused() -> None:
    """θ with 1e308 at 2 of every 10 positions: finite on the old single probe (every
    input 0.5), non-finite on features of ±1 — every real decision then fell back, each
    with a traceback. The probes now include such inputs: the version is refused."""
    from bandit_core import make_policy
    from serving.models.loader import UnsafeModelError, smoke_test
    from serving.models.served import Signature

    state = make_policy("shared_lints", dim_user=6, dim_arm=4).to_state()
    theta = state.arrays["head.theta"]
    positions = np.arange(theta.size).reshape(theta.shape)
    state.arrays["head.theta"] = np.where(positions % 10 < 2, 1e308, 0.0)
    # the mean its factor (the prior's: I) and statistics give, as a restored head's must be
    state.arrays["head.xty"] = state.arrays["head.theta"].copy()
    policy = policy_from_state(state)
    signature = Signature.of(policy)
    ones = Candidates(("a", "b"), np.ones((2, signature.dim_arm)))
    with np.errstate(over="ignore", invalid="ignore"):
        choice = choose(policy, np.ones(signature.dim_user), ones, np.random.default_rng(0))
    with pytest.raises(NonFiniteChoiceError):  # the premise: features of 1 overflow
        check_choice_finite(choice.decision, None, None)
    with warnings.catch_warnings(), pytest.raises(UnsafeModelError, match="probe decision"):
        warnings.simplefilter("ignore", RuntimeWarning)  # as in the service: not errors
        smoke_test(policy, signature)


@pytest.mark.parametrize("name", ["lints", "linucb", "hybrid_lints"])
def test_a_per_arm_version_with_a_known_arm_that_overflows_is_refused(name: str) -> None:
    """The probes decided among unseen arms only (the prior's head): a known arm whose
    finite block overflows in a score (θ = 1e308) passed them, served, and every request
    offering that arm fell back with a traceback. The probes now decide among every
    known arm too."""
    from bandit_core import make_policy
    from serving.models.loader import UnsafeModelError, smoke_test
    from serving.models.served import Signature

    dims = {"dim_user": 4, **({"dim_arm": 3} if name.startswith("hybrid") else {})}
    policy = make_policy(name, **dims)
    rng = np.random.default_rng(0)
    n = 30
    policy.update_batch(
        rng.standard_normal((n, 4)),
        [f"item-{i % 5}" for i in range(n)],
        rng.random(n),
        rng.standard_normal((n, dims.get("dim_arm", 0))),
    )
    state = policy.to_state()
    smoke_test(policy_from_state(state), Signature.of(policy))  # as trained: serves
    slot = list(state.arrays["arm_ids"]).index("item-1") + 1
    key = "head.theta" if "head.theta" in state.arrays else "hybrid.scoring"
    state.arrays[key] = state.arrays[key].copy()
    state.arrays[key][slot] = 1e308
    if key == "head.theta":  # the mean its factor and statistics give, as restored must be
        for name, value in (("head.inv_chol", np.eye(4)), ("head.xty", state.arrays[key][slot])):
            state.arrays[name] = state.arrays[name].copy()
            state.arrays[name][slot] = value
    with warnings.catch_warnings(), pytest.raises(UnsafeModelError, match="known arms"):
        warnings.simplefilter("ignore", RuntimeWarning)
        smoke_test(policy_from_state(state), Signature.of(policy))


def test_a_version_no_request_could_afford_is_refused() -> None:
    """Draws within the library's limit, but a decision between two candidates over the
    service's budget: every request would be a 422, so the version is refused."""
    from bandit_core import make_policy
    from serving.models.loader import UnsafeModelError, smoke_test
    from serving.models.served import Signature

    policy = make_policy("shared_lints", dim_user=6, dim_arm=4, n_sim=500_000, max_sim=500_000)
    signature = Signature.of(policy)
    with pytest.raises(UnsafeModelError, match="max_work_units is 5000000"):
        smoke_test(policy, signature, max_work_units=5_000_000)
    smoke_test(make_policy("shared_lints", dim_user=6, dim_arm=4), signature, 5_000_000)


def test_a_refused_batch_tells_no_client_of_the_others_events(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Journal off, the store locked: each of 8 concurrent decisions gets a 503 naming
    only the kind of failure. Before, the driver's message, which quotes the parameters
    of the whole batch (other clients' event ids, user hashes, candidates), went into
    every body."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    from tests.serving_helpers import decision_body, running_client, service_settings

    settings = service_settings(tmp_path, journal=False, store_lock_timeout_s=1.0)
    with running_client(settings) as client:
        bodies = [{**decision_body(rng), "user_id": f"secret-user-{i}"} for i in range(8)]
        lock = sqlite3.connect(settings.store_url.removeprefix("sqlite:///"), timeout=1)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            with ThreadPoolExecutor(8) as pool:
                replies = list(pool.map(lambda b: client.post("/v1/decisions", json=b), bodies))
        finally:
            lock.rollback()
            lock.close()
        after = client.post("/v1/decisions", json=decision_body(rng))
    assert [r.status_code for r in replies] == [503] * 8
    for reply in replies:
        text = reply.text
        assert "OperationalError" in text and "retry later" in text, text
        assert "INSERT" not in text and "secret-user" not in text and "item-" not in text, text
    assert after.status_code == 200, after.text


@pytest.mark.parametrize("sole_writer", [True, False])
def test_an_unknown_event_while_the_store_recovers_is_retried_not_refused(
    tmp_path: Path, rng: np.random.Generator, sole_writer: bool
) -> None:
    """A decision another worker or replica journaled during an outage is not in the
    store yet: before, a reward for it sent here got 404 (the id "does not exist"), and a
    client drops such a reward (632 of 2,932 rewards in the PostgreSQL helper's disk-full
    run). While this process is degraded and shares the store, an unknown id is a 503;
    the sole writer holds every journaled decision itself, so its 404 stands."""
    import sqlite3
    import uuid

    from tests.serving_helpers import decision_body, running_client, service_settings

    overrides = {} if sole_writer else {"replica_sync_s": 3600.0, "replica_sync_horizon_s": 2.0}
    settings = service_settings(tmp_path, store_lock_timeout_s=0.5, **overrides)
    unknown = {"event_id": uuid.uuid4().hex, "reward": 1.0}
    with running_client(settings) as client:
        lock = sqlite3.connect(settings.store_url.removeprefix("sqlite:///"), timeout=1)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            journaled = client.post("/v1/decisions", json=decision_body(rng))
            assert journaled.status_code == 200
            assert client.get("/readyz").json()["status"] == "degraded"
            during = client.post("/v1/rewards", json=unknown)
        finally:
            lock.rollback()
            lock.close()
        deadline = time.monotonic() + 30
        while client.get("/readyz").json()["status"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # the others drain about when this one does: a horizon more of 503s (the diff
        # reviewer: a process back first answered 404 for another's journaled decision)
        back = client.post("/v1/rewards", json=unknown)
        time.sleep(2.5)
        after = client.post("/v1/rewards", json=unknown)
    assert during.status_code == (404 if sole_writer else 503), during.text
    assert back.status_code == (404 if sole_writer else 503), back.text
    assert after.status_code == 404, after.text


def test_the_decision_cache_is_bounded_in_bytes(tmp_path: Path, rng: np.random.Generator) -> None:
    """The cache of recent decisions was bounded by count only: with 512-wide features
    and 5-item slates each took 32.6 kB, and the default 50,000 of them 1.6 GB (soak
    helper). Its bytes now stay within BANDITOPS_DECISION_CACHE_BYTES, the oldest going
    first, and a reward for one that went is still applied (read from the store)."""
    import copy
    import tracemalloc

    from tests.serving_helpers import running_client, service_settings

    width, budget = 256, 256 << 10
    settings = service_settings(
        tmp_path,
        max_context_features=width,
        max_arm_features=width,
        decision_cache_bytes=budget,
    )

    def wide() -> dict[str, Any]:
        return {
            "context": rng.standard_normal(width).round(3).tolist(),
            "candidates": [
                {"id": f"item-{i}", "features": rng.standard_normal(width).round(3).tolist()}
                for i in range(8)
            ],
            "k": 3,
        }

    with running_client(settings) as client:
        events = [client.post("/v1/decisions", json=wide()).json()["event_id"] for _ in range(80)]
        service = client.app.state.service
        cached = list(service._cache.values())
        assert 0 < len(cached) < 80 and events[-1] in service._cache
        assert service._cache_bytes == sum(d.nbytes for d in cached) <= budget
        oldest = client.post("/v1/rewards", json={"event_id": events[0], "reward": 1.0})
        assert oldest.status_code == 200 and events[0] not in service._cache, oldest.text
        # the estimate is what the objects take (tracemalloc), within a third
        rows = [service.store.find_decision(e) for e in events[-20:]]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = [copy.deepcopy(r) for r in rows]
    taken = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    estimate = sum(k.nbytes for k in kept)
    assert 0.67 < estimate / taken < 1.5, (estimate, taken)


def test_pipelined_requests_are_answered_in_order_before_any_refusal(
    thompson: ServiceProcess,
) -> None:
    """A read that ends one request (a 20 KB body) and begins the next was counted whole
    against the next head: a 431 went out ahead of the first request's 200, which was
    lost although the decision was stored (the diff reviewer's reproduction). Pipelined
    requests worth 19 KB in one read fared the same. Each head is counted on its own now:
    every request is answered in order, and the unfinished head last times out (408)."""
    import socket

    body = json.dumps(decision_body(np.random.default_rng(5))).encode() + b" " * 20_000
    post = (
        b"POST /v1/decisions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {TEST_TOKEN}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 600
    for sent in (post, many):
        with socket.create_connection(("127.0.0.1", thompson.port), timeout=30) as sock:
            sock.sendall(sent + b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the last unfinished
            answer = _answer(sock)
        statuses = re.findall(rb"HTTP/1.1 (\d{3})", answer)
        expected = 1 if sent is post else 600
        assert statuses == [b"200"] * expected + [b"408"], statuses[-3:]


def test_a_large_head_in_one_read_is_431(thompson: ServiceProcess) -> None:
    """A 20 KB header that arrives in one read was served (only a head spanning reads
    was counted); the parsed headers are counted exactly now."""
    import socket

    with socket.create_connection(("127.0.0.1", thompson.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-pad: " + b"p" * 20_000 + b"\r\n\r\n")
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


def test_empty_lines_between_requests_do_not_hold_a_connection(
    thompson: ServiceProcess,
) -> None:
    """Bare CRLFs after a request cancelled the keep-alive timeout and started no head:
    a CRLF a second held a connection open for good (the diff reviewer's reproduction).
    Any byte after a request now starts the next head's 2 s."""
    import socket

    with socket.create_connection(("127.0.0.1", thompson.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"status":"ok"' not in first:
            first += sock.recv(65536)
        started = time.perf_counter()
        answer = b""
        with contextlib.suppress(ConnectionError):
            while time.perf_counter() - started < 8:
                sock.sendall(b"\r\n")
                sock.settimeout(0.5)
                with contextlib.suppress(TimeoutError):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.perf_counter() - started < 6
