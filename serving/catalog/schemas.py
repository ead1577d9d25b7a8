"""Bodies of the item-catalog endpoints (``/v1/items``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from serving.schemas import Floats, Identifier, _Strict


class ItemBody(_Strict):
    """An item's features and, optionally, its retrieval embedding."""

    features: Floats = Field(min_length=1, description="Feature vector.")
    embedding: Floats | None = Field(
        default=None, min_length=1, description="Retrieval vector (default: the features)."
    )


def addressable(value: str) -> str:
    """An item id ``/v1/items/{id}`` can name: no ``/`` (a path separator), not ``.`` or
    ``..`` (a dot segment, which clients — curl, browsers, httpx — remove from a URL before
    sending it), and no U+FFFD (what an undecodable ``%``-escape in a path becomes: two
    bad paths would name one item)."""
    if "/" in value:
        raise ValueError("must not contain '/' (the item could not be read or retired by id)")
    if value in (".", ".."):
        raise ValueError(
            "must not be '.' or '..' (clients drop such a URL segment: the item could not "
            "be read or retired by id)"
        )
    if "\ufffd" in value:
        raise ValueError("must be valid UTF-8 (U+FFFD stands for bytes that were not)")
    return value


#: A catalog item's id, in a body or a path.
ItemIdText = Annotated[Identifier, AfterValidator(addressable)]


class ItemIn(ItemBody):
    id: ItemIdText


#: Most items one ``POST /v1/items`` takes: a request's work is done on the event loop,
#: and a 1 MiB body of 21,500 items held every other request for 1.8 s (audit, stop 54);
#: 1,000 take about 20 ms. A whole catalog goes through ``banditops catalog load``.
MAX_ITEMS_PER_REQUEST = 1000


class ItemsIn(_Strict):
    items: Annotated[list[ItemIn], Field(fail_fast=True)] = Field(
        min_length=1,
        max_length=MAX_ITEMS_PER_REQUEST,
        description="Items to add or update (at most 1,000 a request).",
    )


class ItemOut(BaseModel):
    id: str
    version: int
    seq: int = Field(description="Catalog change number of this version.")
    retired: bool
    features: list[float]
    embedding: list[float] | None
    impressions: int
    updated_at: datetime | None


class ItemsOut(BaseModel):
    count: int = Field(description="Items in the request.")
    unchanged: int = Field(
        description="Items sent exactly as they already were (active, same features and "
        "embedding): no version written, they keep theirs."
    )
    seq: int = Field(
        description="Catalog change number of the newest of these items' versions (the "
        "catalog version from which all of them are as sent)."
    )
    versions: dict[str, int] = Field(description="Each item's version, new or kept.")


class ItemsPage(BaseModel):
    items: list[ItemOut] = Field(description="Items by id, each as at the catalog version.")
    seq: int = Field(description="Catalog version (change number) the page shows.")
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` for the next page (same version); null at the end."
    )
