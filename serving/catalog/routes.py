"""``/v1/items``: add, update, retire, list and read catalog items (writes need the token).

The listing pages through the catalog *as of one version* (``seq``, the number of its
latest change): the first page fixes it and ``next_cursor`` carries it, so a catalog that
changes while a client pages through it still yields every item exactly once, as it was.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from pydantic import AfterValidator

from serving.budget import check_magnitude, check_width
from serving.catalog.runtime import CatalogService
from serving.catalog.schemas import ItemBody, ItemIdText, ItemOut, ItemsIn, ItemsOut, ItemsPage
from serving.catalog.store import ItemInput, ItemRecord
from serving.inputs import InputError
from serving.json_body import JSONBodyRoute
from serving.routes import (
    _UNAUTHORIZED,
    _UNAVAILABLE,
    Authorized,
    OpenAPIResponses,
    service_of,
)
from serving.schemas import clean_text
from serving.service import NotFoundError
from serving.settings import Settings

router = APIRouter(tags=["catalog"], route_class=JSONBodyRoute)
ItemId = Annotated[ItemIdText, Path()]
_NOT_FOUND: OpenAPIResponses = {404: {"description": "Unknown item (or version)."}}
_PRUNED: OpenAPIResponses = {
    410: {"description": "Deleted by retention: superseded before the catalog's horizon."}
}


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


def _entry(item_id: str, body: ItemBody, loc: tuple[str | int, ...], s: Settings) -> ItemInput:
    """One item within the limits a request's candidates have: its features count as a
    candidate's (``max_arm_features``; every decision that retrieves it stores them), its
    embedding as a query (``max_context_features``)."""
    features = np.array(body.features, dtype=np.float64)
    where = (*loc, "features")
    check_width(features.shape[0], s.max_arm_features, where, "features", "max_arm_features")
    check_magnitude(features, s.max_abs_feature, where)
    embedding = None if body.embedding is None else np.array(body.embedding, dtype=np.float64)
    if embedding is not None:
        where = (*loc, "embedding")
        check_width(
            embedding.shape[0], s.max_context_features, where, "embedding", "max_context_features"
        )
        check_magnitude(embedding, s.max_abs_feature, where)
    return ItemInput(item_id, features, embedding, loc)


@router.post("/v1/items", dependencies=Authorized, responses={**_UNAUTHORIZED, **_UNAVAILABLE})
async def post_items(body: ItemsIn, request: Request) -> ItemsOut:
    """Add items, or new versions of existing ones, in one transaction (an item sent
    exactly as it is keeps its version)."""
    settings = service_of(request).settings
    entries = [_entry(it.id, it, ("body", "items", i), settings) for i, it in enumerate(body.items)]
    records = await catalog_of(request).upsert(entries)
    return ItemsOut(
        count=len(records),
        unchanged=sum(r.unchanged for r in records),
        seq=max(r.seq for r in records),
        versions={r.item_id: r.version for r in records},
    )


@router.put(
    "/v1/items/{item_id}", dependencies=Authorized, responses={**_UNAUTHORIZED, **_UNAVAILABLE}
)
async def put_item(item_id: ItemId, body: ItemBody, request: Request) -> ItemOut:
    """Add the item, or a new version of it (a retired item comes back); an item sent
    exactly as it is keeps its version."""
    settings = service_of(request).settings
    (record,) = await catalog_of(request).upsert([_entry(item_id, body, ("body",), settings)])
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


def _cursor(seq: int, last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([seq, last_id]).encode()).decode()


def _read_cursor(cursor: str) -> tuple[int, str]:
    try:
        seq, last_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if (
            isinstance(seq, int)
            and not isinstance(seq, bool)
            and 0 <= seq < 2**63
            and isinstance(last_id, str)
            and len(last_id) <= 256
        ):
            return seq, clean_text(last_id)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, RecursionError):
        pass
    raise InputError(("query", "cursor"), "cursor must be a next_cursor of this listing.", cursor)


@router.get("/v1/items", responses=_PRUNED)
async def list_items(
    request: Request,
    status: Annotated[
        Literal["active", "retired", "all"], Query(description="Which items to list.")
    ] = "active",
    limit: Annotated[int, Query(ge=1, le=1000, description="Items per page.")] = 100,
    cursor: Annotated[
        str | None,
        Query(max_length=2048, description="next_cursor of the previous page."),
        AfterValidator(clean_text),
    ] = None,
    seq: Annotated[
        int | None,
        Query(ge=0, le=2**63 - 1, description="Catalog version to list (default: the newest)."),
    ] = None,
) -> ItemsPage:
    """A page of catalog items, by id, as of one catalog version."""
    after = None
    if cursor is not None:
        at, after = _read_cursor(cursor)
        if seq is not None and seq != at:
            raise InputError(
                ("query", "seq"), f"seq {seq} contradicts the cursor's version {at}.", seq
            )
        seq = at
    records, more, version = await catalog_of(request).page(status, limit, after, seq)
    return ItemsPage(
        items=[_out(r) for r in records],
        seq=version,
        next_cursor=_cursor(version, records[-1].item_id) if more else None,
    )


@router.get("/v1/items/{item_id}", responses=_NOT_FOUND)
async def get_item(item_id: ItemId, request: Request) -> ItemOut:
    """The item's current version."""
    record = await catalog_of(request).current(item_id)
    if record is None:
        raise NotFoundError(f"no item {item_id!r}.")
    return _out(record)


@router.get("/v1/items/{item_id}/versions/{version}", responses={**_NOT_FOUND, **_PRUNED})
async def get_item_version(
    item_id: ItemId, version: Annotated[int, Path(ge=1, le=2**31 - 1)], request: Request
) -> ItemOut:
    """One version of the item, as it was served (re-featurise logged decisions)."""
    record = await catalog_of(request).version(item_id, version)
    if record is None:
        raise NotFoundError(f"no version {version} of item {item_id!r}.")
    return _out(record)
