"""``GET /v1/items``: pages of the catalog by id, filtered by status, as of one version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.serving_helpers import DIM_ARM, policy_file, running_client, service_settings

pytest_plugins = ["tests.serving_fixtures"]
TOKEN = {"Authorization": "Bearer tok"}


def _all_pages(client: Any, **params: Any) -> tuple[list[dict[str, Any]], set[int]]:
    """Every page of a listing: the items in order and the versions the pages showed."""
    got: list[dict[str, Any]] = []
    versions: set[int] = set()
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/items", params=query)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= params.get("limit", 100)
        got += body["items"]
        versions.add(body["seq"])
        cursor = body["next_cursor"]
        if cursor is None:
            return got, versions


def test_items_are_listed_by_status_in_pages_of_one_catalog_version(
    store_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    model = policy_file(tmp_path / "policy.npz")
    settings = service_settings(tmp_path, store_url, model_path=model, api_token="tok")
    with running_client(settings) as client:
        empty = client.get("/v1/items").json()
        assert empty == {"items": [], "seq": 0, "next_cursor": None}
        items = [
            {"id": f"item-{i:02d}", "features": rng.standard_normal(DIM_ARM).round(6).tolist()}
            for i in rng.permutation(25)
        ]
        client.post("/v1/items", json={"items": items}, headers=TOKEN)
        retired = {"item-03", "item-11", "item-12", "item-20", "item-24"}
        for item_id in sorted(retired):
            assert client.delete(f"/v1/items/{item_id}", headers=TOKEN).status_code == 200
        everything = sorted(it["id"] for it in items)

        active, versions = _all_pages(client, limit=7)
        assert [it["id"] for it in active] == [i for i in everything if i not in retired]
        assert all(not it["retired"] for it in active) and len(versions) == 1
        by_id = {it["id"]: it for it in items}
        assert all(it["features"] == by_id[it["id"]]["features"] for it in active)
        gone, _ = _all_pages(client, status="retired", limit=2)
        assert [it["id"] for it in gone] == sorted(retired) and all(it["retired"] for it in gone)
        both, _ = _all_pages(client, status="all", limit=1000)
        assert [it["id"] for it in both] == everything

        # the catalog changes while a client pages through it: the pages keep the version
        first = client.get("/v1/items", params={"limit": 5}).json()
        version = first["seq"]
        client.put("/v1/items/item-18", json={"features": [9.0] * DIM_ARM}, headers=TOKEN)
        client.put("/v1/items/item-99", json={"features": [1.0] * DIM_ARM}, headers=TOKEN)
        client.delete("/v1/items/item-15", headers=TOKEN)
        cursor, rest = first["next_cursor"], []
        while cursor is not None:
            page = client.get("/v1/items", params={"limit": 5, "cursor": cursor}).json()
            assert page["seq"] == version
            rest += page["items"]
            cursor = page["next_cursor"]
        assert [it["id"] for it in first["items"] + rest] == [it["id"] for it in active]
        old = next(it for it in rest if it["id"] == "item-18")
        assert old["features"] == by_id["item-18"]["features"] and old["version"] == 1
        now, versions = _all_pages(client, limit=50)
        assert versions == {version + 3}
        ids = [it["id"] for it in now]
        assert "item-15" not in ids and ids[-1] == "item-99"
        assert next(it for it in now if it["id"] == "item-18")["features"] == [9.0] * DIM_ARM
        # an older version on request: before the five retirements every item was active
        before, _ = _all_pages(client, seq=version - 5, limit=1000)
        assert [it["id"] for it in before] == everything and not any(it["retired"] for it in before)

        assert client.get("/v1/items/item-00").json()["id"] == "item-00"
        missing = client.get("/v1/items/nope")
        assert missing.status_code == 404 and "nope" in missing.json()["detail"]
        for params, loc in (
            ({"cursor": "not-a-cursor"}, ["query", "cursor"]),
            ({"cursor": first["next_cursor"], "seq": 1}, ["query", "seq"]),
            ({"limit": 0}, ["query", "limit"]),
            ({"limit": 1001}, ["query", "limit"]),
            ({"status": "gone"}, ["query", "status"]),
            # a version not written yet is no snapshot (security helper, stop 55)
            ({"seq": version + 1000}, ["query", "seq"]),
        ):
            bad = client.get("/v1/items", params=params)
            assert bad.status_code == 422, (params, bad.text)
            assert bad.json()["detail"][0]["loc"] == loc
