"""modelregistry.registry against a real MLflow registry (SQLite backend in a temp dir)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bandit_core import Candidates, make_policy, save_policy
from modelregistry.registry import ModelRegistry, RegistryError

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
)


def _state(tmp_path: Path, seed: int) -> Path:
    policy = make_policy("shared_linucb", dim_user=2, dim_arm=2)
    rng = np.random.default_rng(seed)
    policy.update_batch(
        rng.normal(size=(50, 2)),
        [str(a) for a in rng.integers(0, 3, 50)],
        rng.random(50),
        rng.normal(size=(50, 2)),
    )
    return save_policy(policy, tmp_path / f"state-{seed}.npz")


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": ["r1", "r1", "r2"],
            "arm_id": ["a", "b", "a"],
            "ctx_0": [0.1, 0.1, -1.0],
            "ctx_1": [0.5, 0.5, 0.0],
            "feat_0": [1.0, 0.0, 1.0],
            "feat_1": [0.0, 1.0, 0.0],
        }
    )


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(f"sqlite:///{tmp_path}/mlflow.db", model_name="test-policy")


def test_register_gate_promote_rollback_with_history(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    v1 = registry.register_candidate(
        state_path=_state(tmp_path, 1),
        run_key="run-1",
        params={"algorithm": "shared_linucb"},
        metrics={"train_loss": 0.5},
        tags={"data_hash": "abc"},
        input_example=_table(),
    )
    assert (
        v1.aliases == ("candidate",)
        and v1.metrics["train_loss"] == 0.5
        and v1.tags["data_hash"] == "abc"
    )
    assert registry.record_gate(v1.version, True, ["dr lower bound 0.31 ≥ 0.29"]) is True
    registry.promote(v1.version, by="tester", reason="first model")
    v2 = registry.register_candidate(state_path=_state(tmp_path, 2), run_key="run-2")
    reasons = ["dr lower bound 0.10 < 0.29", "support 0.4 ≥ 0.2"]
    assert registry.record_gate(v2.version, False, reasons) is False
    assert registry.get(v2.version).tags["gate_passed"] == "false"
    assert registry.by_alias("staging").version == v1.version  # a failed gate does not move staging
    # the reasons as words, not the tag's JSON (``\u2265`` escapes and all)
    gate = r"failed its gate \(dr lower bound 0\.10 < 0\.29; support 0\.4 ≥ 0\.2\).*--force"
    with pytest.raises(RegistryError, match=gate):
        registry.promote(v2.version, by="tester", reason="manual override")
    assert registry.by_alias("production").version == v1.version
    registry.promote(v2.version, by="tester", reason="manual override", force=True)
    promoted = registry.get(v2.version)
    assert promoted.tags["promoted_despite_gate"] == "true"
    assert (
        promoted.tags["previous_production"] == v1.version
        and promoted.tags["promoted_by"] == "tester"
    )
    back = registry.rollback(by="tester", reason="bad online CTR")
    assert back.version == v1.version and registry.by_alias("production").version == v1.version
    moves = [(m["alias"], m["version"]) for m in registry.alias_history()]
    assert moves == [
        ("candidate", "1"),
        ("staging", "1"),
        ("production", "1"),
        ("candidate", "2"),
        ("production", "2"),
        ("production", "1"),
    ]
    with pytest.raises(RegistryError, match="no previous version to roll back to"):
        registry.rollback(by="tester", reason="again")


def test_a_rollback_that_cannot_happen_changes_nothing(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """The version before production deleted: the rollback failed after tagging the
    current version rolled back (the Bandits page showed it so). Naming itself as the
    one before: it said "@production → version 3", a rollback that moved nothing."""
    versions = [
        registry.register_candidate(state_path=_state(tmp_path, s), run_key=f"r{s}").version
        for s in (1, 2, 3)
    ]
    for v in versions:
        registry.record_gate(v, True, [])
        registry.promote(v, by="tester", reason="nightly")
    registry.client.delete_model_version(registry.model_name, versions[1])
    with pytest.raises(
        RegistryError, match=f"to the version before it.*no version '{versions[1]}'"
    ):
        registry.rollback(by="tester", reason="bad")
    current = registry.by_alias("production")
    assert current is not None and current.version == versions[2]
    assert "rolled_back_at" not in current.tags and "rolled_back_by" not in current.tags
    registry.tag_version(versions[2], {"previous_production": versions[2]})
    with pytest.raises(RegistryError, match="names itself as the @production before it"):
        registry.rollback(by="tester", reason="bad")
    assert "rolled_back_at" not in registry.get(versions[2]).tags


def test_same_run_key_never_registers_twice(registry: ModelRegistry, tmp_path: Path) -> None:
    first = registry.register_candidate(state_path=_state(tmp_path, 1), run_key="airflow-run-7")
    again = registry.register_candidate(state_path=_state(tmp_path, 1), run_key="airflow-run-7")
    assert again.version == first.version and len(registry.versions()) == 1


def test_a_state_that_does_not_load_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a numpy archive")
    with pytest.raises(RegistryError, match="does not load"):
        registry.register_candidate(state_path=broken, run_key="bad")
    assert registry.versions() == []


def test_a_state_with_nan_weights_or_huge_dimensions_is_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """Loading was the only check: a NaN head was registered, promoted and served."""
    from bandit_core import load_state, save_state

    nan = load_state(_state(tmp_path, 1))
    nan.arrays["head.theta"] = np.full_like(nan.arrays["head.theta"], np.nan)
    huge = load_state(_state(tmp_path, 2))
    huge.config["dim_user"] = 1_000_000
    for name, state, reason in (("nan", nan, "non-finite"), ("huge", huge, "dim_user")):
        path = save_state(state, tmp_path / f"{name}.npz")
        with pytest.raises(RegistryError, match=reason):
            registry.register_candidate(state_path=path, run_key=name)
    assert registry.versions() == []


def test_logged_model_loads_in_a_fresh_process_without_pickle(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    state = _state(tmp_path, 3)
    v = registry.register_candidate(state_path=state, run_key="run-x", input_example=_table())
    registry.promote(v.version, by="tester", reason="test")
    code = (
        "import mlflow, pandas as pd, json, sys\n"
        f"mlflow.set_tracking_uri({registry.tracking_uri!r})\n"
        "m = mlflow.pyfunc.load_model('models:/test-policy@production')\n"
        "import io; t = pd.read_json(io.StringIO(sys.stdin.read()), orient='split')\n"
        "print(m.predict(t).to_json(orient='split'))\n"
    )
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=_table().to_json(orient="split"),
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    scored = pd.read_json(io.StringIO(out.stdout.strip().splitlines()[-1]), orient="split")
    # the same policy, loaded here, gives the same probabilities for request r1
    from bandit_core import load_policy

    policy = load_policy(state)
    d = policy.select(
        [0.1, 0.5],
        Candidates.from_any(["a", "b"], [[1.0, 0.0], [0.0, 1.0]]),
        np.random.default_rng(0),
    )
    np.testing.assert_allclose(scored["probability"].to_numpy()[:2], d.probabilities)
    assert scored["probability"].to_numpy()[2] == 1.0


def test_pyfunc_decides_for_the_users_group_like_the_service(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """A policy with floors per hashed user group, scored through ``mlflow.pyfunc``: a
    table with ``user_hash`` gets each request's group floor (the column is an optional
    string of the signature, so MLflow keeps it), one without gets the global floor, and
    a malformed hash is refused naming the request."""
    import hashlib

    import mlflow

    from bandit_core.policies.overlap import for_users
    from bandit_core.user_groups import user_group
    from modelregistry.pyfunc_model import USER_COLUMN, example_table

    floors = {"group_0": 0.2, "group_1": 0.02}
    policy = make_policy(
        "shared_linucb",
        dim_user=2,
        dim_arm=2,
        floor=0.01,
        segment_user_groups=2,
        segment_floors=floors,
    )
    rng = np.random.default_rng(0)
    for _ in range(100):  # "a" pays: without the floors UCB plays it with probability 1
        arm = int(rng.integers(3))
        policy.update(rng.normal(size=2), "abc"[arm], float(arm == 0), np.eye(3)[arm, :2])
    state = save_policy(policy, tmp_path / "grouped.npz")
    users = [hashlib.sha256(f"user-{i}".encode()).hexdigest() for i in range(40)]
    by_group = {g: next(u for u in users if user_group(u, 2) == g) for g in (0, 1)}
    contexts = [[0.3, -0.2], [0.3, -0.2], [0.3, -0.2]]
    ids = [["a", "b", "c"]] * 3
    feats = [np.eye(3)[:, :2]] * 3
    table = example_table(contexts, ids, feats, [by_group[0], by_group[1], None])
    v = registry.register_candidate(state_path=state, run_key="grouped", input_example=table)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry.tracking_uri)
    try:
        uri = f"models:/test-policy/{v.version}"
        spec = {c.name: c for c in mlflow.models.get_model_info(uri).signature.inputs.inputs}
        model = mlflow.pyfunc.load_model(uri)
    finally:
        mlflow.set_tracking_uri(before)
    assert spec[USER_COLUMN].required is False and spec["ctx_0"].required
    scored = model.predict(table)["probability"].to_numpy().reshape(3, 3)
    cands = Candidates.from_any(["a", "b", "c"], np.eye(3)[:, :2])
    for row, user in enumerate([by_group[0], by_group[1], None]):
        want = for_users(policy, [user]).select(contexts[row], cands, np.random.default_rng(0))
        np.testing.assert_allclose(scored[row], want.probabilities, atol=1e-15)
    assert scored[0].min() == pytest.approx(0.2) and scored[1].min() == pytest.approx(0.02)
    assert scored[2].min() == pytest.approx(0.01)  # no user: the global floor
    no_column = model.predict(table.drop(columns=[USER_COLUMN]))["probability"].to_numpy()
    assert no_column.reshape(3, 3).min(axis=1) == pytest.approx([0.01] * 3)
    bad = table.assign(**{USER_COLUMN: ["not-a-hash"] * 3 + [None] * 6})
    with pytest.raises(ValueError, match=r"user_hash of request 'r0' must be a user hash"):
        model.predict(bad)


def test_a_re_run_compares_with_its_recorded_baseline_whatever_promotions_wrote(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """The baseline a run evaluated against has its own tag: promoting the version later
    writes ``previous_production`` (what a rollback returns to), which may differ."""
    from datetime import UTC, datetime

    from eventstore.contract import BASELINE_TAG, previous_tag
    from training import runspec
    from training.baseline import baseline_state
    from training.settings import PipelineSettings

    settings = PipelineSettings(
        workspace=tmp_path / "ws",
        database_url=f"sqlite:///{tmp_path / 'events.db'}",
        mlflow_tracking_uri=registry.tracking_uri,
        model_name=registry.model_name,
    )
    spec = runspec.plan({}, run_key="run-A", interval_end=datetime.now(UTC), settings=settings)
    v1 = registry.register_candidate(state_path=_state(tmp_path, 1), run_key="run-0")
    registry.promote(v1.version, by="tester", reason="first")
    v2 = registry.register_candidate(
        state_path=_state(tmp_path, 2), run_key="run-A", tags={BASELINE_TAG: v1.version}
    )
    v3 = registry.register_candidate(state_path=_state(tmp_path, 3), run_key="run-B")
    registry.promote(v3.version, by="tester", reason="newer")
    registry.promote(v2.version, by="tester", reason="after all")
    assert registry.get(v2.version).tags[previous_tag("production")] == v3.version
    baseline, state, _ = baseline_state(spec)
    assert baseline == v1.version and state is not None and state.is_file()


def test_a_version_s_hostile_tags_never_end_the_listing(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """Tags anyone with registry access can set: a count that is not a number or not
    finite, a JSON value nested too deep or holding NaN. The summaries of every version
    still come out, each bad value as None or as its text, and as strict JSON (before:
    a traceback, or a ``NaN`` literal in ``banditops models --json``)."""
    import json

    from modelregistry.report import version_summaries

    good = registry.register_candidate(state_path=_state(tmp_path, 1), run_key="good")
    bad = registry.register_candidate(state_path=_state(tmp_path, 2), run_key="bad")
    hostile = {
        "window_rows": "abc",
        "head_rows": "1e400",
        "challengers": "[" * 3000,
        "floor": "NaN",
    }
    # and what passed for numbers (offline helper, stop 53): 1e999 printed as Infinity,
    # -7.9 rows as -7, 1e308 rows as 309 digits; a gate verdict the retrain never writes
    # listed as rejected while ``promote`` moved the alias to it without --force
    odd = {
        "window_rows": "1e308",
        "head_rows": "-7.9",
        "eval_rows": "12.0",
        "floor": "1e999",
        "challengers": '[{"algorithm": "lints", "dr": 1e999}]',
        "gate_passed": "False",
    }
    third = registry.register_candidate(state_path=_state(tmp_path, 3), run_key="odd")
    registry.tag_version(bad.version, hostile)
    registry.tag_version(third.version, odd)
    summaries = {s["version"]: s for s in version_summaries(registry.listing())}
    assert set(summaries) == {good.version, bad.version, third.version}
    row = summaries[bad.version]
    assert row["window_rows"] is None and row["head_rows"] is None
    assert row["candidates"] == "[" * 3000 and row["floor"] == "NaN"
    row = summaries[third.version]
    assert row["window_rows"] is None and row["head_rows"] is None and row["eval_rows"] == 12
    assert row["floor"] == "1e999" and row["candidates"] == odd["challengers"]
    assert row["gate_passed"] is False
    text = json.dumps(list(summaries.values()), allow_nan=False)  # strict JSON
    assert json.loads(text)[0]["version"] in summaries
    with pytest.raises(
        RegistryError, match="failed its gate \\(gate_passed='False', not 'true'\\)"
    ):
        registry.promote(third.version, by="tester", reason="no force")
    assert registry.by_alias("production") is None


def test_a_registry_that_cannot_be_read_is_an_error_not_an_empty_list(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """A tag whose bytes are not UTF-8 (written into the store by hand) makes MLflow's
    listing fail: that is a RegistryError, never "no versions" (a retrain would then
    register its run key a second time, and ``models`` printed ``[]``)."""
    import sqlite3

    version = registry.register_candidate(state_path=_state(tmp_path, 1), run_key="one").version
    registry.tag_version(version, {"note": "x"})
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("UPDATE model_version_tags SET value = CAST(X'FF' AS TEXT) WHERE key = 'note'")
    with pytest.raises(RegistryError, match="could not"):
        registry.versions()
    with pytest.raises(RegistryError, match="could not"):
        registry.get(version)
    with pytest.raises(RegistryError, match="has no version 7"):
        ModelRegistry(f"sqlite:///{tmp_path}/other.db", model_name="test-policy").get(7)


def test_an_artifact_changed_after_registration_is_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """Registration records the state file's SHA-256 (tag ``state_sha256``); the service
    refuses the version when the file it downloads no longer has it (before: a valid
    state put in its place was loaded silently at the next restart)."""
    from urllib.parse import urlparse

    from eventstore.admission import AdmissionError
    from eventstore.contract import POLICY_STATE_PATH, STATE_DIGEST_TAG
    from serving.models.mlflow_source import MlflowModelSource

    info = registry.register_candidate(state_path=_state(tmp_path, 1), run_key="one")
    assert len(info.tags[STATE_DIGEST_TAG]) == 64
    registry.promote(info.version, by="test", reason="serve it")
    source = MlflowModelSource(
        registry.tracking_uri, registry.model_name, {"production": "production"}
    )
    ref = source.resolve("production")
    assert ref is not None and ref.digest == info.tags[STATE_DIGEST_TAG]
    source.load(ref)  # the registered file loads
    uri = registry.client.get_model_version_download_uri(registry.model_name, info.version)
    stored = Path(urlparse(uri).path) / POLICY_STATE_PATH
    registered = stored.read_bytes()
    stored.write_bytes(_state(tmp_path, 2).read_bytes())  # another valid state
    with pytest.raises(AdmissionError, match="the artifact changed"):
        source.load(ref)

    # a loader refuses it, and serves it once the registered file is back (tried again
    # after retry_failed_s; before, such a refusal lasted until a restart)
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade
    from serving.models.loader import ModelLoader
    from serving.store.repository import EventStore

    engine = make_engine(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        upgrade(engine)
        loader = ModelLoader(source, EventStore(engine), 3600.0, retry_failed_s=0.0)
        loader.poll()
        assert loader.current is not None and loader.current.production is None
        assert "the artifact changed" in str(loader.last_error)
        stored.write_bytes(registered)
        loader.poll()
        assert loader.current.production is not None
        assert loader.current.production.version == ref.version
    finally:
        engine.dispose()


def test_registration_refuses_what_the_service_would_not_admit(tmp_path: Path) -> None:
    """The registry built from settings checks a version against the settings' admission
    limits (``model_max_bytes``, ``model_max_dim``), the ones the service loads with.
    Before, registration used the default limits whatever the settings said: with
    ``BANDITOPS_MODEL_MAX_DIM=1`` a version the service would refuse to load was
    registered (and could be promoted)."""
    from eventstore.settings import CoreSettings

    def registry(**limits: int) -> ModelRegistry:
        settings = CoreSettings(
            workspace=tmp_path / "ws",
            mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
            model_name="test-policy",
            **limits,
        )
        return ModelRegistry.from_settings(settings)

    with pytest.raises(RegistryError, match="does not load"):
        registry(model_max_dim=1).register_candidate(state_path=_state(tmp_path, 1), run_key="a")
    with pytest.raises(RegistryError, match="does not load"):
        registry(model_max_bytes=1024).register_candidate(
            state_path=_state(tmp_path, 1), run_key="b"
        )
    assert registry().versions() == []
    assert registry().register_candidate(state_path=_state(tmp_path, 1), run_key="c").version == "1"


def test_two_tries_of_one_run_leave_one_version(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's zombie and its retry both found no version of their run key and both
    registered one (check, then seconds of logging, then act): the later try now
    withdraws its own version and both return the first."""
    first = registry.register_candidate(state_path=_state(tmp_path, 1), run_key="run-9")
    real = ModelRegistry.find_by_run_key
    calls = iter([None])  # the other try's first look: nothing registered yet

    def racing(self: ModelRegistry, run_key: str) -> Any:
        return next(calls, real(self, run_key)) if run_key == "run-9" else real(self, run_key)

    monkeypatch.setattr(ModelRegistry, "find_by_run_key", racing)
    second = registry.register_candidate(state_path=_state(tmp_path, 2), run_key="run-9")
    assert second.version == first.version
    assert [v.version for v in registry.versions()] == [first.version]
    assert registry.by_alias("candidate").version == first.version


def test_a_retry_finishes_a_registration_a_failure_cut_short(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A try that failed after the version was created (its wait for READY, the alias
    move) left the version without the registered alias; the retry returned it as it
    was, and @candidate stayed on the version before."""
    registry.register_candidate(state_path=_state(tmp_path, 1), run_key="run-1")

    def broken(self: ModelRegistry, version: str, timeout_s: float = 60.0) -> None:
        raise RegistryError("not ready (test)")

    with monkeypatch.context() as patch:
        patch.setattr(ModelRegistry, "_wait_ready", broken)
        with pytest.raises(RegistryError, match="not ready"):
            registry.register_candidate(state_path=_state(tmp_path, 2), run_key="run-2")
    assert registry.by_alias("candidate").version == "1"
    retried = registry.register_candidate(state_path=_state(tmp_path, 2), run_key="run-2")
    assert retried.version == "2" and registry.by_alias("candidate").version == "2"
    # a retry of an older run never takes the alias back from a later version
    registry.register_candidate(state_path=_state(tmp_path, 3), run_key="run-3")
    again = registry.register_candidate(state_path=_state(tmp_path, 2), run_key="run-2")
    assert again.version == "2" and registry.by_alias("candidate").version == "3"
    moves = [(m["alias"], m["version"]) for m in registry.alias_history()]
    assert moves == [("candidate", "1"), ("candidate", "2"), ("candidate", "3")]


def test_a_move_without_its_record_is_recorded_when_promoted_again(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """@production moved without a history record (MLflow's own client, or a promote
    task that failed between the move and the record): a retried promotion found the
    alias in place and returned, so the audit and the rollout controller never saw it."""
    for seed in (1, 2):
        registry.register_candidate(state_path=_state(tmp_path, seed), run_key=f"run-{seed}")
    registry.promote("1", by="tester", reason="first")
    registry.client.set_registered_model_alias("test-policy", "production", "2")
    registry.promote("2", by="dag", reason="gate passed")
    last = registry.alias_history()[-1]
    assert (last["alias"], last["version"], last["by"]) == ("production", "2", "dag")
    assert last["reason"] == "gate passed (recorded late)"
    registry.promote("2", by="dag", reason="again")  # in place and recorded: nothing more
    assert registry.alias_history()[-1] == last
    # where it came from is the last recorded holder, and a rollback finds it (the record
    # said None, without the promotion's tags: "no previous version to roll back to")
    assert last["previous"] == "1" and registry.get("2").tags["previous_production"] == "1"
    assert registry.rollback(by="ann", reason="bad").version == "1"


def test_version_numbers_are_ascii_digits_within_64_bits() -> None:
    from modelregistry.registry import version_number

    assert version_number(" 0003") == "3" == version_number("0" * 5000 + "3")
    assert version_number(2**63 - 1) == str(2**63 - 1)
    for bad in ("99999999999999999999", 2**63, "1" * 5000):
        with pytest.raises(RegistryError, match="a model version is at most 9223372036854775807"):
            version_number(bad)
    for bad in ("٣", "3.0", "latest", "", True):
        with pytest.raises(RegistryError, match="a model version is a number such as 3"):
            version_number(bad)  # type: ignore[arg-type]


def test_reading_versions_costs_no_call_per_version_beyond_its_run(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each version was read again for its aliases, and a registration scanned every
    version for its run key twice: 9 s a registration at 400 versions (soak helper).
    Now the listing reads each version's run only, and the run-key lookup searches the
    tag, reading the one version it finds."""
    registry.client.create_registered_model(registry.model_name)
    for i in range(12):
        key = "it's-a-quote" if i == 7 else f"scheduled__2026-12-{i + 1:02d}T03:30:00+00:00"
        registry.client.create_model_version(
            registry.model_name, source=f"/nowhere/{i}", tags={"run_key": key}
        )
    registry.client.set_registered_model_alias(registry.model_name, "production", "3")
    registry.client.set_registered_model_alias(registry.model_name, "staging", "3")
    calls: dict[str, int] = {}
    for name in ("get_model_version", "search_model_versions", "get_registered_model"):
        real = getattr(registry.client, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args, **kw)

        monkeypatch.setattr(registry.client, name, counted)
    listed = registry.versions()
    assert [v.version for v in listed] == [str(i) for i in range(12, 0, -1)]
    assert listed[-3].aliases == ("production", "staging") and listed[0].aliases == ()
    assert calls == {"search_model_versions": 1, "get_registered_model": 1}
    calls.clear()
    found = registry.find_by_run_key("scheduled__2026-12-05T03:30:00+00:00")
    assert found is not None and found.version == "5" and found.aliases == ()
    assert calls == {"search_model_versions": 1, "get_model_version": 1}
    assert registry.find_by_run_key("no such run") is None
    quoted = registry.find_by_run_key("it's-a-quote")  # the filter cannot quote it: a scan
    assert quoted is not None and quoted.version == "8"


def test_a_listing_reads_runs_by_the_hundred_and_the_newest_with_every_aliased_one(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Bandits page and ``banditops models`` list versions on every view; each
    version's run was read with its own ``get_run``: 0.38 s at 30 versions, 2.5 s at 365,
    5.7 s at 730 on SQLite (several times that through a tracking server). Now a listing
    reads the runs of the versions it lists in one search per hundred, and by default
    lists the newest ``LISTED_VERSIONS`` and every older version that holds an alias,
    saying how many it left out."""
    from modelregistry.registry import LISTED_VERSIONS, RUNS_PER_SEARCH
    from tests.registry_support import count_calls, many_versions, version_metric

    total = 2 * LISTED_VERSIONS
    assert total <= RUNS_PER_SEARCH
    many_versions(registry, total, {"production": 3, "staging": 3, "candidate": 5})
    calls = count_calls(monkeypatch)
    listing = registry.listing(LISTED_VERSIONS)
    newest = [str(n) for n in range(total, total - LISTED_VERSIONS, -1)]
    assert [v.version for v in listing.versions] == [*newest, "5", "3"]
    assert listing.omitted == total - LISTED_VERSIONS - 2
    assert listing.note is not None and listing.note.startswith(f"{listing.omitted} older")
    assert "--all" in listing.note
    by_number = {v.version: v for v in listing.versions}
    assert by_number["3"].aliases == ("production", "staging")
    assert by_number["5"].aliases == ("candidate",) and by_number[newest[0]].aliases == ()
    for number, info in by_number.items():  # each version with its own run's numbers
        assert info.metrics["ope.candidate.dr.value"] == version_metric(int(number))
        assert info.params == {"algorithm": "linucb"} and info.run_id
    assert calls == {"get_run": 0, "search_runs": 1}

    every = registry.listing()
    assert len(every.versions) == total and every.omitted == 0 and every.note is None
    assert calls == {"get_run": 0, "search_runs": 2}
    one = every.versions[-1]
    assert one == registry.get(one.version)  # the same as a version read on its own
    assert registry.versions() == every.versions
    with pytest.raises(ValueError, match="newest must be"):
        registry.listing(0)


def test_a_listed_version_whose_run_the_search_does_not_find_is_read_on_its_own(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version registered by hand from another experiment's run (or a deleted run):
    the listing still shows its run's metrics, read by ``get_run``."""
    from tests.registry_support import count_calls, many_versions

    many_versions(registry, 3, {})
    other = registry.client.create_experiment("elsewhere")
    run_id = registry.client.create_run(other).info.run_id
    registry.client.log_metric(run_id, "ope.candidate.dr.value", 0.5)
    registry.client.create_model_version(registry.model_name, "/nowhere/4", run_id=run_id)
    registry.client.delete_run(registry.versions()[-1].run_id)
    calls = count_calls(monkeypatch)
    listed = registry.listing().versions
    assert listed[0].version == "4" and listed[0].metrics == {"ope.candidate.dr.value": 0.5}
    assert listed[-1].params == {"algorithm": "linucb"}  # its run deleted, still read
    assert calls == {"get_run": 1, "search_runs": 1}


@pytest.mark.parametrize("status", ["rolled_back", "stopped", "expired"])
def test_a_version_whose_rollout_ended_against_it_needs_force(
    registry: ModelRegistry, tmp_path: Path, status: str
) -> None:
    """``banditops promote 3`` put the demo's rolled-back version in production without a
    word (README helper, stop 46): the registry promoted anything whose gate had not
    failed. A version the online test (or a person's stop) ended against is refused
    unless forced; a version whose rollout promoted it, or never ran, is not."""
    v1 = registry.register_candidate(state_path=_state(tmp_path, 1), run_key="run-1")
    registry.promote(v1.version, by="tester", reason="first model")
    v2 = registry.register_candidate(state_path=_state(tmp_path, 2), run_key="run-2")
    registry.client.set_model_version_tag(registry.model_name, v2.version, "rollout_status", status)
    registry.client.set_model_version_tag(
        registry.model_name, v2.version, "rollout_reason", "worse than production by 0.04"
    )
    with pytest.raises(RegistryError, match=rf"rollout ended {status} \(worse .*--force"):
        registry.promote(v2.version, by="tester", reason="typo")
    assert registry.by_alias("production").version == v1.version
    assert registry.promote(v2.version, by="tester", reason="sure", force=True).version == "2"
    v3 = registry.register_candidate(state_path=_state(tmp_path, 3), run_key="run-3")
    registry.client.set_model_version_tag(
        registry.model_name, v3.version, "rollout_status", "promoted"
    )
    assert registry.promote(v3.version, by="tester", reason="again").version == "3"


def test_processes_opening_a_fresh_registry_together_both_open_it(tmp_path: Path) -> None:
    """Two ``banditops train`` started together on a fresh workspace raced through
    MLflow's migrations of ``mlflow.db``: one or both failed ("table _alembic_tmp_…
    already exists", "Online migration expected to match one row") and in half the tries
    the database was left half-migrated, every later command failing (audit, stop 54).
    The first opening is ordered by a file lock: both open it, every time."""
    root = Path(__file__).resolve().parents[1]
    script = (
        "import sys; from modelregistry.registry import ModelRegistry; "
        "r = ModelRegistry(f'sqlite:///{sys.argv[1]}/mlflow.db', 'm'); "
        "r.client.search_registered_models(); print('opened')"
    )
    for attempt in range(1):  # unordered, 5 of 6 openings failed
        folder = tmp_path / str(attempt)
        folder.mkdir()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(folder)],
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0 and "opened" in out, err[-2000:]
