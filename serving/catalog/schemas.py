"""Bodies of the item-catalog endpoints (``/v1/items``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from serving.schemas import FiniteFloat, Identifier, _Strict


class ItemBody(_Strict):
    """An item's features and, optionally, its retrieval embedding."""

    features: list[FiniteFloat] = Field(min_length=1, description="Feature vector.")
    embedding: list[FiniteFloat] | None = Field(
        default=None, min_length=1, description="Retrieval vector (default: the features)."
    )


class ItemIn(ItemBody):
    id: Identifier


class ItemsIn(_Strict):
    items: list[ItemIn] = Field(min_length=1, description="Items to add or update.")


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
    count: int
    seq: int = Field(description="Catalog change number of the last version written.")
    versions: dict[str, int]


class ItemsPage(BaseModel):
    items: list[ItemOut] = Field(description="Items by id, each as at the catalog version.")
    seq: int = Field(description="Catalog version (change number) the page shows.")
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` for the next page (same version); null at the end."
    )
