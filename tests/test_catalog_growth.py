"""What the catalog keeps grows with the catalog, not with traffic or history: impressions
are counted for active catalog items only and a retired item leaves the index; an item
written again exactly as it is adds no version (a nightly reload of an unchanged catalog
added a copy of every item a night), and concurrent writes of one item number their
versions in turn."""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from eventstore.retention import prune_events
from eventstore.schema import decisions, item_versions
from ops.cli import app as cli
from serving.catalog import runtime
from serving.catalog.index import CatalogIndex, IndexConfig
from serving.catalog.store import CatalogStore, ItemInput, ItemRecord, PrunedError
from serving.inputs import InputError
from serving.store.repository import write_events
from tests.serving_helpers import (
    DIM_ARM,
    DIM_USER,
    decision_row,
    policy_file,
    run_together,
    running_client,
    service_settings,
)

pytest_plugins = ["tests.serving_fixtures"]
TOKEN = {"Authorization": "Bearer tok"}


def _item(rng: np.random.Generator, item_id: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "features": rng.standard_normal(DIM_ARM).round(6).tolist(),
        "embedding": rng.standard_normal(DIM_USER).round(6).tolist(),
    }


def _inline(rng: np.random.Generator, ids: list[str]) -> dict[str, Any]:
    """A slate of all the client's own candidates (``ids``, features sent inline): every
    one of them is shown."""
    return {
        "k": len(ids),
        "context": rng.standard_normal(DIM_USER).round(6).tolist(),
        "candidates": [
            {"id": i, "features": rng.standard_normal(DIM_ARM).round(6).tolist()} for i in ids
        ],
    }


def _version_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(item_versions)).scalar())


def _settled(client: Any) -> CatalogIndex:
    """The service's catalog index once no rebuild is under way and no row is stale."""
    catalog = client.app.state.service.catalog
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rebuild = catalog._rebuild
        if (rebuild is None or rebuild.done()) and catalog.index.stale_rows == 0:
            break
        time.sleep(0.02)
    index: CatalogIndex = catalog.index
    assert index.stale_rows == 0, "the index was not compacted"
    return index


# ---------------------------------------------------------------------- impressions
def test_impressions_are_kept_for_active_catalog_items_only(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service with a catalog of 4 items shows 400 slates of 5 fresh inline ids each
    (1 in 10 also shows catalog item cat-0 inline): the impressions kept are those
    of the catalog's items (it kept one per id ever shown: 2,000 here, ~100 MB a day at
    1M fresh ids). A retired item leaves the impressions at once and the versions at the
    compaction after it (here at once: no feed read can bring an older version back),
    and comes back with the impressions the store counted."""
    monkeypatch.setattr(runtime, "FEED_OVERLAP", timedelta(0))
    model = policy_file(tmp_path / "policy.npz", seed=0)
    settings = service_settings(tmp_path, None, model_path=model, api_token="tok")
    catalog_ids = [f"cat-{i}" for i in range(4)]
    with running_client(settings) as client:
        items = [_item(rng, i) for i in catalog_ids]
        assert client.post("/v1/items", json={"items": items}, headers=TOKEN).status_code == 200
        index: CatalogIndex = client.app.state.service.catalog.index
        shown_inline = 0
        for d in range(400):
            ids = [f"inline-{d}-{j}" for j in range(5)]
            if d % 10 == 0:
                ids[0] = "cat-0"
                shown_inline += 1
            got = client.post("/v1/decisions", headers=TOKEN, json=_inline(rng, ids))
            assert got.status_code == 200, got.text
        context = np.ones(DIM_USER).tolist()
        retrieved = client.post(
            "/v1/decisions", headers=TOKEN, json={"context": context, "retrieve": {"k": 4}, "k": 4}
        )
        assert retrieved.status_code == 200, retrieved.text

        assert set(index.impressions) <= set(catalog_ids), len(index.impressions)
        # the catalog's items are still counted, as the store counts them
        assert index.impressions == {"cat-0": shown_inline + 1, "cat-1": 1, "cat-2": 1, "cat-3": 1}
        stored = client.get("/v1/items/cat-0").json()["impressions"]
        assert stored == shown_inline + 1

        for gone in ("cat-0", "cat-1"):
            assert client.delete(f"/v1/items/{gone}", headers=TOKEN).status_code == 200
            index = _settled(client)
        assert set(index.impressions) == {"cat-2", "cat-3"}
        assert set(index.versions) == {"cat-2", "cat-3"} and not index.retired_at

        body = {k: v for k, v in _item(rng, "cat-0").items() if k != "id"}
        back = client.put("/v1/items/cat-0", json=body, headers=TOKEN).json()
        assert back["version"] == 3 and back["impressions"] == stored
        assert client.app.state.service.catalog.index.impressions["cat-0"] == stored


def test_the_index_keeps_active_items_and_recent_tombstones_only() -> None:
    """1,000 active items, 1,000 new and 1,000 retired a day, compacted daily: after 8
    days the index holds the 1,000 active items (it held 8,000 versions). A tombstone
    refuses an older version of its item read late, until a compaction forgets it."""
    index = CatalogIndex(IndexConfig(method="exact", cold_slots=0), 2, 2)
    seq = 0

    def record(item: str, version: int, retired: bool = False) -> ItemRecord:
        nonlocal seq
        seq += 1
        return ItemRecord(item, version, seq, retired, np.array([1.0, float(seq)]), None)

    index.apply([record(f"d0-{i}", 1) for i in range(1000)])
    for day in range(1, 9):
        index.apply([record(f"d{day - 1}-{i}", 2, retired=True) for i in range(1000)])
        index.apply([record(f"d{day}-{i}", 1) for i in range(1000)])
        index.record_shown([f"d{day}-{i}" for i in range(0, 1000, 2)])
        late = record(f"d{day - 1}-0", 1)  # an overlapping feed read, after the retirement
        assert index.apply([late]) == 0 and f"d{day - 1}-0" not in index.item_row
        index = index.compacted(forget_retired_before=time.monotonic())
    assert len(index) == 1000
    assert set(index.versions) == set(index.item_row) and not index.retired_at
    assert set(index.impressions) <= set(index.item_row) and len(index.impressions) == 500

    index.apply([record("d8-1", 2, retired=True)])
    kept = index.compacted()  # the retirement may still be undone by a late read: kept
    assert kept.versions["d8-1"] == 2 and kept.apply([record("d8-1", 1)]) == 0
    assert "d8-1" not in kept.item_row


def test_a_read_under_way_keeps_the_tombstones_it_could_undo(tmp_path: Path) -> None:
    from eventstore.engine import make_engine
    from serving.settings import Settings

    engine = make_engine(f"sqlite:///{tmp_path / 'events.db'}")
    catalog = runtime.CatalogService(engine, Settings(workspace=tmp_path / "ws"))
    overlap = runtime.FEED_OVERLAP.total_seconds()
    with catalog._reading() as began:
        time.sleep(0.01)
        assert catalog._settled_before() == began - overlap
    assert catalog._settled_before() > began - overlap
    engine.dispose()


# ---------------------------------------------------------------------- versions
def test_an_unchanged_item_writes_no_version_and_a_changed_one_does(engine: sa.Engine) -> None:
    store = CatalogStore(engine)
    rng = np.random.default_rng(0)
    catalog = [
        ItemInput(f"item-{i}", rng.standard_normal(DIM_ARM), rng.standard_normal(DIM_USER))
        for i in range(50)
    ]
    first = store.upsert(catalog)
    assert _version_rows(engine) == 50

    again = store.upsert(catalog)  # the nightly reload of the same file
    assert _version_rows(engine) == 50  # it was 100
    assert all(r.unchanged for r in again) and not any(r.unchanged for r in first)
    assert [(r.version, r.seq) for r in again] == [(r.version, r.seq) for r in first]
    assert store.changes(max(r.seq for r in first)) == []  # nothing for the feed

    changed = list(catalog)
    changed[3] = ItemInput("item-3", catalog[3].features + 1.0, catalog[3].embedding)
    changed[7] = ItemInput("item-7", catalog[7].features, catalog[7].embedding * 2.0)
    assert store.retire("item-9") is not None  # sent again as it was: it comes back
    third = store.upsert(changed)
    assert _version_rows(engine) == 50 + 1 + 3
    assert [r.item_id for r in third if not r.unchanged] == ["item-3", "item-7", "item-9"]
    assert {r.item_id: r.version for r in third if not r.unchanged} == {
        "item-3": 2,
        "item-7": 2,
        "item-9": 3,
    }
    current = store.current("item-3")
    assert current is not None and current.version == 2
    np.testing.assert_array_equal(current.features, catalog[3].features + 1.0)
    old = store.version("item-3", 1)
    assert old is not None
    np.testing.assert_array_equal(old.features, catalog[3].features)


def test_concurrent_writes_of_one_item_number_their_versions_in_turn(engine: sa.Engine) -> None:
    """4 writers, 15 writes each of one of 3 feature vectors, the first ones racing to
    create the item: every write succeeds, the versions are 1, 2, 3, … with no two in a
    row alike, and the item's current row is the last of them (each write compared with,
    and numbered after, the one before it). On PostgreSQL the creation failed 1 to 3 of
    the writers with a unique violation (no row to lock yet: a 500 over HTTP)."""
    store = CatalogStore(engine)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def write(worker: int) -> None:
        try:
            start.wait()
            for j in range(15):
                value = float((worker + j) % 3)
                store.upsert([ItemInput("shared", np.full(DIM_ARM, value), np.ones(DIM_USER))])
        except BaseException as exc:  # reported below
            errors.append(exc)

    run_together(*(functools.partial(write, w) for w in range(4)))
    assert errors == []
    v = item_versions.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(v.version, v.features).where(v.item_id == "shared").order_by(v.version)
        ).all()
    assert [r.version for r in rows] == list(range(1, len(rows) + 1))
    assert all(bytes(a.features) != bytes(b.features) for a, b in itertools.pairwise(rows))
    current = store.current("shared")
    assert current is not None and current.version == len(rows)
    assert bytes(rows[-1].features) == current.features.tobytes()


def test_catalog_writes_and_impression_counts_never_deadlock(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """Catalog writes of items in any order, while decisions count impressions of the same
    items (a batch of decisions a transaction, as the service's writer): no transaction
    fails and every impression is counted. On PostgreSQL the catalog updated its rows in
    the order sent and the decisions in id order: deadlocks, which sent the service's
    writer to its journal as if the store were down (concurrency helper)."""
    store = CatalogStore(engine)
    ids = [f"i{j:03d}" for j in range(300)]
    store.upsert([ItemInput(i, np.zeros(DIM_ARM), np.ones(DIM_USER)) for i in ids])
    errors: list[BaseException] = []
    done = threading.Event()
    counted: list[str] = []

    def write_catalog() -> None:
        try:
            for round_ in range(1, 7):  # every item changed, the ids in descending order
                value = float(round_)
                entries = [ItemInput(i, np.full(DIM_ARM, value), np.ones(DIM_USER)) for i in ids]
                store.upsert(entries[::-1])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    def decide() -> None:
        local = np.random.default_rng(1)
        try:
            while not done.is_set():
                batch = []
                for _ in range(40):
                    row = decision_row(local)
                    picked = tuple(local.choice(ids, size=4, replace=False).tolist())
                    batch.append(
                        dataclasses.replace(row, candidate_ids=picked, count_impressions=True)
                    )
                with engine.begin() as conn:
                    write_events(conn, batch)
                counted.extend(d.arm_id for d in batch)
        except BaseException as exc:  # reported below
            errors.append(exc)

    run_together(write_catalog, decide)
    assert errors == []
    assert counted, "no decision was written while the catalog changed"
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT item_id, impressions FROM items")).all())
    assert {i: n for i, n in stored.items() if n} == dict(collections.Counter(counted))


@pytest.mark.postgres
def test_a_catalog_write_waits_its_turn_within_its_own_bound(store_url: str) -> None:
    """On the service's engine (a 0.3 s lock timeout here, 2 s by default) a catalog
    write queued behind another for longer than that waits for its turn, up to the
    store's ``lock_wait_s``: it failed after the engine's timeout (PostgreSQL
    ``LockNotAvailable``, SQLite "database is locked": a 503). The engine's own bound is
    left as it was for the next user of the connection."""
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade
    from serving.catalog.store import CATALOG_LOCK

    engine = make_engine(store_url, lock_timeout_s=0.3)
    postgres = engine.dialect.name == "postgresql"
    try:
        upgrade(engine)
        store = CatalogStore(engine, lock_wait_s=10.0)
        held = threading.Event()

        def hold() -> None:  # another write's turn, 1 s long
            with engine.begin() as conn:
                if postgres:
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CATALOG_LOCK})
                else:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                held.set()
                time.sleep(1.0)

        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(10)
        began = time.monotonic()
        (rec,) = store.upsert([ItemInput("x", np.zeros(DIM_ARM), np.ones(DIM_USER))])
        waited = time.monotonic() - began
        holder.join()
        assert rec.version == 1 and waited > 0.3
        with engine.connect() as conn:
            bound = "SHOW lock_timeout" if postgres else "PRAGMA busy_timeout"
            assert str(conn.exec_driver_sql(bound).scalar()) in ("300ms", "300")
    finally:
        engine.dispose()


def test_a_listing_never_shows_a_version_after_the_one_it_names(engine: sa.Engine) -> None:
    """Listings (the newest version, read as the service reads it) while three writers
    change items: every item listed is at most the version the listing names. On
    PostgreSQL the first page mixed in items written between reading the newest version
    and reading the rows (concurrency helper: 4 in 20 s)."""
    store = CatalogStore(engine)
    ids = [f"i{j:02d}" for j in range(40)]
    store.upsert([ItemInput(i, np.zeros(DIM_ARM), np.ones(DIM_USER)) for i in ids])
    stop = time.monotonic() + 4.0
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        local = np.random.default_rng(worker)
        try:
            while time.monotonic() < stop:
                picked = local.choice(ids, size=5, replace=False)
                value = float(local.random())
                store.upsert(
                    [ItemInput(i, np.full(DIM_ARM, value), np.ones(DIM_USER)) for i in picked]
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    for t in writers:
        t.start()
    newer: list[tuple[int, int]] = []
    listings = 0
    while time.monotonic() < stop:
        at = store.newest_seq()
        found, _ = store.page("all", 20, None, at)
        newer.extend((r.seq, at) for r in found if r.seq > at)
        listings += 1
    for t in writers:
        t.join()
    assert errors == [] and listings > 10
    assert newer == []


def test_first_writes_of_two_widths_to_an_empty_catalog_keep_one_width(
    engine: sa.Engine,
) -> None:
    """Two writers race to fill an empty catalog with items of different feature widths:
    one of them is refused by name, never both stored (each read the empty catalog's
    widths before the other wrote)."""
    store = CatalogStore(engine)
    start = threading.Barrier(2)
    outcomes: dict[int, BaseException | None] = {}

    def write(width: int) -> None:
        start.wait()
        try:
            store.upsert([ItemInput(f"w{width}-{i}", np.ones(width), None) for i in range(50)])
            outcomes[width] = None
        except BaseException as exc:  # reported below
            outcomes[width] = exc

    for _ in range(5):
        with engine.begin() as conn:
            conn.execute(sa.delete(item_versions))
            conn.execute(sa.delete(sa.table("items")))
        run_together(functools.partial(write, 3), functools.partial(write, 5))
        refused = [e for e in outcomes.values() if e is not None]
        assert len(refused) == 1, outcomes
        assert isinstance(refused[0], InputError), refused
        assert "like the rest of the catalog" in refused[0].message
        widths = {int(w) for w in store.active()[0] for w in [w.features.shape[0]]}
        assert len(widths) == 1


def test_reloads_report_unchanged_items_and_decisions_log_their_kept_versions(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """``banditops catalog load`` and ``POST /v1/items`` say how many items were
    unchanged; a decision retrieving an unchanged item logs the version it kept, which
    re-featurises it."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            **{f"f_{j}": rng.standard_normal(3).round(6) for j in range(DIM_ARM)},
            **{f"e_{j}": rng.standard_normal(3).round(6) for j in range(DIM_USER)},
        }
    )
    frame.to_csv(tmp_path / "items.csv", index=False)
    model = policy_file(tmp_path / "policy.npz", seed=0)
    settings = service_settings(
        tmp_path, url, model_path=model, api_token="tok", catalog_poll_s=0.05
    )
    runner = CliRunner()

    def load() -> str:
        result = runner.invoke(cli, ["catalog", "load", str(tmp_path / "items.csv"), "--url", url])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    with running_client(settings) as client:
        assert "loaded 3 items from items.csv (3 new versions, 0 unchanged)" in load()
        assert "loaded 3 items from items.csv (0 new versions, 3 unchanged)" in load()
        engine = client.app.state.service.engine
        assert _version_rows(engine) == 3
        items = client.get("/v1/items").json()["items"]
        body = {"items": [{k: it[k] for k in ("id", "features", "embedding")} for it in items]}
        body["items"][0]["features"][0] += 1.0
        posted = client.post("/v1/items", json=body, headers=TOKEN).json()
        assert posted["count"] == 3 and posted["unchanged"] == 2
        assert posted["versions"] == {"a": 2, "b": 1, "c": 1}
        again = client.post("/v1/items", json=body, headers=TOKEN).json()
        assert again["unchanged"] == 3 and again["versions"] == posted["versions"]
        assert again["seq"] == posted["seq"] and _version_rows(engine) == 4

        deadline = time.monotonic() + 30  # b and c reach the service by its change feed
        while len(client.app.state.service.catalog.index) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        got = client.post(
            "/v1/decisions", headers=TOKEN, json={"context": [1.0] * DIM_USER, "retrieve": {"k": 3}}
        ).json()
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(decisions.c.candidate_ids, decisions.c.candidate_versions).where(
                    decisions.c.event_id == got["event_id"]
                )
            ).one()
        logged = dict(zip(row.candidate_ids, row.candidate_versions, strict=True))
        assert logged == posted["versions"]
        for item_id, version in logged.items():
            served = client.get(f"/v1/items/{item_id}/versions/{version}").json()
            sent = next(it for it in body["items"] if it["id"] == item_id)
            assert served["features"] == sent["features"]


# ---------------------------------------------------------------------- retention
DAY = timedelta(days=1)


def _written_at(engine: sa.Engine, when: dict[int, datetime]) -> None:
    """Date the item versions ``seq`` → ``when`` (the store writes the time it is)."""
    v = item_versions.c
    with engine.begin() as conn:
        for seq, at in when.items():
            conn.execute(sa.update(item_versions).where(v.seq == seq).values(created_at=at))


def _listing(store: CatalogStore, seq: int) -> list[tuple[str, int, bool]]:
    found, more = store.page("all", 100, None, seq)
    assert not more
    return [(r.item_id, r.version, r.retired) for r in found]


def test_retention_deletes_the_versions_superseded_before_the_horizon(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """Versions superseded by one written a day before the cutoff (and before the oldest
    catalog version a kept decision retrieved from) go; every item's current version,
    retired or not, stays. The catalog at or after the horizon lists as before; before it,
    and a pruned version, are refused by name (they were answered wrongly: an item
    missing from an old listing)."""
    store = CatalogStore(engine)
    now = datetime.now(UTC)

    def write(item_id: str, value: float) -> int:
        (rec,) = store.upsert([ItemInput(item_id, np.full(DIM_ARM, value), np.ones(DIM_USER))])
        return rec.seq

    a1, b1, c1, d1 = (write(i, 0.0) for i in "abcd")
    a2 = write("a", 1.0)
    retired = store.retire("c")
    assert retired is not None
    a3, b2, a4 = write("a", 2.0), write("b", 1.0), write("a", 3.0)
    _written_at(
        engine,
        {a1: now - 100 * DAY, b1: now - 100 * DAY, c1: now - 100 * DAY, d1: now - 100 * DAY}
        | {a2: now - 60 * DAY, retired.seq: now - 60 * DAY, a3: now - 31.5 * DAY}
        | {b2: now - 30.5 * DAY, a4: now - DAY},  # after the grace (a day before the cutoff)
    )
    listings = {seq: _listing(store, seq) for seq in range(1, a4 + 1)}
    cutoff = now - 30 * DAY

    def decided(at: datetime, catalog_seq: int) -> Any:
        return dataclasses.replace(
            decision_row(rng, created_at=at), catalog_seq=catalog_seq, candidate_versions=[1] * 4
        )

    late = decided(now - 5 * DAY, a1)  # a service whose catalog feed had not moved since a1
    with engine.begin() as conn:
        write_events(conn, [decided(now - 40 * DAY, a1), late])
    held = prune_events(engine, cutoff, dry_run=True)
    assert held["decisions"] == 1 and held["item_versions"] == 0
    with engine.begin() as conn:
        conn.execute(
            sa.update(decisions).where(decisions.c.event_id == late.event_id).values(catalog_seq=a3)
        )

    counted = prune_events(engine, cutoff, dry_run=True)
    assert counted["item_versions"] == 3  # a1, a2 and c1; not b1 (b2 is within the grace)
    assert _listing(store, a1) == listings[a1]  # a dry run deletes nothing
    assert prune_events(engine, cutoff) == counted
    v = item_versions.c
    with engine.connect() as conn:
        kept = conn.execute(sa.select(v.item_id, v.version).order_by(v.seq)).all()
    assert [tuple(r) for r in kept] == [("b", 1), ("d", 1), ("c", 2), ("a", 3), ("b", 2), ("a", 4)]
    for seq in range(a3, a4 + 1):
        assert _listing(store, seq) == listings[seq]
    for seq in range(1, a3):
        with pytest.raises(PrunedError, match=rf"catalog version {seq} is before .* \(seq {a3}\)"):
            store.page("active", 10, None, seq)
    with pytest.raises(PrunedError, match=r"version 2 of item 'a' .* current version is 4"):
        store.version("a", 2)
    assert store.version("a", 3) is not None and store.version("c", 2) is not None
    assert store.version("a", 5) is None and store.version("zz", 1) is None
    assert store.changes(0)[-1].seq == a4  # the feed from the start still ends as it is

    # the horizon never moves back (a shorter window, then a longer one)
    assert prune_events(engine, now - 90 * DAY)["item_versions"] == 0
    with pytest.raises(PrunedError):
        store.page("active", 10, None, a3 - 1)


def test_a_pruned_catalog_version_is_a_410_naming_the_horizon(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Over HTTP, after ``banditops store prune``: the old listing (by seq or by a cursor
    of it) and the pruned version answer 410 with what to ask instead."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    settings = service_settings(
        tmp_path, url, model_path=policy_file(tmp_path / "p.npz", seed=0), api_token="tok"
    )
    with running_client(settings) as client:
        first = client.post(
            "/v1/items", json={"items": [_item(rng, "x"), _item(rng, "y")]}, headers=TOKEN
        ).json()
        changed = client.post("/v1/items", json={"items": [_item(rng, "x")]}, headers=TOKEN)
        old = client.get("/v1/items", params={"seq": first["seq"], "limit": 1}).json()
        assert old["next_cursor"] is not None
        engine = client.app.state.service.engine
        _written_at(
            engine,
            dict.fromkeys(range(1, changed.json()["seq"] + 1), datetime(2020, 1, 1, tzinfo=UTC)),
        )
        result = CliRunner().invoke(cli, ["store", "prune", "--older-than", "30d", "--url", url])
        assert result.exit_code == 0, result.output
        assert "1 item_versions" in " ".join(result.output.split())
        for params in ({"seq": first["seq"]}, {"cursor": old["next_cursor"]}):
            got = client.get("/v1/items", params=params)
            assert got.status_code == 410, got.text
            assert (
                f"catalog version {first['seq']} is before the catalog's horizon"
                in got.json()["detail"]
            )
        got = client.get("/v1/items/x/versions/1")
        assert got.status_code == 410
        assert "deleted by retention" in got.json()["detail"]
        assert client.get("/v1/items/x/versions/2").status_code == 200
        assert [i["id"] for i in client.get("/v1/items").json()["items"]] == ["x", "y"]


def test_index_changes_are_applied_in_chunks_that_yield_to_the_loop() -> None:
    """An HNSW index adds a vector in ~60 µs at 35,000 items: a POST of 1,000 applied at
    once held every request for ~0.4 s, and the changes replayed into a rebuilt index
    for 1.4–1.9 s (audit, stop 54). Chunks of ``APPLY_CHUNK`` yield to the loop between
    them, and a list that grows meanwhile is applied to its end."""
    import asyncio

    from serving.catalog.runtime import APPLY_CHUNK, _apply_in_chunks

    class Counting:
        def __init__(self) -> None:
            self.chunks: list[int] = []

        def apply(self, chunk: list[Any]) -> int:
            self.chunks.append(len(chunk))
            return len(chunk)

    async def run() -> tuple[int, int, Counting]:
        index, ticks = Counting(), [0]
        records: list[Any] = list(range(5 * APPLY_CHUNK + 3))

        async def other_requests() -> None:
            for _ in range(3):
                ticks[0] += 1
                records.append("late")  # a change that arrives while it applies
                await asyncio.sleep(0)

        task = asyncio.create_task(other_requests())
        applied = await _apply_in_chunks(lambda: index, records)  # type: ignore[arg-type,return-value]
        await task
        return applied, ticks[0], index

    applied, ticks, index = asyncio.run(run())
    assert ticks == 3 and max(index.chunks) <= APPLY_CHUNK
    assert applied == sum(index.chunks) == 5 * APPLY_CHUNK + 3 + 3


def test_an_item_shown_by_many_groups_of_one_request_is_one_impression(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """One anonymous grouped request of 100 one-variant groups naming a catalog item
    made it 100 impressions: no longer new, it lost its exploration floor and its
    cold-start slots (security helper, stop 55). One impression per request."""
    model = policy_file(tmp_path / "policy.npz", seed=0)
    settings = service_settings(tmp_path, None, model_path=model, api_token="tok")
    with running_client(settings) as client:
        item = _item(rng, "cat-0")
        assert client.post("/v1/items", json={"items": [item]}, headers=TOKEN).status_code == 200
        variant = {"id": "cat-0", "features": item["features"]}
        groups = [{"id": f"g{i}", "variants": [variant]} for i in range(100)]
        body = {"context": np.ones(DIM_USER).tolist(), "groups": groups}
        for _ in range(2):
            got = client.post("/v1/decisions/grouped", headers=TOKEN, json=body)
            assert got.status_code == 200, got.text
        assert client.get("/v1/items/cat-0").json()["impressions"] == 2
        assert client.app.state.service.catalog.index.impressions == {"cat-0": 2}
