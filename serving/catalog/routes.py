"""``/v1/items``: add, update, retire and read catalog items (writes need the token)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Request

from serving.catalog.runtime import CatalogService
from serving.catalog.schemas import ItemBody, ItemOut, ItemsIn, ItemsOut
from serving.catalog.store import ItemInput, ItemRecord
from serving.routes import _UNAUTHORIZED, _UNAVAILABLE, Authorized, service_of
from serving.service import NotFoundError

router = APIRouter(tags=["catalog"])
ItemId = Annotated[str, Path(min_length=1, max_length=256)]
_NOT_FOUND = {404: {"description": "Unknown item (or version)."}}


def catalog_of(request: Request) -> CatalogService:
    return service_of(request).catalog


def _out(record: ItemRecord) -> ItemOut:
    return ItemOut(
        id=record.item_id,
        version=record.version,
        seq=record.seq,
        retired=record.retired,
        features=record.features.tolist(),
        embedding=None if record.embedding is None else record.embedding.tolist(),
        impressions=record.impressions,
        updated_at=record.updated_at,
    )


def _entry(item_id: str, body: ItemBody, loc: tuple[str | int, ...]) -> ItemInput:
    embedding = None if body.embedding is None else np.array(body.embedding, dtype=np.float64)
    return ItemInput(item_id, np.array(body.features, dtype=np.float64), embedding, loc)


@router.post("/v1/items", dependencies=Authorized, responses={**_UNAUTHORIZED, **_UNAVAILABLE})
async def post_items(body: ItemsIn, request: Request) -> ItemsOut:
    """Add items, or new versions of existing ones, in one transaction."""
    entries = [_entry(it.id, it, ("body", "items", i)) for i, it in enumerate(body.items)]
    records = await catalog_of(request).upsert(entries)
    return ItemsOut(
        count=len(records),
        seq=max(r.seq for r in records),
        versions={r.item_id: r.version for r in records},
    )


@router.put(
    "/v1/items/{item_id}", dependencies=Authorized, responses={**_UNAUTHORIZED, **_UNAVAILABLE}
)
async def put_item(item_id: ItemId, body: ItemBody, request: Request) -> ItemOut:
    """Add the item, or a new version of it (a retired item comes back)."""
    (record,) = await catalog_of(request).upsert([_entry(item_id, body, ("body",))])
    return _out(record)


@router.delete(
    "/v1/items/{item_id}", dependencies=Authorized, responses={**_UNAUTHORIZED, **_NOT_FOUND}
)
async def delete_item(item_id: ItemId, request: Request) -> ItemOut:
    """Retire the item: it is never retrieved or served again (its versions are kept)."""
    record = await catalog_of(request).retire(item_id)
    if record is None:
        raise NotFoundError(f"no item {item_id!r}.")
    return _out(record)


@router.get("/v1/items/{item_id}", responses=_NOT_FOUND)
async def get_item(item_id: ItemId, request: Request) -> ItemOut:
    """The item's current version."""
    record = await catalog_of(request).current(item_id)
    if record is None:
        raise NotFoundError(f"no item {item_id!r}.")
    return _out(record)


@router.get("/v1/items/{item_id}/versions/{version}", responses=_NOT_FOUND)
async def get_item_version(
    item_id: ItemId, version: Annotated[int, Path(ge=1)], request: Request
) -> ItemOut:
    """One version of the item, as it was served (re-featurise logged decisions)."""
    record = await catalog_of(request).version(item_id, version)
    if record is None:
        raise NotFoundError(f"no version {version} of item {item_id!r}.")
    return _out(record)
