"""The ``hostile`` case of the reliability benchmark: attackers and careless clients.

One run of ``banditops serve`` (a warm ``shared_linucb``, as in the load case) per store,
and in turn:

1. **hostile slates**: 20 concurrent clients (in another process) send slates of
   ``k = 20`` over 1,000 candidates (over the work budget) and of ``k = 10`` over 100
   (within it, chosen in the decision thread) for ``seconds``, while this process times
   ``/healthz`` and ordinary decisions one after the other, from the moment all 20 are
   sending: their p99s are reported;
2. **huge numbers**: contexts, candidate features and catalog items at twice
   ``MAX_ABS_INPUT`` and near 1e100–1e308,
   then ordinary decisions and rewards: every acknowledged reward must be stored with its
   status and value, and the live head must be finite and equal to the head rebuilt from
   the applied rewards (else ``poisoned``);
3. **bad text and parse errors**: lone surrogates, NUL characters, timestamps at the
   datetime limits, nested / surrogate / huge catalog cursors, torn JSON;
4. **unsafe versions**: NaN weights, a configuration declaring huge dimensions, a
   decompression bomb: the serving version must not change (else ``poisoned``) and the
   process's peak memory stays under 1 GiB;
5. **auth**: ``banditops serve`` with no token and with an empty token must refuse to
   start (a service that starts open counts as ``poisoned``).

``server_errors`` counts every 5xx answered in all of it. ``sabotage`` rewrites one
acknowledged reward in the store behind the service's back (a store that does not keep
what it acknowledged): the audit finds the wrong value, the live head no longer equals the
head rebuilt from the store, and the verdict must fail (the benchmark's own test shows
it). It no longer opens a defence: ``max_abs_feature`` cannot be raised past
``bandit_core.MAX_ABS_INPUT``, and the policies refuse larger inputs themselves.
"""

from __future__ import annotations

import base64
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bandit_core import MAX_ABS_INPUT, load_state, save_state
from benchmarks import serving_load
from benchmarks.reliability import (
    TOKEN,
    Row,
    Service,
    _service_env,
    _workdir,
    audit_store,
    head_gap,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE_CLIENTS = 20
PEAK_MEMORY_KB = 1 << 20  # 1 GiB
OPEN_TIMEOUT_S = 60.0  # for the hostile clients to open their connections


# ---------------------------------------------------------------------- 1. slates
def _hostile_sender(url: str, seconds: float, seed: int, results: Any, sending: Any) -> None:
    """The hostile clients (threads of a separate process): the status codes.

    Each thread opens its HTTP client before any request, and ``sending`` is set once all
    of them have: opening 20 ``httpx`` clients costs about 0.4 s of CPU here (an SSL
    context each), which is the load generator starting, not the attack, and would
    otherwise be timed as the service's latency on a 2-core machine."""
    rng = np.random.default_rng(seed)
    dims = serving_load.DIM_USER, serving_load.DIM_ARM

    def body(n: int, k: int) -> bytes:
        return json.dumps(
            {
                "context": rng.standard_normal(dims[0]).round(4).tolist(),
                "candidates": [
                    {"id": f"h{i}", "features": rng.standard_normal(dims[1]).round(4).tolist()}
                    for i in range(n)
                ],
                "k": k,
            }
        ).encode()

    bodies = [body(1000, 20), body(100, 10)]
    codes: list[int] = []
    lock = threading.Lock()
    opened = threading.Barrier(HOSTILE_CLIENTS + 1)
    stop = [0.0]

    def client(i: int) -> None:
        headers = {"content-type": "application/json", **AUTH}
        with httpx.Client(base_url=url, timeout=60.0) as http:
            opened.wait(OPEN_TIMEOUT_S)  # a client that cannot open breaks it for all
            j = i
            while time.perf_counter() < stop[0]:
                try:
                    code = http.post("/v1/decisions", content=bodies[j % 2], headers=headers)
                    status = code.status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    codes.append(status)
                j += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(HOSTILE_CLIENTS)]
    for t in threads:
        t.start()
    stop[0] = time.perf_counter() + seconds
    try:
        opened.wait(OPEN_TIMEOUT_S)
    except threading.BrokenBarrierError:
        pass  # the threads end at once; the parent gives up waiting for ``sending``
    else:
        sending.set()
    for t in threads:
        t.join()
    results.put(codes)


def _timed(get: Any) -> float:
    started = time.perf_counter()
    answer = get()
    elapsed = (time.perf_counter() - started) * 1000.0
    if answer.status_code != 200:
        raise RuntimeError(f"{answer.status_code} {answer.text[:200]}")
    return elapsed


def hostile_slates(service: Service, seconds: float) -> dict[str, Any]:
    """p99 of ``/healthz`` and of ordinary decisions during the hostile slates."""
    _env, requests = serving_load.make_workload(11, 200)
    ctx = mp.get_context("spawn")
    results, sending = ctx.Queue(), ctx.Event()
    sender = ctx.Process(target=_hostile_sender, args=(service.url, seconds, 5, results, sending))
    health: list[float] = []
    decisions: list[float] = []
    with httpx.Client(base_url=service.url, timeout=30.0) as http:
        sender.start()
        if not sending.wait(OPEN_TIMEOUT_S + 60):
            sender.terminate()
            raise RuntimeError("the hostile clients did not open their connections")
        time.sleep(min(1.0, seconds / 4) / 5)  # their first requests are in flight
        stop = time.perf_counter() + seconds * 0.7
        i = 0
        while time.perf_counter() < stop:
            health.append(_timed(lambda: http.get("/healthz")))
            body = requests[i % len(requests)]["body"]
            decisions.append(
                _timed(
                    lambda b=body: http.post(
                        "/v1/decisions",
                        content=b,
                        headers={"content-type": "application/json", **AUTH},
                    )
                )
            )
            i += 1
            time.sleep(0.01)
        codes = results.get(timeout=seconds + 120)
        sender.join(60)
    counted = {str(c): codes.count(c) for c in sorted(set(codes))}
    return {
        "healthz_p99_ms": float(np.percentile(health, 99)),
        "healthz_p50_ms": float(np.percentile(health, 50)),
        "ordinary_decision_p99_ms": float(np.percentile(decisions, 99)),
        "ordinary_decision_p50_ms": float(np.percentile(decisions, 50)),
        "probes": len(health),
        "healthz_worst_ms": sorted(health)[-3:],
        "healthz_worst_at": [int(i) for i in np.argsort(health)[-3:]],
        "ordinary_decision_worst_ms": sorted(decisions)[-3:],
        "hostile_statuses": counted,
        "hostile_5xx": sum(n for c, n in counted.items() if c.startswith("5")),
        "hostile_failed_connections": counted.get("0", 0),
    }


# ---------------------------------------------------------------------- 2. numbers
def huge_numbers(service: Service, url: str, model: Path, sabotage: bool = False) -> dict[str, Any]:
    """Huge finite inputs, then ordinary traffic; what was acknowledged, and the head
    (``sabotage``: one acknowledged reward is rewritten in the store before the audit)."""
    _env, requests = serving_load.make_workload(12, 60)
    out: dict[str, Any] = {
        "acked_decisions": [],
        "acked_rewards": [],
        "sent_rewards": [],
        "statuses": [],
    }
    sent_values: dict[str, float] = {}
    with httpx.Client(base_url=service.url, timeout=30.0, headers=AUTH) as http:
        huge: list[str] = []
        for scale in (2 * MAX_ABS_INPUT, 1e100, 1e200, 1e308):
            body = json.loads(requests[0]["body"])
            body["context"] = [scale] * serving_load.DIM_USER
            got = http.post("/v1/decisions", json=body)
            out["statuses"].append(got.status_code)
            huge += [got.json()["event_id"]] if got.status_code == 200 else []
            body = json.loads(requests[1]["body"])
            body["candidates"][0]["features"] = [scale] * serving_load.DIM_ARM
            got = http.post("/v1/decisions", json=body)
            out["statuses"].append(got.status_code)
            huge += [got.json()["event_id"]] if got.status_code == 200 else []
            item = {"features": [scale] * serving_load.DIM_ARM}
            out["statuses"].append(http.put("/v1/items/huge", json=item).status_code)
        for event in huge:  # accepted only if a defence failed: one in-range reward each
            out["acked_decisions"].append(event)
            out["sent_rewards"].append(event)
            ack = http.post("/v1/rewards", json={"event_id": event, "reward": 1.0})
            out["statuses"].append(ack.status_code)
            out["acked_rewards"] += [event] if ack.status_code == 200 else []
        rng = np.random.default_rng(3)
        for req in requests[2:]:
            got = http.post("/v1/decisions", json=json.loads(req["body"]))
            out["statuses"].append(got.status_code)
            if got.status_code != 200:
                continue
            event = got.json()["event_id"]
            out["acked_decisions"].append(event)
            value = float(rng.random() < 0.3)
            out["sent_rewards"].append(event)
            ack = http.post("/v1/rewards", json={"event_id": event, "reward": value})
            out["statuses"].append(ack.status_code)
            if ack.status_code == 200:
                out["acked_rewards"].append(event)
                sent_values[event] = value
                if ack.json()["status"] != "applied":
                    out.setdefault("unexpected_status", []).append(ack.json()["status"])
    if sabotage and sent_values:
        _rewrite_reward(url, next(iter(sent_values)))
    audit = audit_store(url, out)
    wrong = _wrong_rewards(url, sent_values) + len(out.get("unexpected_status", []))
    try:
        gap = head_gap(service, url, model)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError):  # not even rebuildable
        gap = float("inf")
    return {
        "audit": audit,
        "wrong_rewards": wrong,
        "head_gap": gap,
        "head_poisoned": int(not np.isfinite(gap) or gap > 1e-6),
        "huge_accepted": len(huge),
        "five_xx": sum(1 for s in out["statuses"] if s >= 500),
    }


def _rewrite_reward(url: str, event_id: str) -> None:
    """The sabotage: add 1 to an acknowledged reward's stored value."""
    from sqlalchemy import update

    from eventstore.engine import make_engine
    from eventstore.schema import rewards

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(rewards)
                .where(rewards.c.event_id == event_id)
                .values(value=rewards.c.value + 1.0)
            )
    finally:
        engine.dispose()


def _wrong_rewards(url: str, sent: dict[str, float]) -> int:
    """Acknowledged rewards stored with another value, or not applied."""
    from sqlalchemy import select

    from eventstore.engine import make_engine
    from eventstore.schema import rewards

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(rewards.c.event_id, rewards.c.value, rewards.c.status).where(
                    rewards.c.event_id.in_(list(sent))
                )
            ).all()
    finally:
        engine.dispose()
    stored = {r.event_id: (float(r.value), r.status) for r in rows}
    return sum(1 for e, v in sent.items() if stored.get(e) != (v, "applied"))


# ---------------------------------------------------------------------- 3. text
def _cursor(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode("utf-8", "surrogatepass")).decode()


BAD_BODIES: dict[str, tuple[str, str, bytes]] = {
    "surrogate candidate id": (
        "POST",
        "/v1/decisions",
        b'{"context": [0.1], "candidates": [{"id": "\\ud800", "features": [1]}]}',
    ),
    "surrogate user id": (
        "POST",
        "/v1/decisions",
        b'{"context": [0.1], "candidates": [{"id": "a", "features": [1]}], "user_id": "\\udfff"}',
    ),
    "surrogate feature name": (
        "POST",
        "/v1/decisions",
        b'{"context": {"\\ud800": 1.0}, "candidates": [{"id": "a", "features": [1]}]}',
    ),
    "NUL candidate id": (
        "POST",
        "/v1/decisions",
        b'{"context": [0.1], "candidates": [{"id": "a\\u0000", "features": [1]}]}',
    ),
    "NUL event id": ("POST", "/v1/rewards", b'{"event_id": "e\\u0000", "reward": 1.0}'),
    "surrogate event id": ("POST", "/v1/rewards", b'{"event_id": "\\ud800", "reward": 1.0}'),
    "timestamp year 9999": (
        "POST",
        "/v1/rewards",
        b'{"event_id": "e", "reward": 1.0, "timestamp": "9999-12-31T23:59:59+00:00"}',
    ),
    "timestamp year 1": (
        "POST",
        "/v1/rewards",
        b'{"event_id": "e", "reward": 1.0, "timestamp": "0001-01-01T00:00:00-01:00"}',
    ),
    "torn JSON": ("POST", "/v1/decisions", b'{"context": [0.1,'),
    "invalid UTF-8": ("POST", "/v1/decisions", b'\xff\xfe{"context": 1}'),
    "NUL item id": ("PUT", "/v1/items/a%00b", b'{"features": [1.0]}'),
    "nested cursor": ("GET", "/v1/items?cursor=" + _cursor("[" * 700 + "]" * 700), b""),
    "surrogate cursor": ("GET", "/v1/items?cursor=" + _cursor('[1, "\\ud800"]'), b""),
    "huge cursor seq": ("GET", "/v1/items?cursor=" + _cursor("[99999999999999999999999, 0]"), b""),
    "NUL cursor": ("GET", "/v1/items?cursor=a%00b", b""),
}


def bad_text(service: Service) -> dict[str, int]:
    """Status of each bad request (all must be 4xx)."""
    headers = {**AUTH, "content-type": "application/json"}
    with httpx.Client(base_url=service.url, timeout=30.0, headers=headers) as http:
        return {
            name: http.request(method, path, content=body or None).status_code
            for name, (method, path, body) in BAD_BODIES.items()
        }


# ---------------------------------------------------------------------- 4. versions
def nan_version(source: Path, path: Path) -> Path:
    """``source`` with its first float array set to NaN."""
    state = load_state(source)
    key = next(k for k, v in state.arrays.items() if np.issubdtype(v.dtype, np.floating))
    state.arrays[key] = np.full_like(state.arrays[key], np.nan)
    return save_state(state, path)


def huge_dimension_version(source: Path, path: Path) -> Path:
    """``source`` declaring ``dim_user = 100,000`` (a few kB on disk)."""
    state = load_state(source)
    state.config["dim_user"] = 100_000
    return save_state(state, path)


def bomb_version(source: Path, path: Path, inflated: int = 1 << 30) -> Path:
    """``source`` plus an ``.npy`` member inflating to ``inflated`` bytes of zeros."""
    path.write_bytes(source.read_bytes())
    header = np.lib.format.header_data_from_array_1_0(np.zeros(inflated // 8))
    with (
        zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("bomb.npy", "w", force_zip64=True) as fh,
    ):
        np.lib.format.write_array_header_1_0(fh, header)
        block = bytes(1 << 20)
        for _ in range(inflated >> 20):
            fh.write(block)
    return path


def unsafe_versions(service: Service, model: Path, workdir: Path) -> dict[str, Any]:
    """Swap each unsafe version in; what serves after each poll, and the peak memory."""
    original = model.read_bytes()
    keep = workdir / "original.npz"
    keep.write_bytes(original)
    out: dict[str, Any] = {"served_unsafe": 0}
    with httpx.Client(base_url=service.url, timeout=120.0, headers=AUTH) as http:
        serving = http.get("/v1/model").json()["production"]["version"]
        for name, make in (
            ("nan", nan_version),
            ("huge_dimensions", huge_dimension_version),
            ("bomb", bomb_version),
        ):
            bad = make(keep, workdir / f"{name}.npz")
            os.replace(bad, model)
            for _ in range(2):
                info = http.post("/v1/admin/poll").json()
            now = info["production"]["version"] if info["production"] else None
            out[name] = info["last_load_error"]
            out["served_unsafe"] += int(now != serving)
        out["load_failures"] = info["load_failures"]
    model.write_bytes(original)  # the head check after this reads the original
    assert service.proc is not None
    status = Path(f"/proc/{service.proc.pid}/status").read_text()
    peak = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM")))
    out["peak_memory_kb"] = peak
    out["memory_over"] = int(peak > PEAK_MEMORY_KB)
    return out


# ---------------------------------------------------------------------- 5. auth
def refuses_to_start(env: dict[str, str], timeout: float = 60.0) -> bool:
    """Whether ``banditops serve`` with ``env`` exits non-zero instead of serving."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BANDITOPS_")}
    cmd = [sys.executable, "-m", "ops", "serve", "--port", str(serving_load._free_port())]
    proc = subprocess.Popen(
        cmd, env={**clean, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        return proc.wait(timeout) != 0
    except subprocess.TimeoutExpired:  # it serves: fail open
        proc.kill()
        proc.wait()
        return False


# ---------------------------------------------------------------------- the case
def _model(workdir: Path) -> Path:
    env, _ = serving_load.make_workload(0, 0)
    return serving_load.warm_policy(env, 0, workdir / "policy.npz")


def case_hostile(store: str, postgres_url: str, seconds: float, sabotage: bool = False) -> Row:
    from eventstore.scratch import scratch_postgres_database

    with _workdir() as workdir:
        model = _model(workdir)
        if store == "sqlite":
            url = f"sqlite:///{workdir / 'events.db'}"
            return _run(url, model, workdir, seconds, store, sabotage)
        with scratch_postgres_database(postgres_url, prefix="banditops_hostile") as url:
            return _run(url, model, workdir, seconds, store, sabotage)


def _run(url: str, model: Path, workdir: Path, seconds: float, store: str, sabotage: bool) -> Row:
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    env = _service_env(url, model, workdir, BANDITOPS_POLL_INTERVAL_S="3600")
    service = Service(env, workdir / "service.log")
    service.start()
    try:
        slates = hostile_slates(service, seconds)
        numbers = huge_numbers(service, url, model, sabotage)
        text = bad_text(service)
        versions = unsafe_versions(service, model, workdir)
    finally:
        service.stop()
    base = {"BANDITOPS_WORKSPACE": str(workdir / "auth"), "BANDITOPS_DATABASE_URL": url}
    auth = {
        "no_token_refused": refuses_to_start(base),
        "empty_token_refused": refuses_to_start({**base, "BANDITOPS_API_TOKEN": ""}),
    }
    five_xx = slates["hostile_5xx"] + numbers["five_xx"] + sum(1 for s in text.values() if s >= 500)
    poisoned = (
        numbers["head_poisoned"]
        + numbers["wrong_rewards"]
        + versions["served_unsafe"]
        + versions["memory_over"]
        + sum(1 for refused in auth.values() if not refused)
    )
    audit = numbers["audit"]
    return Row(
        case="hostile",
        load=f"{store}, {HOSTILE_CLIENTS} hostile clients, {seconds:g} s",
        faults="budget slates, 2e6 and 1e100–1e308, bad text, unsafe versions, no/empty token",
        requests=sum(int(n) for n in slates["hostile_statuses"].values())
        + slates["probes"] * 2
        + len(text),
        errors=slates["hostile_failed_connections"],
        lost=audit["lost"],
        duplicated=audit["duplicated"],
        recovery_seconds=None,
        poisoned=poisoned,
        server_errors=five_xx,
        extra={
            "slates": slates,
            "numbers": {k: v for k, v in numbers.items() if k != "audit"},
            "bad_text": text,
            "versions": versions,
            "auth": auth,
        },
    )
