"""The in-memory catalog of a serving process: current versions of the active items, a
retriever over their vectors, and their impressions.

Rows are append-only: a new version of an item appends a row and switches the old one
off, a retirement switches it off. :meth:`CatalogIndex.apply` is idempotent (a version
not newer than the one held is ignored), so change feeds may overlap.
:meth:`CatalogIndex.compacted` rebuilds from the active rows alone (run off the event
loop when too many rows are off, or when the catalog outgrew the exact retriever).

What the index keeps grows with the active catalog, not with its history or its traffic:
impressions are counted for active items only (a decision among the client's own
candidates shows ids the catalog does not hold: counting them kept an entry per id ever
shown, 5,000 for 5,000 decisions among fresh ids), a retired item's count is dropped, and
its version is kept only as a *tombstone* that refuses an older version of it arriving
late (an overlapping feed read) until the compaction after that can no longer happen
(``forget_retired_before``: 1,000 items retired a day made 8,000 entries after 8 days).

New items — fewer than ``new_after`` impressions — are also kept in a small exact index,
from which :meth:`CatalogIndex.retrieve` can add the best-scoring new items to the
retrieved candidates (``cold_slots``), so a new item can be shown before its score would
reach the top K; the decision then gives them an exploration floor
(:class:`bandit_core.coldstart.ColdStartFloor`). Candidate sets stay a deterministic
function of the query and the catalog state, and are logged, so propensities remain
those of the policy given the set.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core import Candidates
from serving.catalog.retrieval import ExactRetriever, HnswRetriever, make_retriever
from serving.catalog.store import ItemRecord
from serving.settings import Settings

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
#: The service settings' declared defaults: the config's defaults are theirs.
_DEFAULTS: dict[str, Any] = {name: f.default for name, f in Settings.model_fields.items()}


@dataclass(frozen=True)
class IndexConfig:
    """How the index retrieves and treats new items (from the service settings)."""

    method: str = _DEFAULTS["catalog_index"]  # "auto", "exact" or "hnsw"
    exact_max: int = _DEFAULTS["catalog_exact_max"]
    hnsw_m: int = _DEFAULTS["catalog_hnsw_m"]
    hnsw_ef_construction: int = _DEFAULTS["catalog_hnsw_ef_construction"]
    hnsw_ef_search: int = _DEFAULTS["catalog_hnsw_ef_search"]
    new_after: int = _DEFAULTS["new_item_impressions"]
    cold_slots: int = _DEFAULTS["new_item_slots"]
    cold_exact_max: int = 10_000
    rebuild_fraction: float = _DEFAULTS["catalog_rebuild_fraction"]

    def method_for(self, n_items: int) -> str:
        if self.method != "auto":
            return self.method
        return "exact" if n_items <= self.exact_max else "hnsw"


@dataclass(frozen=True)
class Retrieved:
    """What retrieval produced for one request (all of it is logged)."""

    candidates: Candidates
    versions: tuple[int, ...]
    new_ids: frozenset[str]
    catalog_seq: int
    summary: dict[str, Any]


class _Growing:
    """Append-only float64 rows (capacity doubles)."""

    def __init__(self, dim: int) -> None:
        self._data = np.zeros((0, dim))
        self.size = 0

    def append(self, rows: FloatArray) -> None:
        needed = self.size + rows.shape[0]
        if needed > self._data.shape[0]:
            grown = np.zeros((max(needed, 2 * self._data.shape[0], 1024), self._data.shape[1]))
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : needed] = rows
        self.size = needed

    def take(self, rows: IntArray) -> FloatArray:
        out: FloatArray = self._data[rows]
        return out


@dataclass
class _Rows:
    """Row storage shared by the index and its retrievers' numbering."""

    features: _Growing
    ids: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)


class CatalogIndex:
    """Active items, a retriever over their vectors, impressions and new items.

    Parameters
    ----------
    config : IndexConfig
    dim_features, dim_vector : int
        Feature width and retrieval width of the catalog.
    n_expected : int
        Items expected at build time (chooses exact or HNSW under ``method="auto"``).
    impressions : Counter, optional
        Shared impression counts (kept across compactions).
    """

    def __init__(
        self,
        config: IndexConfig,
        dim_features: int,
        dim_vector: int,
        n_expected: int = 0,
        impressions: Counter[str] | None = None,
    ) -> None:
        self.config = config
        self.dim_features = dim_features
        self.dim_vector = dim_vector
        self.retriever: ExactRetriever | HnswRetriever = make_retriever(
            config.method_for(n_expected),
            dim_vector,
            config.hnsw_m,
            config.hnsw_ef_construction,
            config.hnsw_ef_search,
        )
        self.cold = ExactRetriever(dim_vector)
        self._rows = _Rows(_Growing(dim_features))
        self._vectors = _Growing(dim_vector)
        self._cold_rows: list[int] = []  # cold-index row → catalog row
        self._cold_of: dict[str, int] = {}  # item → its cold-index row
        self.item_row: dict[str, int] = {}  # active item → its current row
        self.versions: dict[str, int] = {}  # active or tombstoned item → newest version
        self.retired_at: dict[str, float] = {}  # tombstone → when applied (time.monotonic)
        #: active item → times shown (a retired item's count is dropped)
        self.impressions: Counter[str] = impressions if impressions is not None else Counter()
        self.seq = 0

    # ------------------------------------------------------------------ state
    @property
    def method(self) -> str:
        return self.retriever.method

    def __len__(self) -> int:
        return len(self.item_row)

    @property
    def stale_rows(self) -> int:
        return self.retriever.n_rows - self.retriever.n_active

    def needs_rebuild(self) -> bool:
        """Too many rows switched off, or the catalog outgrew its retrieval method."""
        rows = self.retriever.n_rows
        if rows and self.stale_rows > self.config.rebuild_fraction * rows:
            return True
        return self.config.method_for(len(self)) != self.method

    def is_new(self, item_id: str) -> bool:
        return item_id in self.item_row and self.impressions[item_id] < self.config.new_after

    # ------------------------------------------------------------------ changes
    def apply(self, records: Iterable[ItemRecord]) -> int:
        """Apply item versions in order; returns how many were newer than those held.

        A retirement drops the item's impressions and leaves a tombstone in
        :attr:`versions` (see :meth:`snapshot`); an item that comes back starts from the
        impressions its record carries (the store's count).
        """
        pending: list[ItemRecord] = []  # appended together (one retriever call)
        applied = 0
        now = time.monotonic()
        for rec in records:
            self.seq = max(self.seq, rec.seq)
            if rec.version <= self.versions.get(rec.item_id, 0):
                continue
            applied += 1
            if self.item_row.get(rec.item_id, -1) >= len(self._rows.ids):
                self._flush(pending)  # a second version of an item still pending
            self.versions[rec.item_id] = rec.version
            self._switch_off(rec.item_id)
            if rec.retired:
                self.impressions.pop(rec.item_id, None)
                self.retired_at[rec.item_id] = now
                continue
            self.retired_at.pop(rec.item_id, None)
            if rec.impressions:
                self.impressions[rec.item_id] = max(self.impressions[rec.item_id], rec.impressions)
            self.item_row[rec.item_id] = len(self._rows.ids) + len(pending)
            pending.append(rec)
        self._flush(pending)
        return applied

    def _flush(self, pending: list[ItemRecord]) -> None:
        if not pending:
            return
        self._rows.versions.extend(r.version for r in pending)
        self._append(
            [r.item_id for r in pending],
            np.vstack([r.features for r in pending]),
            np.vstack([r.vector for r in pending]),
        )
        pending.clear()

    def _switch_off(self, item_id: str) -> None:
        row = self.item_row.pop(item_id, None)
        if row is not None:
            self.retriever.deactivate(np.array([row]))
        cold = self._cold_of.pop(item_id, None)
        if cold is not None:
            self.cold.deactivate(np.array([cold]))

    def _append(self, ids: list[str], features: FloatArray, vectors: FloatArray) -> None:
        first = len(self._rows.ids)
        self._rows.ids.extend(ids)
        self._rows.features.append(features)
        self._vectors.append(vectors)
        self.retriever.add(vectors)
        new = [i for i, item in enumerate(ids) if self.impressions[item] < self.config.new_after]
        if new:
            for i in new:
                self._cold_of[ids[i]] = len(self._cold_rows)
                self._cold_rows.append(first + i)
            self.cold.add(vectors[new])

    def record_shown(self, item_ids: Iterable[str]) -> None:
        """Count impressions of the active items among ``item_ids`` (the rest are not
        the catalog's: ids a client sent with its own features); an item leaves the new
        set at ``new_after``."""
        for item in item_ids:
            if item not in self.item_row:
                continue
            self.impressions[item] += 1
            if self.impressions[item] >= self.config.new_after:
                cold = self._cold_of.pop(item, None)
                if cold is not None:
                    self.cold.deactivate(np.array([cold]))

    def snapshot(self, forget_retired_before: float = -math.inf) -> Compaction:
        """The active rows, copied (cheap; on the loop): input of :meth:`Compaction.build`.

        Parameters
        ----------
        forget_retired_before : float
            Tombstones of retirements applied before this ``time.monotonic()`` are left
            out: the caller knows no read still under way, or yet to come, can hand over
            an older version of those items (which the tombstone would refuse). Default:
            keep every tombstone.
        """
        rows = np.fromiter(self.item_row.values(), dtype=np.intp, count=len(self.item_row))
        rows.sort()
        retired_at = {i: t for i, t in self.retired_at.items() if t >= forget_retired_before}
        return Compaction(
            index=self,
            ids=[self._rows.ids[r] for r in rows],
            versions=[self._rows.versions[r] for r in rows],
            features=self._rows.features.take(rows),
            vectors=self._vectors.take(rows),
            all_versions={
                item: v
                for item, v in self.versions.items()
                if item in self.item_row or item in retired_at
            },
            retired_at=retired_at,
            seq=self.seq,
        )

    def compacted(self, forget_retired_before: float = -math.inf) -> CatalogIndex:
        """A new index holding only the active rows (same items, versions, impressions)
        and the tombstones applied since ``forget_retired_before`` (:meth:`snapshot`)."""
        return self.snapshot(forget_retired_before).build()

    # ------------------------------------------------------------------ retrieval
    def retrieve(self, query: FloatArray, k: int) -> Retrieved:
        """The top-``k`` active items for ``query`` (retrieval width), plus up to
        ``cold_slots`` of the best-scoring new items in place of the last ones."""
        cfg = self.config
        rows, _ = self.retriever.search(query, k)
        inject: list[int] = []
        if cfg.cold_slots and 0 < self.cold.n_active <= cfg.cold_exact_max:
            cold_rows, _ = self.cold.search(query, cfg.cold_slots)
            head = rows[: max(0, k - cfg.cold_slots)].tolist()  # kept whatever the new items
            inject = [r for r in (self._cold_rows[c] for c in cold_rows) if r not in head]
            if inject:
                # the rest of the retrieved rows, without the injected ones, then those:
                # every candidate once
                rest = [r for r in rows[len(head) :].tolist() if r not in inject]
                fill = rest[: max(0, k - len(head) - len(inject))]
                rows = np.array(head + fill + inject, dtype=np.intp)[:k]
        ids = tuple(self._rows.ids[r] for r in rows)
        new_ids = frozenset(i for i in ids if self.impressions[i] < cfg.new_after)
        return Retrieved(
            candidates=Candidates(ids, self._rows.features.take(rows)),
            versions=tuple(self._rows.versions[r] for r in rows),
            new_ids=new_ids,
            catalog_seq=self.seq,
            summary={
                "method": self.method,
                "k": int(k),
                "n_items": len(self),
                "cold_injected": len(inject),
                "n_new": len(new_ids),
            },
        )


@dataclass(frozen=True)
class Compaction:
    """Active rows of an index, copied, to rebuild from (off the event loop)."""

    index: CatalogIndex
    ids: list[str]
    versions: list[int]
    features: FloatArray
    vectors: FloatArray
    all_versions: dict[str, int]
    retired_at: dict[str, float]
    seq: int

    def build(self, extra: int = 0) -> CatalogIndex:
        """The new index (``extra``: items about to be added, for the method choice)."""
        old = self.index
        out = CatalogIndex(
            old.config, old.dim_features, old.dim_vector, len(self.ids) + extra, old.impressions
        )
        out.versions = dict(self.all_versions)
        out.retired_at = dict(self.retired_at)
        out.item_row = {item: i for i, item in enumerate(self.ids)}
        out._rows.versions = list(self.versions)
        if self.ids:
            out._append(self.ids, self.features, self.vectors)
        out.seq = self.seq
        return out


def build_index(
    config: IndexConfig, records: list[ItemRecord], seq: int, widths: tuple[int, int] | None
) -> CatalogIndex | None:
    """An index of ``records`` (None for an empty catalog)."""
    if widths is None:
        return None
    index = CatalogIndex(config, widths[0], widths[1], len(records))
    index.apply(records)
    index.seq = max(index.seq, seq)
    return index
