"""Retrieval: the top-K rows of a catalog by inner product with a query, behind one
interface, exact or approximate.

* :class:`ExactRetriever` — one matrix-vector product and a partial sort (``argpartition``),
  O(N·d) per query; the right choice for small catalogs and the reference for recall.
* :class:`HnswRetriever` — faiss's HNSW graph (Malkov & Yashunin, TPAMI 2020) on inner
  product, O(log N)-ish per query; rows are only appended (faiss's HNSW cannot delete), so
  a retired or updated item's old row is switched off in a bitmap that the search skips
  (``IDSelectorBitmap``), and the owner rebuilds the graph when too many rows are off.

Both number rows in insertion order, share the ``active`` mask semantics and return
``(rows (k,), scores (k,))`` best first, with ``k`` capped by the number of active rows.
"""

from __future__ import annotations

from typing import Any, Protocol

import faiss
import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]


class Retriever(Protocol):
    """Top-K by inner product over appended rows, skipping inactive ones."""

    method: str

    @property
    def n_rows(self) -> int: ...

    @property
    def n_active(self) -> int: ...

    def add(self, vectors: FloatArray) -> None:
        """Append rows ``vectors`` (m, d); they are active."""
        ...

    def deactivate(self, rows: IntArray) -> None:
        """Skip ``rows`` from now on (retired, or replaced by a newer version)."""
        ...

    def search(self, query: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
        """Best ``min(k, n_active)`` active rows for ``query`` (d,), best first."""
        ...


class _Rows:
    """Append-only float32 row storage with an active mask (capacity doubles); with
    ``keep_data=False`` only the mask is kept (the index holds the vectors)."""

    def __init__(self, dim: int, keep_data: bool = True) -> None:
        self.dim = dim
        self._data = np.zeros((0, dim if keep_data else 0), dtype=np.float32)
        self._active = np.zeros(0, dtype=bool)
        self.size = 0
        self.n_active = 0

    def append(self, vectors: NDArray[np.floating[Any]]) -> None:
        m = vectors.shape[0]
        needed = self.size + m
        if needed > self._data.shape[0]:
            cap = max(needed, 2 * self._data.shape[0], 1024)
            data = np.zeros((cap, self._data.shape[1]), dtype=np.float32)
            data[: self.size] = self._data[: self.size]
            active = np.zeros(cap, dtype=bool)
            active[: self.size] = self._active[: self.size]
            self._data, self._active = data, active
        if self._data.shape[1]:
            self._data[self.size : needed] = vectors
        self._active[self.size : needed] = True
        self.size = needed
        self.n_active += m

    def deactivate(self, rows: IntArray) -> None:
        rows = np.asarray(rows, dtype=np.intp)
        self.n_active -= int(self._active[rows].sum())
        self._active[rows] = False

    @property
    def data(self) -> NDArray[np.float32]:
        return self._data[: self.size]

    @property
    def active(self) -> NDArray[np.bool_]:
        return self._active[: self.size]


def _check_query(query: FloatArray, dim: int) -> NDArray[np.float32]:
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if q.shape[0] != dim:
        raise ValueError(
            f"query must have {dim} values (the catalog's embedding width); got {q.shape[0]}."
        )
    return q


class ExactRetriever:
    """Brute-force inner product (reference, and best for small catalogs)."""

    method = "exact"

    def __init__(self, dim: int) -> None:
        self._rows = _Rows(dim)

    @property
    def n_rows(self) -> int:
        return self._rows.size

    @property
    def n_active(self) -> int:
        return self._rows.n_active

    def add(self, vectors: FloatArray) -> None:
        self._rows.append(vectors)

    def deactivate(self, rows: IntArray) -> None:
        self._rows.deactivate(rows)

    def search(self, query: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
        q = _check_query(query, self._rows.dim)
        k = min(k, self.n_active)
        if k == 0:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        scores = self._rows.data @ q
        if self.n_active < self.n_rows:
            scores = np.where(self._rows.active, scores, -np.inf)
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(k)
        order = top[np.argsort(-scores[top], kind="stable")]
        return order.astype(np.intp), scores[order].astype(np.float64)


class HnswRetriever:
    """faiss ``IndexHNSWFlat`` on inner product, with a bitmap of inactive rows.

    Parameters
    ----------
    dim : int
        Embedding width.
    m : int
        Graph degree (faiss's ``M``); larger is more accurate and slower to build.
    ef_construction, ef_search : int
        Beam widths while building and while searching (``ef_search`` is raised to at
        least ``k`` for every query).
    """

    method = "hnsw"

    def __init__(
        self, dim: int, m: int = 32, ef_construction: int = 80, ef_search: int = 256
    ) -> None:
        self._rows = _Rows(dim, keep_data=False)
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.ef_search = ef_search
        self._bitmap: NDArray[np.uint8] | None = None
        self._selector: faiss.IDSelectorBitmap | None = None

    @property
    def n_rows(self) -> int:
        return self._rows.size

    @property
    def n_active(self) -> int:
        return self._rows.n_active

    def add(self, vectors: FloatArray) -> None:
        block = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index.add(block)
        self._rows.append(block)
        self._bitmap = self._selector = None

    def deactivate(self, rows: IntArray) -> None:
        self._rows.deactivate(rows)
        self._bitmap = self._selector = None

    # faiss's __init__.pyi leaves out SearchParametersHNSW (the SWIG module defines it)
    def _params(self, k: int) -> faiss.SearchParametersHNSW:  # type: ignore[name-defined]
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = max(self.ef_search, k)
        if self.n_active < self.n_rows:
            if self._bitmap is None or self._selector is None:
                # both kept alive on self: the selector reads the bitmap's memory
                self._bitmap = np.packbits(self._rows.active, bitorder="little")
                self._selector = faiss.IDSelectorBitmap(self.n_rows, faiss.swig_ptr(self._bitmap))
            params.sel = self._selector
        return params

    def search(self, query: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
        q = _check_query(query, self._rows.dim)
        k = min(k, self.n_active)
        if k == 0:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        params = self._params(k)
        scores, rows = self.index.search(q[None, :], k, params=params)
        keep = rows[0] >= 0  # faiss pads with -1 when it finds fewer than k
        return rows[0][keep].astype(np.intp), scores[0][keep].astype(np.float64)


def make_retriever(
    method: str, dim: int, m: int = 32, ef_construction: int = 80, ef_search: int = 256
) -> ExactRetriever | HnswRetriever:
    """``"exact"`` or ``"hnsw"``."""
    if method == "exact":
        return ExactRetriever(dim)
    if method == "hnsw":
        return HnswRetriever(dim, m, ef_construction, ef_search)
    raise ValueError(f"retrieval method must be 'exact' or 'hnsw'; got {method!r}.")
