"""Security checks: bearer tokens where configured (compared in constant time), user ids
never stored in clear (the store and the journal are scanned), nothing loaded through
pickle, SQL only through bound parameters. The scanners are the reliability benchmark's
(``benchmarks.reliability_checks``); each is also shown to find a planted violation.
(Loading a registered model with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` is in
tests/test_registry.py.)"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reliability_checks import (
    SQL_ALLOWED,
    clear_user_ids,
    pickle_findings,
    python_files,
    sql_findings,
    token_comparisons,
)
from serving.identity import hash_user
from serving.store.journal import Journal
from tests.serving_helpers import (
    decision_body,
    decision_row,
    policy_file,
    running_client,
    service_settings,
)

ROOT = Path(__file__).resolve().parents[1]

PLANTED = textwrap.dedent(
    """
    import pickle, numpy as np, torch, yaml
    import mlflow
    import numpy as n2
    from pickle import loads
    from torch import load as tload
    from sqlalchemy import text
    def bad(conn, name, f, flag):
        pickle.loads(f.read())
        np.load(f, allow_pickle=True)
        torch.load(f)
        yaml.load(f)
        conn.execute(text(f"SELECT * FROM t WHERE name = '{name}'"))
        conn.exec_driver_sql("DELETE FROM t WHERE id = %s" % name)
        loads(f.read())
        n2.load(f, allow_pickle=flag)
        tload(f)
        query = "SELECT * FROM t WHERE name = '" + name + "'"
        conn.execute(text(query))
        mlflow.pyfunc.load_model("models:/m/1")
        return token == settings.api_token.get_secret_value()
    def good(conn, name, f):
        torch.load(f, weights_only=True)
        np.load(f, allow_pickle=False)
        n2.load(f)
        conn.execute(text("SELECT * FROM t WHERE name = :name"), {"name": name})
    """
)


def test_scanners_find_planted_violations(tmp_path: Path) -> None:
    """Direct and rewritten forms (imported names, aliases, a variable flag, SQL built in
    a variable, an MLflow flavor's loader) are found; the safe forms are not."""
    planted = ROOT / "benchmarks" / f"_planted_{tmp_path.name}.py"
    planted.write_text(PLANTED)
    try:
        pickles = pickle_findings([planted])
        sql = sql_findings([planted])
        tokens = token_comparisons([planted])
    finally:
        planted.unlink()
    assert [p.split(" ", 1)[1] for p in pickles] == [
        "pickle.loads",
        "numpy.load with allow_pickle not False",
        "torch.load without weights_only=True",
        "yaml.load without SafeLoader",
        "pickle.loads",
        "numpy.load with allow_pickle not False",
        "torch.load without weights_only=True",
        "mlflow.pyfunc.load_model (pickle-bearing MLflow flavor)",
    ]
    assert len(sql) == 3 and len(tokens["plain"]) == 1


def test_nothing_is_loaded_through_pickle() -> None:
    assert pickle_findings(python_files()) == []


def test_sql_is_built_from_bound_parameters_only() -> None:
    files = list(python_files())
    assert sql_findings(files) == []
    # the reviewed exceptions still exist (the allow-list does not outlive them)
    assert {str(f.relative_to(ROOT)) for f in files} >= set(SQL_ALLOWED)


def test_tokens_are_compared_in_constant_time() -> None:
    found = token_comparisons(python_files())
    assert found["plain"] == []
    assert any(w.startswith("serving/routes.py") for w in found["compare_digest"])


def test_tokens_are_required_where_configured(tmp_path: Path, rng: np.random.Generator) -> None:
    settings = service_settings(
        tmp_path, model_path=policy_file(tmp_path / "p.npz"), api_token="s3"
    )
    body = decision_body(rng)
    grouped = {"context": body["context"], "groups": [{"id": "g", "variants": body["candidates"]}]}
    with running_client(settings) as client:
        good = {"Authorization": "Bearer s3"}
        event = client.post("/v1/decisions", json=body, headers=good).json()["event_id"]
        reward = {"event_id": event, "reward": 1.0}
        for headers in ({}, {"Authorization": "Bearer s4"}, {"Authorization": "Basic s3"}):
            # an anonymous caller's unrewarded decisions counted as reward 0 for the arm
            # that served them: they held a worse rollout candidate (security helper)
            assert client.post("/v1/decisions", json=body, headers=headers).status_code == 401
            grouped_answer = client.post("/v1/decisions/grouped", json=grouped, headers=headers)
            assert grouped_answer.status_code == 401
            assert client.post("/v1/rewards", json=reward, headers=headers).status_code == 401
            assert client.post("/v1/admin/poll", headers=headers).status_code == 401
            assert client.get("/v1/admin/state", headers=headers).status_code == 401
        assert client.post("/v1/decisions/grouped", json=grouped, headers=good).status_code == 200
        assert client.post("/v1/rewards", json=reward, headers=good).status_code == 200
        assert client.get("/v1/admin/state", headers=good).status_code == 200
        # a trailing slash was a 307 to a Location built from the client's Host header
        evil = {"Host": "evil.example", **good}
        slashed = client.post("/v1/rewards/", json=reward, headers=evil, follow_redirects=False)
        assert slashed.status_code == 404 and "location" not in slashed.headers


def test_public_decisions_open_the_decision_endpoints_only(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    settings = service_settings(
        tmp_path, model_path=policy_file(tmp_path / "p.npz"), api_token="s3" * 8,
        public_decisions=True,
    )  # fmt: skip
    with running_client(settings) as client:
        anonymous = {"Authorization": ""}
        answer = client.post("/v1/decisions", json=decision_body(rng), headers=anonymous)
        assert answer.status_code == 200
        reward = {"event_id": answer.json()["event_id"], "reward": 1.0}
        assert client.post("/v1/rewards", json=reward, headers=anonymous).status_code == 401


def test_user_ids_are_never_stored_in_clear(tmp_path: Path, rng: np.random.Generator) -> None:
    users = [f"person-{i}@example.org" for i in range(6)]
    settings = service_settings(tmp_path, model_path=policy_file(tmp_path / "p.npz"))
    with running_client(settings) as client:
        for user in users:
            body: dict[str, Any] = decision_body(rng, user=user)
            event = client.post("/v1/decisions", json=body).json()["event_id"]
            client.post("/v1/rewards", json={"event_id": event, "reward": 1.0})
            grouped = {
                "context": body["context"],
                "user_id": user,
                "groups": [{"id": "g", "variants": body["candidates"]}],
            }
            assert client.post("/v1/decisions/grouped", json=grouped).status_code == 200
        # the journal holds what the store would: a logged decision keeps the salted hash
        row = dataclasses.replace(decision_row(rng), user_hash=hash_user(users[0], b"salt"))
        journal = Journal(tmp_path / "journal").open()
        journal.spool([row])
        journal.close()
    assert (
        clear_user_ids(settings.store_url, users, [settings.workspace, tmp_path / "journal"]) == []
    )
    # and the scan does find an id that is there
    assert clear_user_ids(settings.store_url, [row.event_id], [tmp_path / "journal"])
