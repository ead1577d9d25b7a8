"""The reliability cases that are not about load: a broken registry, bad input, a training
step killed mid-run, and the security checks (see :mod:`benchmarks.reliability`).

Each ``case_*`` returns a :class:`benchmarks.reliability.Row`; the tests
(``tests/test_reliability_*.py``) run the same functions with smaller budgets.
"""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import serving_load
from benchmarks.reliability import (
    TOKEN,
    Load,
    Row,
    Service,
    _model,
    _service_env,
    _workdir,
    audit_store,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "bandit_core",
    "eventstore",
    "modelregistry",
    "validation",
    "serving",
    "training",
    "monitoring",
    "ops",
    "dags",
    "benchmarks",
)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ---------------------------------------------------------------------- registry
def _register(registry: Any, state: Path, run_key: str) -> str:
    version = registry.register_candidate(state_path=state, run_key=run_key).version
    registry.promote(version, by="reliability", reason=run_key)
    return str(version)


def _artifact(registry: Any, version: str) -> Path:
    from eventstore.contract import POLICY_STATE_PATH

    uri = registry.client.get_model_version_download_uri(registry.model_name, version)
    return Path(uri.removeprefix("file://")) / POLICY_STATE_PATH


def _policy_with_dims(path: Path, dim_user: int, dim_arm: int) -> Path:
    from bandit_core import make_policy, save_policy

    return save_policy(make_policy("shared_linucb", dim_user=dim_user, dim_arm=dim_arm), path)


def case_registry(rps: float, seconds: float) -> Row:
    """The production alias moved, under load, to a version whose artifact is corrupt,
    then to one with other feature dimensions; then the registry's store becomes
    unreachable; then it is back and a good version is promoted. The service must keep
    its version through all of it, answer every decision, and count each failure."""
    from modelregistry.registry import ModelRegistry, RegistryError

    with _workdir() as workdir:
        db = workdir / "mlflow" / "mlflow.db"
        db.parent.mkdir()
        uri = f"sqlite:///{db}"
        registry = ModelRegistry(uri, model_name="reliability")
        good = _model(workdir)
        v1 = _register(registry, good, "v1")
        url = f"sqlite:///{workdir / 'events.db'}"
        env = _service_env(
            url,
            None,
            workdir,
            BANDITOPS_MLFLOW_TRACKING_URI=uri,
            BANDITOPS_MODEL_NAME="reliability",
            BANDITOPS_POLL_INTERVAL_S="0.3",
            MLFLOW_SQLALCHEMYSTORE_POOLCLASS="NullPool",  # a new connection per query
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        )
        service = Service(env, workdir / "service.log")
        service.start()
        phases: list[dict[str, Any]] = []

        def served() -> str:
            return str(service.get("/v1/model").json()["production"]["version"])

        def phase(name: str, reason: str, act: Any) -> None:
            before = service.get("/v1/model").json()["last_load_error"]
            act()
            wait_for(lambda: service.get("/v1/model").json()["last_load_error"] != before, 30)
            info = service.get("/v1/model").json()
            phases.append(
                {
                    "phase": name,
                    "served": info["production"]["version"],
                    "last_load_error": info["last_load_error"],
                    "reason": reason,
                }
            )

        try:
            first = served()
            with Load(service.port, rps, seconds) as load:
                time.sleep(seconds / 5)
                # corrupted after registering, before the alias moves: promoting first
                # let the service load the good artifact in between (it polls every 0.3 s)
                key = "v2-corrupt-after-registering"
                v2 = str(registry.register_candidate(state_path=good, run_key=key).version)
                _artifact(registry, v2).write_bytes(b"\x00garbage, not an npz" * 64)
                phase(
                    "corrupted artifact",
                    "load",
                    lambda: registry.promote(v2, by="reliability", reason=key),
                )
                small = _policy_with_dims(workdir / "small.npz", 3, 2)
                phase(
                    "wrong feature dimension",
                    "signature",
                    lambda: _register(registry, small, "v3-wrong-dims"),
                )
                moved = db.with_suffix(".away")

                def cut() -> None:
                    db.rename(moved)
                    db.mkdir()  # the path no longer opens as a database

                phase("registry unreachable", "unreachable", cut)
                db.rmdir()
                moved.rename(db)
                restored = time.perf_counter()
                v4 = _register(registry, _model(workdir, seed=4), "v4-good")
                wait_for(lambda: served().endswith(f"/{v4}") or served() == v4, 60)
                recovery = time.perf_counter() - restored
                out = load.result()
            metrics = service.get("/metrics").text
            failures = {
                line.split('"')[1]: float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("banditops_model_load_failures_total{")
            }
        finally:
            service.stop()
        broken = workdir / "broken.npz"
        broken.write_bytes(b"not a policy")
        try:
            registry.register_candidate(state_path=broken, run_key="broken")
            refused = False
        except RegistryError:
            refused = True
        versions = len(registry.versions())
        audit = audit_store(url, out)
    server_errors = sum(out["errors"].values())
    return Row(
        case="registry faults",
        load=f"{rps:g} rps × {seconds:g} s",
        faults="corrupt artifact, wrong dims, registry store unreachable",
        requests=int(out["sent"]),
        errors=server_errors,
        lost=audit["lost"],
        duplicated=audit["duplicated"],
        recovery_seconds=recovery,
        extra={
            "first_version": first,
            "v1": v1,
            "phases": phases,
            "load_failure_metric": failures,
            "training_refused_unloadable_state": refused,
            "registered_versions": versions,
            "error_samples": out["error_samples"],
        },
    )


# ---------------------------------------------------------------------- bad input
def _fuzz_operation(
    operation: Any,
    mode: Any,
    max_examples: int,
    base_url: str,
    headers: dict[str, str],
    statuses: Counter[int],
    server_errors: list[str],
) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            server_errors.append(
                f"{case.method} {case.formatted_path} {mode.value}: "
                f"{response.status_code} {response.text[:200]}"
            )

    try:
        call()
    except Unsatisfiable:  # nothing to break: an operation without parameters or body
        return


def fuzz_openapi(base_url: str, max_examples: int, headers: dict[str, str]) -> dict[str, Any]:
    """Every operation of the service's OpenAPI schema, with ``max_examples`` generated
    requests valid by the schema and as many invalid ones (schemathesis): answers by
    status, and the requests answered 5xx."""
    from schemathesis import GenerationMode
    from schemathesis.openapi import from_url

    schema = from_url(f"{base_url}/openapi.json")
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    for result in schema.get_all_operations():
        # an Err (an operation whose schema does not load) has no .ok(): that error surfaces
        operation = result.ok()  # type: ignore[union-attr]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(
                operation, mode, max_examples, base_url, headers, statuses, server_errors
            )
    return {
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "server_errors": server_errors,
    }


def hostile_bodies(
    base_url: str, max_body_bytes: int, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Oversize bodies (declared and chunked), non-finite numbers and wrong dimensions:
    the status of each (expected 413, 413, 422, 422, 422), sent with ``headers``
    (default: the benchmark's token)."""
    raw_nan = b'{"context": [NaN, 0, 0, 0], "candidates": [{"id": "a", "features": [1, 2]}]}'
    raw_inf = b'{"context": [0, 0], "candidates": [{"id": "a", "features": [Infinity]}]}'
    big = b'{"context": [' + b"0.123456789," * (max_body_bytes // 12 + 10) + b"0]}"

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    wrong_dim = {"context": [0.0] * 3, "candidates": [{"id": "a", "features": [0.0] * 16}]}
    json_headers = {"content-type": "application/json"}
    with httpx.Client(base_url=base_url, timeout=30, headers=headers or AUTH) as http:
        got = {
            "oversize declared": http.post("/v1/decisions", content=big, headers=json_headers),
            "oversize chunked": http.post("/v1/decisions", content=chunks(), headers=json_headers),
            "NaN context": http.post("/v1/decisions", content=raw_nan, headers=json_headers),
            "Infinity feature": http.post("/v1/decisions", content=raw_inf, headers=json_headers),
            "wrong dimensions": http.post("/v1/decisions", json=wrong_dim),
        }
    return {name: r.status_code for name, r in got.items()}


def case_bad_input(max_examples: int) -> Row:
    """Fuzz the live service from its OpenAPI schema, plus hostile bodies."""
    with _workdir() as workdir:
        url = f"sqlite:///{workdir / 'events.db'}"
        limit = 65_536
        env = _service_env(url, _model(workdir), workdir, BANDITOPS_MAX_BODY_BYTES=str(limit))
        service = Service(env, workdir / "service.log")
        service.start()
        try:
            fuzz = fuzz_openapi(service.url, max_examples, AUTH)
            hostile = hostile_bodies(service.url, limit)
        finally:
            service.stop()
    expected = {
        "oversize declared": 413,
        "oversize chunked": 413,
        "NaN context": 422,
        "Infinity feature": 422,
        "wrong dimensions": 422,
    }
    wrong = {k: v for k, v in hostile.items() if v != expected[k]}
    return Row(
        case="bad input",
        load=f"schemathesis, {max_examples} valid + {max_examples} invalid per operation",
        faults="generated requests, oversize, NaN/inf, wrong dims",
        requests=fuzz["requests"] + len(hostile),
        errors=len(fuzz["server_errors"]) + len(wrong),
        lost=0,
        duplicated=0,
        recovery_seconds=None,
        extra={"fuzz": fuzz, "hostile": hostile, "unexpected": wrong},
    )


# ---------------------------------------------------------------------- pipeline
_SAVE_LOOP = """
import sys
import numpy as np
from bandit_core import make_policy, save_policy
policy = make_policy("shared_linucb", dim_user=96, dim_arm=96)
rng = np.random.default_rng(0)
x, y = rng.normal(size=(64, 96)), rng.normal(size=(64, 96))
policy.update_batch(x, ["a"] * 64, rng.random(64), y)
print("ready", flush=True)
while True:
    save_policy(policy, sys.argv[1])
"""

_TRAIN = """
import sys
from training.train import TrainConfig, train
train(sys.argv[1], TrainConfig(algorithm="shared_linucb", options={"alpha": 1.0}), sys.argv[2])
print("done", flush=True)
"""


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_while_writing(path: Path, kills: int, seed: int = 0) -> dict[str, int]:
    """SIGKILL a process that rewrites a policy state in a loop, ``kills`` times at random
    moments; after each kill the file must load (never half-written)."""
    from bandit_core import load_policy

    rng = np.random.default_rng(seed)
    torn = 0
    for _ in range(kills):
        proc = _python(_SAVE_LOOP, str(path))
        if proc.stdout is not None:
            proc.stdout.readline()  # "ready": the loop is writing
        time.sleep(float(rng.uniform(0.05, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        try:
            load_policy(path)
        except Exception:
            torn += 1
    leftovers = [p.name for p in path.parent.iterdir() if p.name != path.name]
    return {"kills": kills, "torn": torn, "temp_files_left": len(leftovers)}


def seed_store(url: str, n_requests: int, seed: int) -> Any:
    """Fill an event store through the service (uniform fallback, real HTTP); returns the
    environment."""
    from bandit_core.envs import LogisticClickEnvironment
    from serving.traffic import simulate_traffic

    with _workdir() as workdir:
        env = LogisticClickEnvironment.make(
            np.random.default_rng(seed), n_items=30, dim_user=6, dim_arm=4, n_candidates=8
        )
        service = Service(_service_env(url, workdir / "none.npz", workdir), workdir / "seed.log")
        service.start()
        try:
            with httpx.Client(base_url=service.url, timeout=30, headers=AUTH) as http:
                simulate_traffic(http, env, n_requests, np.random.default_rng(seed + 1))
        finally:
            service.stop()
    return env


def train_killed_and_retried(replay: Path, out: Path, kills: int, seed: int = 0) -> dict[str, Any]:
    """Run the training step in a subprocess killed at random moments, then to the end;
    compare what it leaves with a clean run's."""
    from bandit_core import load_policy
    from training.train import RESULT_FILE, STATE_FILE

    def run(folder: Path) -> None:
        proc = _python(_TRAIN, str(replay), str(folder))
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(err[-2000:])

    clean = out / "clean"
    started = time.perf_counter()
    run(clean)
    duration = time.perf_counter() - started
    retried = out / "retried"
    rng = np.random.default_rng(seed)
    for _ in range(kills):
        proc = _python(_TRAIN, str(replay), str(retried))
        time.sleep(float(rng.uniform(0.3, 1.0)) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    run(retried)
    a = load_policy(clean / STATE_FILE).to_state()
    b = load_policy(retried / STATE_FILE).to_state()
    same = a.config == b.config and all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
    metrics_a = json.loads((clean / RESULT_FILE).read_text())["metrics"]
    metrics_b = json.loads((retried / RESULT_FILE).read_text())["metrics"]
    return {"kills": kills, "same_state": same, "same_metrics": metrics_a == metrics_b}


def _gx_refuses_corrupted(replay_dir: Path, workdir: Path) -> bool:
    import pandas as pd

    from training.replay import ReplayManifest
    from training.validate import validate_features
    from validation.expectations import DataValidationError

    manifest = ReplayManifest.read(replay_dir / "replay.json")
    frame = pd.read_parquet(manifest.path)
    frame.loc[frame.index[::7], "propensity"] = 0.0
    frame.loc[frame.index[::11], "reward"] = 5.0
    corrupted = workdir / "corrupted.parquet"
    frame.to_parquet(corrupted, index=False)
    bad = ReplayManifest(**{**manifest.__dict__, "path": str(corrupted)})
    try:
        # this scenario's own rules: clicks in [0, 1], no drift reference
        validate_features(
            bad,
            workdir / "gx_docs",
            min_rows=50,
            reward_min=0.0,
            reward_max=1.0,
            drift_threshold=1.0,
        )
    except DataValidationError:
        return True
    return False


def case_pipeline(kills: int) -> Row:
    """Kills mid-write and mid-step, the retry, registry idempotency, GX on bad data."""
    from modelregistry.registry import ModelRegistry
    from training.replay import extract_replay
    from training.train import STATE_FILE

    with _workdir() as workdir:
        (workdir / "atomic").mkdir()
        writes = kill_while_writing(workdir / "atomic" / "state.npz", kills)
        url = f"sqlite:///{workdir / 'events.db'}"
        seed_store(url, 400, seed=3)
        now = datetime.now(UTC)
        window = (now - timedelta(days=1), now + timedelta(minutes=1))
        extract_replay(url, *window, workdir / "replay", as_of=now + timedelta(days=2))
        train = train_killed_and_retried(
            workdir / "replay" / "replay.parquet", workdir / "train", kills
        )
        registry = ModelRegistry(f"sqlite:///{workdir / 'mlflow.db'}", model_name="pipeline")
        state = workdir / "train" / "retried" / STATE_FILE
        first = registry.register_candidate(state_path=state, run_key="run-1")
        again = registry.register_candidate(state_path=state, run_key="run-1")
        versions = len(registry.versions())
        gx = _gx_refuses_corrupted(workdir / "replay", workdir)
    failures = (
        writes["torn"] + int(not train["same_state"]) + int(not train["same_metrics"]) + int(not gx)
    )
    return Row(
        case="pipeline faults",
        load=f"{kills} kills mid-write, {kills} kills mid-step",
        faults="SIGKILL of the writer / the train step, retry; corrupted replay",
        requests=2 * kills + 3,
        errors=failures,
        lost=0,
        duplicated=versions - 1 + int(first.version != again.version),
        recovery_seconds=None,
        extra={"atomic_writes": writes, "retried_step": train, "gx_refused_corrupted": gx},
    )


# ---------------------------------------------------------------------- security
def python_files(packages: Iterable[str] = PACKAGES) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def _dotted(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _call_name(node: ast.Call) -> str:
    return _dotted(node.func)


def _imports(tree: ast.AST) -> dict[str, str]:
    """Local name → what it imports, from every import of the module (any scope):
    ``import numpy as np`` gives ``np → numpy``, ``from pickle import loads as l`` gives
    ``l → pickle.loads``."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                names[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _resolved(node: ast.Call, imports: dict[str, str]) -> str:
    """The call's dotted name with its first part replaced by what it was imported as
    (``np.load`` → ``numpy.load``, ``loads`` from pickle → ``pickle.loads``)."""
    name = _call_name(node)
    head, _, rest = name.partition(".")
    full = imports.get(head, head)
    return f"{full}.{rest}" if rest else full


def _keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _is_constant(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _formatted(node: ast.expr, built: frozenset[str] = frozenset()) -> bool:
    """An f-string, ``%`` or ``.format`` or ``+`` building a string at run time, or a
    variable assigned such a string in the module (``built``)."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return True
    if isinstance(node, ast.Name):
        return node.id in built
    return isinstance(node, ast.Call) and _call_name(node).endswith("format")


def _built_strings(tree: ast.AST) -> frozenset[str]:
    """Names assigned (or augmented with) a string built at run time."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _formatted(node.value):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and node.value is not None:
            formatted = isinstance(node, ast.AugAssign) or _formatted(node.value)
            if formatted and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return frozenset(names)


#: Calls that unpickle (or run code from) what they read, by their full imported name.
_PICKLE_CALLS = (
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "pandas.read_pickle",
    "read_pickle",
    "yaml.unsafe_load",
)


def pickle_findings(files: Iterable[Path]) -> list[str]:
    """Loads that can run code, found on the syntax tree with imports resolved (so
    ``from pickle import loads``, ``import numpy as n``, ``from torch import load`` are
    seen as what they are): pickle and friends; ``numpy.load`` unless ``allow_pickle`` is
    absent or the constant ``False``; ``torch.load`` unless ``weights_only`` is the
    constant ``True``; ``yaml.load`` without a safe loader; any MLflow flavor's
    ``load_model`` (the pyfunc wrapper is cloudpickle). Not covered: calls through
    ``getattr``/``importlib`` or a function object passed around under another name."""
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        imports = _imports(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _resolved(node, imports)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            double_star = any(k.arg is None for k in node.keywords)
            if name.endswith(_PICKLE_CALLS) and name.split(".")[0] in (
                "pickle",
                "_pickle",
                "cloudpickle",
                "dill",
                "joblib",
                "marshal",
                "shelve",
                "pandas",
                "yaml",
                "read_pickle",
            ):
                found.append(f"{where} {name}")
            elif name == "numpy.load":
                flag = _keyword(node, "allow_pickle")
                if double_star or not (flag is None or _is_constant(flag, False)):
                    found.append(f"{where} numpy.load with allow_pickle not False")
            elif name == "torch.load":
                if not _is_true(_keyword(node, "weights_only")):
                    found.append(f"{where} torch.load without weights_only=True")
            elif name == "yaml.load" and "Safe" not in ast.unparse(node):
                found.append(f"{where} yaml.load without SafeLoader")
            elif name.startswith("mlflow.") and name.endswith(".load_model"):
                found.append(f"{where} {name} (pickle-bearing MLflow flavor)")
    return found


#: SQL built from strings, each reviewed: no value in them comes from a request.
SQL_ALLOWED = {
    "eventstore/scratch.py": "CREATE/DROP DATABASE of a generated name (not bindable)",
    "eventstore/engine.py": "PRAGMAs with a validated literal and a constant",
}


def sql_findings(files: Iterable[Path]) -> list[str]:
    """``text()``, ``exec_driver_sql`` or ``execute`` given SQL built by formatting,
    directly, inside ``text(...)``, or through a variable the module assigns such a string
    (any scope: a name reused for a built string anywhere is flagged everywhere)."""
    found = []
    for path in files:
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(), str(path))
        built = _built_strings(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = _call_name(node).split(".")[-1]
            sql_call = name in ("text", "exec_driver_sql", "execute", "executemany")
            if sql_call and _formatted(node.args[0], built) and rel not in SQL_ALLOWED:
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)[:100]}")
    return found


def token_comparisons(files: Iterable[Path]) -> dict[str, list[str]]:
    """Where secrets are compared: with ``compare_digest`` (wanted) or ``==`` (not)."""
    out: dict[str, list[str]] = {"compare_digest": [], "plain": []}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and _call_name(node).endswith("compare_digest"):
                out["compare_digest"].append(where)
            if isinstance(node, ast.Compare) and any(
                isinstance(o, ast.Eq | ast.NotEq) for o in node.ops
            ):
                text = ast.unparse(node)
                if "get_secret_value" in text or "api_token" in text.replace("api_token is", ""):
                    out["plain"].append(f"{where} {text[:80]}")
    return out


def clear_user_ids(url: str, user_ids: Iterable[str], folders: Iterable[Path] = ()) -> list[str]:
    """Every place in the store's tables (and files under ``folders``) holding one of
    ``user_ids`` in clear."""
    from sqlalchemy import select

    from eventstore.engine import make_engine
    from eventstore.schema import metadata

    needles = [u.encode() for u in user_ids]
    hits = []
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(select(table)):
                    blob = json.dumps([str(v) for v in row]).encode() + b"".join(
                        v for v in row if isinstance(v, bytes)
                    )
                    hits += [f"{table.name}: {n.decode()}" for n in needles if n in blob]
    finally:
        engine.dispose()
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                hits += [f"{path.name}: {n.decode()}" for n in needles if n in data]
    return hits


def case_security() -> Row:
    """Static scans, tokens over HTTP, and a scan of the store for user ids."""
    files = list(python_files())
    pickles = pickle_findings(files)
    sql = sql_findings(files)
    tokens = token_comparisons(files)
    with _workdir() as workdir:
        url = f"sqlite:///{workdir / 'events.db'}"
        service = Service(_service_env(url, _model(workdir), workdir), workdir / "service.log")
        service.start()
        users = [f"user-{i}@example.com" for i in range(20)]
        try:
            _, requests = serving_load.make_workload(1, len(users))
            with httpx.Client(base_url=service.url, timeout=30) as http:
                statuses = []
                for user, req in zip(users, requests, strict=True):
                    body = {**json.loads(req["body"]), "user_id": user}
                    answer = http.post("/v1/decisions", json=body, headers=AUTH)
                    event = answer.json()["event_id"]
                    reward = {"event_id": event, "reward": 1.0}
                    statuses.append(http.post("/v1/rewards", json=reward).status_code)
                    statuses.append(
                        http.post(
                            "/v1/rewards",
                            json=reward,
                            headers={"Authorization": "Bearer wrong-token"},
                        ).status_code
                    )
                    statuses.append(http.post("/v1/rewards", json=reward, headers=AUTH).status_code)
                admin = http.get("/v1/admin/state").status_code
        finally:
            service.stop()
        clear = clear_user_ids(url, users, [workdir / "ws"])
    unauthorized = Counter(statuses[0::3]) + Counter(statuses[1::3])
    violations = (
        len(pickles)
        + len(sql)
        + len(tokens["plain"])
        + int(not tokens["compare_digest"])
        + len(clear)
        + sum(n for code, n in unauthorized.items() if code != 401)
        + int(admin != 401)
    )
    return Row(
        case="security",
        load=f"{len(files)} files scanned, {len(statuses) + 1} requests",
        faults="missing/wrong tokens, user ids, pickle/SQL scans",
        requests=len(statuses) + 1,
        errors=violations,
        lost=0,
        duplicated=0,
        recovery_seconds=None,
        extra={
            "pickle_loads": pickles,
            "formatted_sql": sql,
            "sql_allowed": SQL_ALLOWED,
            "token_comparisons": tokens,
            "clear_user_ids": clear,
            "unauthenticated_statuses": dict(unauthorized),
            "authorized_statuses": dict(Counter(statuses[2::3])),
        },
    )
