"""Reads and writes of the catalog tables (``items``, ``item_versions``).

Every change — a new item, new features, retirement — appends a version to
``item_versions`` (``seq`` orders the catalog's changes) and updates the item's current row
in ``items``, in one transaction. Versions are never rewritten, so a logged decision's
``candidate_versions`` re-featurise it exactly as served.

Writing an item exactly as it already is (same features, same embedding, active) is no
change: it appends no version, and keeps its version number and ``seq``. A catalog
re-loaded nightly from an unchanged file used to append a copy of every item each night
(2,000 items: 90,000 rows after 45 nights, the largest table of the store).

The catalog's writes take turns (:func:`eventstore.engine.take_turn`: SQLite's write
lock taken at ``BEGIN``, a PostgreSQL advisory lock), so two concurrent writes of one item
follow each other: the second numbers its version after the first's and compares with
what the first wrote, whether the item existed or the first created it.

Retention deletes the versions superseded before the catalog's *horizon*
(:func:`eventstore.retention.catalog_horizon_for`); the catalog as it was before it can no
longer be listed, and a pruned version can no longer be read (:class:`PrunedError`).

The retrieval vector of an item is its embedding when it has one, else its features; all
items share one feature width and one retrieval width (checked on every write).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, Engine, Row, bindparam, func, insert, select, update

from eventstore.engine import take_turn, turn_key
from eventstore.retention import catalog_horizon_reached
from eventstore.schema import item_versions, items
from eventstore.types import decode_floats, encode_floats
from serving.inputs import InputError, Loc

FloatArray = NDArray[np.float64]

#: Ids per ``IN (...)`` query.
_CHUNK = 900
#: The turn the catalog's writes take (:func:`eventstore.engine.take_turn`): without it,
#: PostgreSQL's row locks (``FOR UPDATE``) left two writes creating one new item (no row to
#: lock yet) to fail one with a unique violation (a 500), and two first writes to an
#: empty catalog free to store two widths.
CATALOG_LOCK = turn_key("banditops.catalog")

_INSERT_VERSIONS = insert(item_versions).returning(
    item_versions.c.seq, sort_by_parameter_order=True
)
_INSERT_ITEMS = insert(items)
_UPDATE_ITEMS = (
    update(items)
    .where(items.c.item_id == bindparam("key"))
    .values(
        version=bindparam("version"),
        seq=bindparam("seq"),
        retired=bindparam("retired"),
        dim_features=bindparam("dim_features"),
        features=bindparam("features"),
        dim_embedding=bindparam("dim_embedding"),
        embedding=bindparam("embedding"),
        updated_at=bindparam("updated_at"),
    )
)


@dataclass(frozen=True)
class ItemInput:
    """One item to add or update; ``loc`` is where it came from (for error messages)."""

    item_id: str
    features: FloatArray
    embedding: FloatArray | None = None
    loc: Loc = ("body",)


@dataclass(frozen=True)
class ItemRecord:
    """One version of an item (the current one when read from ``items``)."""

    item_id: str
    version: int
    seq: int
    retired: bool
    features: FloatArray
    embedding: FloatArray | None
    impressions: int = 0
    updated_at: datetime | None = None
    #: Returned by :meth:`CatalogStore.upsert` for an item written exactly as it already
    #: was: no version was written, this is its current one.
    unchanged: bool = False

    @property
    def vector(self) -> FloatArray:
        """The retrieval vector: the embedding, else the features."""
        return self.features if self.embedding is None else self.embedding


class PrunedError(LookupError):
    """A catalog version retention deleted: a listing before the horizon, or a
    superseded version of an item (410)."""


def _record(
    row: Row[Any],
    impressions: int = 0,
    updated_at: datetime | None = None,
    unchanged: bool = False,
) -> ItemRecord:
    embedding = None
    if row.embedding is not None:
        embedding = decode_floats(row.embedding, (row.dim_embedding,))
    return ItemRecord(
        item_id=row.item_id,
        version=int(row.version),
        seq=int(row.seq),
        retired=bool(row.retired),
        features=decode_floats(row.features, (row.dim_features,)),
        embedding=embedding,
        impressions=impressions,
        updated_at=updated_at,
        unchanged=unchanged,
    )


def _same(entry: ItemInput, row: Row[Any]) -> bool:
    """Whether ``entry`` is the item's current row as it is: active, with bit-for-bit the
    same features and embedding (what a version is: a decision re-featurises from it)."""
    if row.retired or (row.embedding is None) != (entry.embedding is None):
        return False
    if bytes(row.features) != encode_floats(entry.features):
        return False
    return entry.embedding is None or bytes(row.embedding) == encode_floats(entry.embedding)


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


class CatalogStore:
    """The catalog tables over one engine.

    ``lock_wait_s``: how long a write waits for its turn
    (:func:`~eventstore.engine.take_turn`) on PostgreSQL; None waits for the engine's
    ``lock_timeout``. The service's engine allows
    its event writes 2 s (``store_lock_timeout_s``), and a catalog write queued behind a
    bulk load answered 503 after those 2 s; it waits within the request's deadline now.
    """

    def __init__(self, engine: Engine, lock_wait_s: float | None = None) -> None:
        if lock_wait_s is not None and not lock_wait_s > 0:
            raise ValueError(f"lock_wait_s must be > 0; got {lock_wait_s!r}.")
        self.engine = engine
        self.lock_wait_s = lock_wait_s

    # ------------------------------------------------------------------ reads
    def widths(self, conn: Connection | None = None) -> tuple[int, int] | None:
        """``(feature width, retrieval width)`` of the catalog, None while it is empty."""
        query = select(items.c.dim_features, items.c.dim_embedding).limit(1)
        if conn is None:
            with self.engine.connect() as own:
                row = own.execute(query).first()
        else:
            row = conn.execute(query).first()
        if row is None:
            return None
        retrieval = row.dim_embedding if row.dim_embedding is not None else row.dim_features
        return int(row.dim_features), int(retrieval)

    def current(self, item_id: str) -> ItemRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(items).where(items.c.item_id == item_id)).first()
        if row is None:
            return None
        return _record(row, int(row.impressions), row.updated_at)

    def version(self, item_id: str, version: int) -> ItemRecord | None:
        """The item's ``version`` (None: no such item or version).

        Raises
        ------
        PrunedError
            Retention deleted it: the item has later versions and this one is gone.
        """
        v = item_versions.c
        query = select(item_versions).where(v.item_id == item_id, v.version == version)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
            if row is not None:
                return _record(row)
            current = conn.execute(
                select(items.c.version).where(items.c.item_id == item_id)
            ).scalar_one_or_none()
            if current is None or not 1 <= version < current:
                return None
            horizon = catalog_horizon_reached(conn)
        raise PrunedError(
            f"version {version} of item {item_id!r} was superseded before the catalog's "
            f"horizon (seq {horizon}) and deleted by retention (BANDITOPS_RETENTION_DAYS); "
            f"its current version is {current}."
        )

    def newest_seq(self) -> int:
        """The catalog version: ``seq`` of its latest change (0 while empty)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(item_versions.c.seq))).scalar_one() or 0)

    def page(
        self, status: str, limit: int, after: str | None, seq: int
    ) -> tuple[list[ItemRecord], bool]:
        """Up to ``limit`` items by id after ``after``, as the catalog was at version
        ``seq``: each item's latest version with ``seq`` at most that, kept when its
        ``status`` ("active", "retired" or "all") matches. Returns the records (with the
        item's current impression count) and whether more follow.

        While ``seq`` is the newest version the current rows answer (one index range);
        for an older version, or when a row changed after ``seq`` was read (the first
        page listed items newer than the version it named), the versions table does.
        """
        if status not in ("active", "retired", "all"):
            raise ValueError(f"status must be 'active', 'retired' or 'all'; got {status!r}.")
        with self.engine.connect() as conn:
            newest = conn.execute(select(func.max(item_versions.c.seq))).scalar_one() or 0
            rows = None
            if seq >= newest:
                rows = self._page_rows(conn, status, limit, after, None)
                if any(r.seq > seq for r in rows):
                    rows = None
            if rows is None:
                rows = self._page_rows(conn, status, limit, after, seq)
                # read after the rows: retention moves the horizon before it deletes
                horizon = catalog_horizon_reached(conn)
                if seq < horizon:
                    raise PrunedError(
                        f"catalog version {seq} is before the catalog's horizon (seq "
                        f"{horizon}): retention deleted the item versions it was made of. "
                        f"List the newest version (no seq, no cursor) or one at seq >= "
                        f"{horizon}."
                    )
        found = [_record(r, int(r.impressions), r.changed_at) for r in rows[:limit]]
        return found, len(rows) > limit

    @staticmethod
    def _page_rows(
        conn: Connection, status: str, limit: int, after: str | None, seq: int | None
    ) -> Sequence[Row[Any]]:
        """:meth:`page`'s rows (one more than ``limit``): from the current rows (``seq``
        None), else from the versions table as of ``seq``."""
        if seq is None:
            table, updated = items, items.c.updated_at
            query = select(items)
        else:
            v = item_versions.c
            latest = select(v.item_id, func.max(v.seq).label("seq")).where(v.seq <= seq)
            if after is not None:
                latest = latest.where(v.item_id > after)
            last = latest.group_by(v.item_id).subquery()
            table, updated = item_versions, v.created_at
            query = (
                select(item_versions, items.c.impressions)
                .join(last, (v.item_id == last.c.item_id) & (v.seq == last.c.seq))
                .join(items, items.c.item_id == v.item_id)
            )
        query = query.add_columns(updated.label("changed_at"))
        if after is not None:
            query = query.where(table.c.item_id > after)
        if status != "all":
            query = query.where(table.c.retired.is_(status == "retired"))
        return conn.execute(query.order_by(table.c.item_id).limit(limit + 1)).all()

    def active(self) -> tuple[list[ItemRecord], int]:
        """Every active item (current version, impressions) and the newest ``seq``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(items).where(items.c.retired.is_(False)).order_by(items.c.seq)
            ).all()
            newest = conn.execute(select(func.max(item_versions.c.seq))).scalar_one()
        return [_record(r, int(r.impressions)) for r in rows], int(newest or 0)

    def changes(self, after_seq: int, gaps: Sequence[int] = ()) -> list[ItemRecord]:
        """Versions with ``seq > after_seq`` or ``seq`` in ``gaps``, in ``seq`` order.

        ``gaps`` are numbers skipped by earlier reads: on PostgreSQL a version can commit
        after a higher ``seq`` was already read (sequences are not commit-ordered).
        """
        v = item_versions.c
        found: list[ItemRecord] = []
        with self.engine.connect() as conn:
            query = select(item_versions).where(v.seq > after_seq).order_by(v.seq)
            found.extend(_record(r) for r in conn.execute(query))
            for chunk in _chunks(list(gaps)):
                query = select(item_versions).where(v.seq.in_(chunk))
                found.extend(_record(r) for r in conn.execute(query))
        return sorted(found, key=lambda r: r.seq)

    # ------------------------------------------------------------------ writes
    def upsert(self, entries: Sequence[ItemInput]) -> list[ItemRecord]:
        """Add new items and new versions of existing ones (retired ones come back).

        An entry equal to its item's current active version writes nothing: its record
        is the current version, ``unchanged`` (with its impressions and ``updated_at``).

        Returns
        -------
        list of ItemRecord
            One per entry, in order.

        Raises
        ------
        InputError
            Repeated ids, or a feature or retrieval width that differs from the rest of
            the request or from the catalog (the error names the entry's field).
        """
        ids = [e.item_id for e in entries]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(e for e in entries if e.item_id in seen or seen.add(e.item_id))  # type: ignore[func-returns-value]
            raise InputError((*dup.loc, "id"), f"item id {dup.item_id!r} appears twice.")
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            take_turn(conn, CATALOG_LOCK, self.lock_wait_s)
            self._check_widths(conn, entries)
            current = self._current(conn, ids)
            out: list[ItemRecord | None] = [None] * len(entries)
            written: list[int] = []  # positions of the entries that write a version
            for i, e in enumerate(entries):
                row = current.get(e.item_id)
                if row is not None and _same(e, row):
                    out[i] = _record(row, int(row.impressions), row.updated_at, unchanged=True)
                else:
                    written.append(i)
            known = {item: int(row.version) for item, row in current.items()}
            params = [
                {
                    "item_id": e.item_id,
                    "version": known.get(e.item_id, 0) + 1,
                    "retired": False,
                    "dim_features": int(e.features.shape[0]),
                    "features": encode_floats(e.features),
                    "dim_embedding": None if e.embedding is None else int(e.embedding.shape[0]),
                    "embedding": None if e.embedding is None else encode_floats(e.embedding),
                    "created_at": now,
                }
                for e in (entries[i] for i in written)
            ]
            seqs = self._write(conn, params, known, now) if params else []
        for i, p, s in zip(written, params, seqs, strict=True):
            e, row = entries[i], current.get(entries[i].item_id)
            impressions = 0 if row is None else int(row.impressions)
            version = cast(int, p["version"])
            out[i] = ItemRecord(
                e.item_id, version, s, False, e.features, e.embedding, impressions, now
            )
        return cast(list[ItemRecord], out)

    def retire(self, item_id: str) -> ItemRecord | None:
        """Retire an item (a new version marked retired); None for an unknown id. An
        already retired item is returned as it is."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            take_turn(conn, CATALOG_LOCK, self.lock_wait_s)
            row = conn.execute(select(items).where(items.c.item_id == item_id)).first()
            if row is None:
                return None
            if row.retired:
                return _record(row, int(row.impressions), row.updated_at)
            params = {
                "item_id": item_id,
                "version": int(row.version) + 1,
                "retired": True,
                "dim_features": row.dim_features,
                "features": row.features,
                "dim_embedding": row.dim_embedding,
                "embedding": row.embedding,
                "created_at": now,
            }
            (seq,) = self._write(conn, [params], {item_id: int(row.version)}, now)
        return ItemRecord(
            item_id,
            params["version"],
            seq,
            True,
            decode_floats(row.features, (row.dim_features,)),
            None if row.embedding is None else decode_floats(row.embedding, (row.dim_embedding,)),
            int(row.impressions),
            now,
        )

    def _current(self, conn: Connection, ids: Sequence[str]) -> dict[str, Row[Any]]:
        """The current rows of the items of ``ids`` that exist (read under
        :func:`~eventstore.engine.take_turn`)."""
        out: dict[str, Row[Any]] = {}
        for chunk in _chunks(ids):
            query = select(items).where(items.c.item_id.in_(chunk))
            out.update((r.item_id, r) for r in conn.execute(query))
        return out

    def _write(
        self,
        conn: Connection,
        params: list[dict[str, Any]],
        known: dict[str, int],
        now: datetime,
    ) -> list[int]:
        seqs = [int(s) for s in conn.execute(_INSERT_VERSIONS, params).scalars()]
        new, changed = [], []
        for p, seq in zip(params, seqs, strict=True):
            current = {k: v for k, v in p.items() if k != "created_at"}
            current.update(seq=seq, updated_at=now)
            if p["item_id"] in known:
                current["key"] = current.pop("item_id")
                changed.append(current)
            else:
                new.append({**current, "impressions": 0, "created_at": now})
        if new:
            conn.execute(_INSERT_ITEMS, new)
        if changed:  # in id order, as the decisions' impression counts: no deadlock
            conn.execute(_UPDATE_ITEMS, sorted(changed, key=lambda row: row["key"]))
        return seqs

    def _check_widths(self, conn: Connection, entries: Sequence[ItemInput]) -> None:
        expected = self.widths(conn)
        for e in entries:
            retrieval = e.features if e.embedding is None else e.embedding
            width = (int(e.features.shape[0]), int(retrieval.shape[0]))
            if expected is None:
                expected = width
                continue
            if width[0] != expected[0]:
                raise InputError(
                    (*e.loc, "features"),
                    f"item features must have {expected[0]} values, like the rest of the "
                    f"catalog; got {width[0]}.",
                )
            if width[1] != expected[1]:
                field = "features" if e.embedding is None else "embedding"
                raise InputError(
                    (*e.loc, field),
                    f"the retrieval vector (embedding, else features) must have "
                    f"{expected[1]} values, like the rest of the catalog; got {width[1]}.",
                )
