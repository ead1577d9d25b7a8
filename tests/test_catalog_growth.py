"""What the catalog keeps grows with the catalog, not with traffic or history: impressions
are counted for active catalog items only and a retired item leaves the index."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.catalog import runtime
from serving.catalog.index import CatalogIndex, IndexConfig
from serving.catalog.store import ItemRecord
from tests.serving_helpers import DIM_ARM, DIM_USER, policy_file, running_client, service_settings

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
    compaction after it (here at once: no feed read can bring an older version back)."""
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
            got = client.post("/v1/decisions", json=_inline(rng, ids))
            assert got.status_code == 200, got.text
        context = np.ones(DIM_USER).tolist()
        retrieved = client.post(
            "/v1/decisions", json={"context": context, "retrieve": {"k": 4}, "k": 4}
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
