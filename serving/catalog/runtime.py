"""The catalog of a serving process: the store, the in-memory index, and keeping the
second in step with the first.

Writes through the API go to the store first and are applied to this process's index as
soon as they commit; a timer reads the store's change feed every ``catalog_poll_s``
seconds for changes made elsewhere (other workers, ``banditops catalog load``).

The feed is read by ``seq``. PostgreSQL hands out sequence numbers at insert time, not at
commit, so a version may become visible after a higher one was read: every number skipped
by what was read is remembered as a *gap* for ``FEED_OVERLAP`` and asked for again
(``seq IN gaps``) until it shows up or expires (a rolled-back insert leaves a gap that
never fills). Applying is idempotent, so nothing is applied twice.

The index is used and changed on the event loop only. Small batches are applied there;
a large one (a bulk load), too many switched-off rows, or a catalog that outgrew exact
retrieval rebuilds the index in a thread from a copy of its active rows, and the changes
applied meanwhile are applied to the new index before it is swapped in.

A retired item's tombstone (what refuses an older version of it read late) is left out of
a rebuild once no read can hand such a version over: a version read before the
retirement comes from a read under way then (a feed read, or the write of this
process), or from a gap asked for again, for at most ``FEED_OVERLAP`` after it was
noticed (:meth:`CatalogService._settled_before`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Engine

from serving.catalog.index import CatalogIndex, Compaction, IndexConfig, Retrieved, build_index
from serving.catalog.store import CatalogStore, ItemInput, ItemRecord
from serving.inputs import InputError
from serving.settings import Settings
from serving.store.outage_log import OutageLog
from serving.store.reads import read_within

R = TypeVar("R")

log = logging.getLogger(__name__)

#: How long a skipped ``seq`` is asked for again (versions committed out of order).
FEED_OVERLAP = timedelta(seconds=60)
#: Most gaps remembered (beyond it the oldest are dropped).
MAX_GAPS = 10_000
#: Batches larger than this are applied by a rebuild in a thread, off the event loop.
LARGE_BATCH = 1000
#: Records applied to the index between two yields to the event loop: an HNSW index
#: adds a vector in ~60 µs at 35,000 items, so a POST of 1,000 held every request for
#: ~0.4 s, and the changes replayed into a rebuilt index 1.4–1.9 s (audit, stop 54); at
#: 16 a chunk is ~5 ms (max decision latency during 100 posts of 1,000: 0.22 s).
APPLY_CHUNK = 16


def index_config(settings: Settings) -> IndexConfig:
    return IndexConfig(
        method=settings.catalog_index,
        exact_max=settings.catalog_exact_max,
        hnsw_m=settings.catalog_hnsw_m,
        hnsw_ef_construction=settings.catalog_hnsw_ef_construction,
        hnsw_ef_search=settings.catalog_hnsw_ef_search,
        new_after=settings.new_item_impressions,
        cold_slots=settings.new_item_slots,
        rebuild_fraction=settings.catalog_rebuild_fraction,
    )


class CatalogService:
    """Item writes, change-feed polling and retrieval for the decision service."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.store = CatalogStore(engine, lock_wait_s=settings.store_deadline_s)
        self.settings = settings
        self.config = index_config(settings)
        self.index: CatalogIndex | None = None
        self._top = 0  # highest seq read
        self._gaps: dict[int, float] = {}  # skipped seq → when it was noticed
        self._during_rebuild: list[ItemRecord] | None = None
        self._reads: dict[object, float] = {}  # read under way → when it began (monotonic)
        self._timer: asyncio.Task[None] | None = None
        self._rebuild: asyncio.Task[None] | None = None
        self._outage = OutageLog(log, "reading the catalog change feed")

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        records, seq = await asyncio.to_thread(self.store.active)
        widths = await asyncio.to_thread(self.store.widths)
        self.index = await asyncio.to_thread(build_index, self.config, records, seq, widths)
        self._top = seq
        self._timer = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        for task in (self._timer, self._rebuild):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.catalog_poll_s)
            try:
                await self.refresh()
            except Exception as exc:  # an outage: one line as it begins, one as it ends
                self._outage.failed(exc)
            else:
                self._outage.succeeded()

    async def refresh(self) -> int:
        """Apply the store's changes since the last read (and any gap that filled)."""
        with self._reading() as began:
            expired = began - FEED_OVERLAP.total_seconds()
            self._gaps = {g: t for g, t in self._gaps.items() if t >= expired}
            records = await asyncio.to_thread(self.store.changes, self._top, sorted(self._gaps))
            return await self._apply(records)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[float]:
        """Mark a read whose versions are applied at its end (yields when it began)."""
        token, began = object(), time.monotonic()
        self._reads[token] = began
        try:
            yield began
        finally:
            del self._reads[token]

    def _settled_before(self) -> float:
        """The ``time.monotonic()`` before which an applied retirement is final.

        An older version of a retired item reaches :meth:`_apply` only from a read that
        began before the retirement was applied, or as a gap: a ``seq`` noticed missing
        before then (later ones are above the retirement's), asked for again by the feed
        reads that begin within ``FEED_OVERLAP`` of it. So a retirement applied
        ``FEED_OVERLAP`` before the oldest read under way (or now) is final.
        """
        return min([time.monotonic(), *self._reads.values()]) - FEED_OVERLAP.total_seconds()

    def _track(self, records: Sequence[ItemRecord]) -> None:
        """Record the seqs read and the ones skipped (gaps)."""
        now = time.monotonic()
        for rec in sorted(records, key=lambda r: r.seq):
            self._gaps.pop(rec.seq, None)
            if rec.seq > self._top:
                skipped = range(max(self._top + 1, rec.seq - MAX_GAPS), rec.seq)
                self._gaps.update(dict.fromkeys(skipped, now))
                self._top = rec.seq
        while len(self._gaps) > MAX_GAPS:
            self._gaps.pop(min(self._gaps))

    # ------------------------------------------------------------------ writes
    async def upsert(self, entries: Sequence[ItemInput]) -> list[ItemRecord]:
        what = "store the items (they may still be stored: the catalog poll then serves them)"
        with self._reading():
            records = await self._read(what, self.store.upsert, entries)
            # an unchanged item is at a version this process has (or its feed brings):
            # a reload of an unchanged catalog applies nothing, rebuilds nothing
            await self._apply([r for r in records if not r.unchanged])
        return records

    async def retire(self, item_id: str) -> ItemRecord | None:
        what = f"retire item {item_id!r} (it may still be retired)"
        with self._reading():
            record = await self._read(what, self.store.retire, item_id)
            if record is not None:
                await self._apply([record])
        return record

    async def _apply(self, records: Sequence[ItemRecord]) -> int:
        """Apply on the loop, :data:`APPLY_CHUNK` records at a time (or hand a large batch
        to a rebuild); returns how many versions were newer than those held (those handed
        over count as new)."""
        if not records:
            return 0
        self._track(records)
        if self._during_rebuild is not None:
            self._during_rebuild.extend(records)
        if self.index is None:
            first = records[0]
            self.index = CatalogIndex(
                self.config, first.features.shape[0], first.vector.shape[0], len(records)
            )
        rebuilding = self._rebuild is not None and not self._rebuild.done()
        if len(records) > LARGE_BATCH and not rebuilding:
            self._rebuild = asyncio.create_task(self._rebuild_with(list(records)))
            return len(records)
        applied = await _apply_in_chunks(lambda: self.index, records)
        rebuilding = self._rebuild is not None and not self._rebuild.done()  # it yielded
        if self.index is not None and self.index.needs_rebuild() and not rebuilding:
            self._rebuild = asyncio.create_task(self._rebuild_with([]))
        return applied

    async def _rebuild_with(self, records: list[ItemRecord]) -> None:
        """A new index from the active rows plus ``records``, built in a thread."""
        if self.index is None:
            return
        snapshot = self.index.snapshot(self._settled_before())
        self._during_rebuild = []
        try:
            built = await asyncio.to_thread(_build, snapshot, records)
            # the changes applied to the old index meanwhile; more may come while this
            # yields (the same list grows), and none after its last chunk
            await _apply_in_chunks(lambda: built, self._during_rebuild)
            self.index = built
        finally:
            self._during_rebuild = None
        log.info("catalog index rebuilt: %d items, %s", len(built), built.method)

    # ------------------------------------------------------------------ reads
    async def current(self, item_id: str) -> ItemRecord | None:
        return await self._read(f"read item {item_id!r}", self.store.current, item_id)

    async def version(self, item_id: str, version: int) -> ItemRecord | None:
        return await self._read(f"read item {item_id!r}", self.store.version, item_id, version)

    async def page(
        self, status: str, limit: int, after: str | None, seq: int | None
    ) -> tuple[list[ItemRecord], bool, int]:
        """A page of the catalog as of version ``seq`` (None: the newest), that version
        and whether more follow (:meth:`CatalogStore.page`)."""

        def read() -> tuple[list[ItemRecord], bool, int]:
            newest = self.store.newest_seq()
            if seq is not None and seq > newest:
                # a version not written yet is no snapshot: later writes would show in
                # its next pages (security helper, stop 55)
                raise InputError(
                    ("query", "seq"),
                    f"seq {seq} is past the catalog's newest version {newest}; list without "
                    "seq for the newest.",
                    seq,
                )
            at = newest if seq is None else seq
            found, more = self.store.page(status, limit, after, at)
            return found, more, at

        return await self._read("read a page of the catalog", read)

    async def _read(self, what: str, read: Callable[..., R], *args: object) -> R:
        return await read_within(self.settings.store_deadline_s, what, read, *args)

    def retrieve(self, query: NDArray[np.float64], k: int) -> Retrieved:
        """The retrieved candidate set for ``query`` (the request's retrieval vector).

        Raises
        ------
        InputError
            No active item, or a query of the wrong width (422 on ``retrieve``).
        """
        index = self.index
        if index is None or len(index) == 0:
            raise InputError(("body", "retrieve"), "the catalog has no active item to retrieve.")
        if query.shape[0] != index.dim_vector:
            raise InputError(
                ("body", "retrieve", "query"),
                f"the retrieval query must have {index.dim_vector} values (the catalog's "
                f"embedding width); got {query.shape[0]}.",
            )
        return index.retrieve(query, k)

    def new_ids(self, ids: Iterable[str]) -> frozenset[str]:
        """Which of ``ids`` are new catalog items (fewer impressions than the threshold)."""
        index = self.index
        if index is None or self.config.new_after == 0:
            return frozenset()
        return frozenset(i for i in ids if index.is_new(i))

    def record_shown(self, ids: Iterable[str]) -> None:
        if self.index is not None:
            self.index.record_shown(ids)

    @property
    def has_items(self) -> bool:
        return self.index is not None and len(self.index) > 0


def _build(snapshot: Compaction, records: list[ItemRecord]) -> CatalogIndex:
    index = snapshot.build(extra=len(records))
    index.apply(records)
    return index


async def _apply_in_chunks(
    index: Callable[[], CatalogIndex | None], records: Sequence[ItemRecord]
) -> int:
    """Apply ``records`` (a list that may grow meanwhile) to the index ``index()`` gives at
    each chunk (a rebuild may replace it between two; versions apply once, in order, so
    a chunk applied to both is harmless), yielding to the loop between chunks."""
    applied = done = 0
    while done < len(records):
        target = index()
        if target is None:
            return applied
        chunk = records[done : done + APPLY_CHUNK]
        applied += target.apply(chunk)
        done += len(chunk)
        if done < len(records):
            await asyncio.sleep(0)
    return applied
