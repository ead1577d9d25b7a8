"""The item catalog through the app: /v1/items, decisions with ``retrieve``, retired items
never served, versions that re-featurise a logged decision, new-item exploration, slates
with per-position propensities and rewards, grouped decisions, ``banditops catalog load``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.replay import read_replay
from eventstore.schema import decisions, rewards
from eventstore.types import decode_floats
from ops.cli import app as cli
from serving.catalog.store import CatalogStore, ItemInput
from tests.serving_helpers import (
    DIM_ARM,
    DIM_USER,
    decision_body,
    policy_file,
    running_client,
    served_policy,
    service_settings,
)

pytest_plugins = ["tests.serving_fixtures"]
TOKEN = {"Authorization": "Bearer tok"}


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return policy_file(tmp_path / "policy.npz", seed=0)


def _items(rng: np.random.Generator, n: int, prefix: str = "item") -> list[dict[str, Any]]:
    """Items with DIM_ARM features and a DIM_USER embedding (the context is the query)."""
    return [
        {
            "id": f"{prefix}-{i}",
            "features": rng.standard_normal(DIM_ARM).round(6).tolist(),
            "embedding": rng.standard_normal(DIM_USER).round(6).tolist(),
        }
        for i in range(n)
    ]


def _settings(tmp_path: Path, store_url: str | None, model_path: Path, **extra: Any) -> Any:
    return service_settings(tmp_path, store_url, model_path=model_path, api_token="tok", **extra)


def _rows(client: Any, *columns: str) -> list[Any]:
    engine = client.app.state.service.engine
    with engine.connect() as conn:
        return conn.execute(sa.select(*(decisions.c[c] for c in columns))).all()


def test_items_are_versioned_and_retired_through_the_api(
    store_url: str, model_path: Path, tmp_path: Path
) -> None:
    with running_client(_settings(tmp_path, store_url, model_path)) as client:
        body = {"features": [1.0, 2.0, 3.0]}
        assert client.put("/v1/items/shoe", json=body).status_code == 401
        first = client.put("/v1/items/shoe", json=body, headers=TOKEN).json()
        assert first["version"] == 1 and first["retired"] is False
        second = client.put("/v1/items/shoe", json={"features": [4.0, 5.0, 6.0]}, headers=TOKEN)
        assert second.json()["version"] == 2 and second.json()["seq"] > first["seq"]
        assert client.get("/v1/items/shoe").json()["features"] == [4.0, 5.0, 6.0]
        old = client.get("/v1/items/shoe/versions/1").json()
        assert old["features"] == [1.0, 2.0, 3.0] and old["version"] == 1
        retired = client.delete("/v1/items/shoe", headers=TOKEN).json()
        assert retired["retired"] is True and retired["version"] == 3
        assert client.get("/v1/items/shoe").json()["retired"] is True
        assert client.delete("/v1/items/nope", headers=TOKEN).status_code == 404
        assert client.get("/v1/items/nope").status_code == 404
        assert client.get("/v1/items/shoe/versions/9").status_code == 404
        wrong = client.post(
            "/v1/items",
            json={
                "items": [{"id": "a", "features": [1.0, 2.0, 3.0]}, {"id": "b", "features": [1.0]}]
            },
            headers=TOKEN,
        )
        assert wrong.status_code == 422
        assert wrong.json()["detail"][0]["loc"] == ["body", "items", 1, "features"]
        twice = client.post(
            "/v1/items",
            json={
                "items": [
                    {"id": "a", "features": [1.0, 2, 3]},
                    {"id": "a", "features": [1.0, 2, 3]},
                ]
            },
            headers=TOKEN,
        )
        assert twice.status_code == 422 and "appears twice" in twice.json()["detail"][0]["msg"]


def test_item_ids_and_widths_a_request_could_not_use_are_refused(
    model_path: Path, tmp_path: Path
) -> None:
    """An item is written once and stored in every decision that retrieves it: its
    features obey max_arm_features (5,000-wide items made a 46-byte decision store 2 MB);
    an id must be one ``/v1/items/{id}`` can name ('/' could never be retired; %FF and
    %FE both became U+FFFD, one item)."""
    settings = _settings(tmp_path, None, model_path, max_arm_features=8, max_context_features=8)
    with running_client(settings) as client:

        def post(item: dict[str, Any]) -> Any:
            return client.post("/v1/items", json={"items": [item]}, headers=TOKEN)

        wide = post({"id": "w", "features": [0.5] * 9})
        assert wide.status_code == 422 and "max_arm_features" in wide.text
        assert wide.json()["detail"][0]["loc"] == ["body", "items", 0, "features"]
        query = post({"id": "q", "features": [0.5] * 3, "embedding": [0.5] * 9})
        assert query.status_code == 422 and "max_context_features" in query.text
        slash = post({"id": "a/b", "features": [0.5] * 3})
        assert slash.status_code == 422 and slash.json()["detail"][0]["loc"][-1] == "id"
        for dots in (".", ".."):  # clients drop such a URL segment: /v1/items/.. is /v1
            got = post({"id": dots, "features": [0.5] * 3})
            assert got.status_code == 422 and "'.' or '..'" in got.text, got.text
        for path in ("%FF", "%ED%A0%80", "a%EF%BF%BDb"):
            got = client.put(f"/v1/items/{path}", json={"features": [0.5] * 3}, headers=TOKEN)
            assert got.status_code == 422, (path, got.text)
            assert client.get(f"/v1/items/{path}").status_code == 422
        assert client.get("/v1/items").json()["items"] == []
        assert post({"id": "...", "features": [0.5] * 3}).status_code == 200  # not a segment
        # a request's work is done on the event loop: at most 1,000 items a request (a
        # 1 MiB body of 21,500 held every other request for 1.8 s; audit, stop 54)
        from serving.catalog.schemas import MAX_ITEMS_PER_REQUEST

        many = [{"id": f"m{i}", "features": [0.5] * 3} for i in range(MAX_ITEMS_PER_REQUEST + 1)]
        got = client.post("/v1/items", json={"items": many}, headers=TOKEN)
        assert got.status_code == 422 and "at most 1000 items" in got.text
        assert len(got.text) < 2000  # the echo shows the first items, not all of them
        got = client.post("/v1/items", json={"items": many[:-1]}, headers=TOKEN)
        assert got.status_code == 200 and got.json()["count"] == MAX_ITEMS_PER_REQUEST


def test_retrieved_decisions_log_the_candidates_and_refeaturise_exactly(
    store_url: str, model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    with running_client(_settings(tmp_path, store_url, model_path)) as client:
        items = _items(rng, 60)
        loaded = client.post("/v1/items", json={"items": items}, headers=TOKEN).json()
        assert loaded["count"] == 60
        context = rng.standard_normal(DIM_USER).round(6).tolist()
        got = client.post(
            "/v1/decisions", headers=TOKEN, json={"context": context, "retrieve": {"k": 10}}
        )
        assert got.status_code == 200, got.text
        decision = got.json()
        # exact retrieval (small catalog): the top 10 by inner product with the context
        emb = np.array([it["embedding"] for it in items])
        best = [items[i]["id"] for i in np.argsort(-(emb @ np.array(context)))[:10]]
        assert decision["candidates"] == best and decision["arm_id"] in best
        # an item updated after the decision: its logged version still re-featurises it
        client.put("/v1/items/" + best[0], json={"features": [9.0, 9.0, 9.0]}, headers=TOKEN)
        (row,) = _rows(
            client,
            "candidate_ids",
            "candidate_versions",
            "candidate_features",
            "catalog_seq",
            "retrieval",
            "n_candidates",
            "dim_arm",
        )
        assert row.candidate_ids == best and row.catalog_seq == loaded["seq"]
        assert row.retrieval["method"] == "exact" and row.retrieval["k"] == 10
        logged = decode_floats(row.candidate_features, (row.n_candidates, row.dim_arm))
        for item_id, version, feats in zip(
            row.candidate_ids, row.candidate_versions, logged, strict=True
        ):
            served = client.get(f"/v1/items/{item_id}/versions/{version}").json()
            assert served["features"] == feats.tolist()
        # bad retrieval requests name the field
        for body, loc in (
            ({"context": context}, ["body"]),
            ({"context": context, "retrieve": {"k": 2}, "candidates": [{"id": "x"}]}, ["body"]),
            ({"context": context, "retrieve": {"k": 2000}}, ["body", "retrieve", "k"]),
            (
                {"context": context, "retrieve": {"k": 2, "query": [1.0]}},
                ["body", "retrieve", "query"],
            ),
            ({"context": context, "retrieve": {"k": 0}}, ["body", "retrieve", "k"]),
        ):
            bad = client.post("/v1/decisions", headers=TOKEN, json=body)
            assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == loc, bad.text


def test_retired_items_are_never_served(
    model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    with running_client(_settings(tmp_path, None, model_path, new_item_impressions=0)) as client:
        items = _items(rng, 40)
        client.post("/v1/items", json={"items": items}, headers=TOKEN)
        context = rng.standard_normal(DIM_USER).round(6).tolist()
        emb = np.array([it["embedding"] for it in items])
        top = [items[i]["id"] for i in np.argsort(-(emb @ np.array(context)))[:10]]
        for item_id in top:
            assert client.delete(f"/v1/items/{item_id}", headers=TOKEN).status_code == 200
        served: set[str] = set()
        for _ in range(100):
            got = client.post(
                "/v1/decisions",
                headers=TOKEN,
                json={"context": context, "retrieve": {"k": 15}, "k": 3},
            ).json()
            served.update(got["candidates"])
            assert got["arm_id"] not in top
        assert served and not served & set(top)
        assert len(served) == 15  # the next 15 by score, always the same set


def test_new_items_are_retrieved_and_get_the_exploration_floor(
    model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    settings = _settings(
        tmp_path,
        None,
        model_path,
        new_item_impressions=5,
        new_item_p_min=0.1,
        new_item_max_share=0.5,
        new_item_slots=1,
    )
    with running_client(settings) as client:
        client.post("/v1/items", json={"items": _items(rng, 8)}, headers=TOKEN)
        context = np.ones(DIM_USER).tolist()
        for _ in range(6):  # every item is shown 6 times: none is new any more
            client.post(
                "/v1/decisions",
                headers=TOKEN,
                json={"context": context, "retrieve": {"k": 8}, "k": 8},
            )
        low = {"features": [0.0, 0.0, 0.0], "embedding": [-5.0] * DIM_USER}  # scores last
        client.put("/v1/items/fresh", json=low, headers=TOKEN)
        got = client.post(
            "/v1/decisions", headers=TOKEN, json={"context": context, "retrieve": {"k": 8}}
        ).json()
        assert got["candidates"][-1] == "fresh"
        (row,) = [
            r
            for r in _rows(client, "event_id", "candidate_ids", "probabilities", "policy")
            if r.event_id == got["event_id"]
        ]
        probs = decode_floats(row.probabilities, (8,))
        assert probs[-1] >= 0.1 and row.policy.endswith("+cold_floor")
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)
        assert client.get("/v1/items/item-0").json()["impressions"] == 6


def test_slates_log_position_propensities_and_rewards_name_the_position(
    store_url: str, model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    settings = _settings(tmp_path, store_url, model_path)
    with running_client(settings) as client:
        got = client.post(
            "/v1/decisions", headers=TOKEN, json={**decision_body(rng, n=6), "k": 3}
        ).json()
        marginal = got["position_propensities"]
        assert len(marginal) == 3 and marginal[0] == pytest.approx(got["propensity"], abs=1e-12)
        assert all(0.0 < p <= 1.0 for p in marginal)
        event = got["event_id"]
        head = served_policy(client).head
        before = float(head.count_[0])
        outcomes = [
            client.post(
                "/v1/rewards",
                json={"event_id": event, "reward": value, "position": p},
                headers=TOKEN,
            ).json()["status"]
            for p, value in ((2, 1.0), (2, 1.0), (1, 1.0), (None, 0.5))
        ]
        assert outcomes == ["applied", "duplicate", "applied", "applied"]
        assert float(head.count_[0]) == before + 3
        bad = client.post(
            "/v1/rewards", json={"event_id": event, "reward": 1.0, "position": 3}, headers=TOKEN
        )
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "position"]
        (row,) = _rows(client, "position_propensities", "ranking")
        assert row.position_propensities == marginal and len(row.ranking) == 3
        engine = client.app.state.service.engine
        with engine.connect() as conn:
            positions = (
                conn.execute(sa.select(rewards.c.position).order_by(rewards.c.id)).scalars().all()
            )
        assert positions == [2, 2, 1, None]
        # the replay credits the decision's arm with position 0's reward, and every shown
        # position with its own (training rows: one per position, tests/test_slate_training)
        replay = read_replay(
            engine,
            datetime.now(UTC) - timedelta(hours=1),
            datetime.now(UTC) + timedelta(hours=1),
            reward_window=timedelta(seconds=1),
            as_of=datetime.now(UTC) + timedelta(hours=2),
        )
        assert replay["reward"].tolist() == [0.5] and replay["n_rewards"].tolist() == [1]
        assert replay["position_rewards"].tolist() == [[0.5, 1.0, 1.0]]
        assert replay["position_observed"].tolist() == [[True, True, True]]
        assert replay["position_propensities"].tolist() == [marginal]


def test_a_grouped_request_returns_exactly_one_variant_per_group(
    store_url: str, model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    with running_client(_settings(tmp_path, store_url, model_path)) as client:
        groups = [
            {
                "id": f"title-{g}",
                "variants": [
                    {
                        "id": f"title-{g}/art-{v}",
                        "features": rng.standard_normal(DIM_ARM).round(6).tolist(),
                    }
                    for v in range(n)
                ],
            }
            for g, n in enumerate((3, 7, 1, 10))
        ]
        body = {"context": rng.standard_normal(DIM_USER).round(6).tolist(), "groups": groups}
        got = client.post("/v1/decisions/grouped", headers=TOKEN, json=body)
        assert got.status_code == 200, got.text
        out = got.json()
        assert [c["group_id"] for c in out["groups"]] == [g["id"] for g in groups]
        for choice, group in zip(out["groups"], groups, strict=True):
            assert choice["arm_id"] in [v["id"] for v in group["variants"]]
            assert 0.0 < choice["propensity"] <= 1.0
        assert out["groups"][2]["propensity"] == 1.0
        rows = _rows(client, "event_id", "request_id", "group_id", "arm_id", "propensity")
        assert {r.request_id for r in rows} == {out["request_id"]} and len(rows) == 4
        by_event = {r.event_id: r for r in rows}
        for choice in out["groups"]:
            row = by_event[choice["event_id"]]
            assert (row.group_id, row.arm_id, row.propensity) == (
                choice["group_id"],
                choice["arm_id"],
                choice["propensity"],
            )
        reward = client.post(
            "/v1/rewards",
            json={"event_id": out["groups"][1]["event_id"], "reward": 1.0},
            headers=TOKEN,
        )
        assert reward.json()["status"] == "applied"
        dup = {**body, "groups": [groups[0], groups[0]]}
        bad = client.post("/v1/decisions/grouped", headers=TOKEN, json=dup)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == [
            "body",
            "groups",
            1,
            "id",
        ]
        wide = {**body, "groups": [{"id": "t", "variants": [{"id": "v", "features": [1.0]}]}]}
        bad = client.post("/v1/decisions/grouped", headers=TOKEN, json=wide)
        assert bad.json()["detail"][0]["loc"] == ["body", "groups", 0, "variants", 0, "features"]


def test_changes_made_elsewhere_reach_the_service_through_the_change_feed(
    model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    settings = _settings(tmp_path, None, model_path, catalog_poll_s=0.1)
    with running_client(settings) as client:
        other = CatalogStore(client.app.state.service.engine)  # another worker, or the CLI
        other.upsert([ItemInput("far", np.zeros(DIM_ARM), np.full(DIM_USER, 3.0))])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = client.post(
                "/v1/decisions",
                headers=TOKEN,
                json={"context": [1.0] * DIM_USER, "retrieve": {"k": 1}},
            )
            if got.status_code == 200:
                break
            time.sleep(0.1)
        assert got.json()["candidates"] == ["far"]


def test_catalog_load_reads_csv_and_parquet(tmp_path: Path, rng: np.random.Generator) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    engine = make_engine(url)
    upgrade(engine)
    frame = pd.DataFrame(
        {
            "id": ["007", "008", "009"],
            **{f"f_{j}": rng.standard_normal(3) for j in range(3)},
            **{f"e_{j}": rng.standard_normal(3) for j in range(2)},
        }
    )
    frame.to_csv(tmp_path / "items.csv", index=False)
    frame.assign(id=["a", "b", "c"]).to_parquet(tmp_path / "items.parquet")
    runner = CliRunner()
    for name in ("items.csv", "items.parquet"):
        result = runner.invoke(cli, ["catalog", "load", str(tmp_path / name), "--url", url])
        assert result.exit_code == 0, result.output
        assert "loaded 3 items" in result.output
    store = CatalogStore(engine)
    record = store.current("007")
    assert record is not None and record.embedding is not None
    np.testing.assert_array_equal(
        record.features, frame.loc[0, ["f_0", "f_1", "f_2"]].to_numpy(float)
    )
    active, _ = store.active()
    assert sorted(r.item_id for r in active) == ["007", "008", "009", "a", "b", "c"]
    text = frame.to_csv(index=False).splitlines()
    cells = text[2].split(",")
    cells[3] = "oops"  # row 1, column f_2
    (tmp_path / "bad.csv").write_text("\n".join([*text[:2], ",".join(cells), *text[3:]]) + "\n")
    result = runner.invoke(cli, ["catalog", "load", str(tmp_path / "bad.csv"), "--url", url])
    assert result.exit_code != 0 and "f_2" in result.output and "row 1" in result.output
    # an id the API refuses is refused from a file too (the file loaded them, and no
    # request could read or retire them: serving helper, stop 53)
    for bad_id, why in [
        ("a/b", "must not contain '/'"),
        ("..", "'.' or '..'"),
        ("x" * 300, "at most"),
    ]:
        frame.assign(id=["ok-1", bad_id, "ok-2"]).to_parquet(tmp_path / "bad.parquet")
        result = runner.invoke(
            cli, ["catalog", "load", str(tmp_path / "bad.parquet"), "--url", url]
        )
        text = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and "in row 1" in text and why in text, text
    assert store.current("ok-1") is None  # nothing of the refused file loaded
    engine.dispose()


def test_a_bulk_load_is_indexed_off_the_loop_and_the_feed_asks_again_for_gaps(
    engine: sa.Engine, model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    store = CatalogStore(engine)
    first, second, _ = (
        store.upsert([ItemInput(name, np.zeros(DIM_ARM), None)])[0] for name in ("x", "y", "z")
    )
    got = store.changes(second.seq, gaps=[first.seq])
    assert [r.item_id for r in got] == ["x", "z"]
    settings = _settings(
        tmp_path,
        str(engine.url.render_as_string(hide_password=False)),
        model_path,
        catalog_poll_s=0.1,
    )
    with running_client(settings) as client:
        # more than LARGE_BATCH, as `banditops catalog load` writes them (a POST takes at
        # most 1,000): the feed brings them, and a rebuild in a thread indexes them
        big = _items(rng, 1500, prefix="bulk")
        store.upsert([ItemInput(item["id"], np.asarray(item["features"]), None) for item in big])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            service = client.app.state.service
            if service.catalog.index is not None and len(service.catalog.index) == 1503:
                break
            time.sleep(0.05)
        assert len(client.app.state.service.catalog.index) == 1503
