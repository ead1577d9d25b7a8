"""Items from a CSV or Parquet file, for ``banditops catalog load``.

One row per item: an id column, feature columns (names starting with ``feature_prefix``,
in file order) and, optionally, embedding columns (``embedding_prefix``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from pydantic import TypeAdapter, ValidationError

from serving.catalog.schemas import ItemIdText
from serving.catalog.store import ItemInput

#: An item id as ``POST /v1/items`` takes it: the file loaded ids the API refuses ('a/b',
#: 300 characters, '..'), which no request could then read or retire.
_ITEM_ID: TypeAdapter[str] = TypeAdapter(ItemIdText)


def read_table(path: Path, id_column: str = "id") -> pd.DataFrame:
    """The file as a DataFrame (``.csv`` or ``.parquet``/``.pq``); CSV ids stay text."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path, dtype={id_column: str})
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"catalog file must be .csv or .parquet; got {path.name!r}.")


def items_from_table(
    frame: pd.DataFrame,
    id_column: str,
    feature_prefix: str,
    embedding_prefix: str,
    batch: int,
) -> Iterator[list[ItemInput]]:
    """Validated items in batches of ``batch``.

    Raises
    ------
    ValueError
        A missing id column, no feature column, an empty or repeated id, or a value that
        is not a finite number (naming the column and the row).
    """
    if id_column not in frame.columns:
        raise ValueError(
            f"no id column {id_column!r}; the columns are {', '.join(map(str, frame.columns))}."
        )
    feature_cols = [c for c in frame.columns if str(c).startswith(feature_prefix)]
    embedding_cols = [c for c in frame.columns if str(c).startswith(embedding_prefix)]
    if not feature_cols:
        raise ValueError(
            f"no feature column: none of the column names starts with {feature_prefix!r}."
        )
    ids = frame[id_column].astype(str).str.strip()
    empty = ids.eq("") | frame[id_column].isna()
    if empty.any():
        raise ValueError(f"column {id_column!r} is empty in row {int(np.flatnonzero(empty)[0])}.")
    repeated = ids.duplicated()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise ValueError(f"item id {ids.iloc[row]!r} appears twice (row {row}).")
    for row, item_id in enumerate(ids):  # the API's rule for an id, not a looser one
        try:
            _ITEM_ID.validate_python(item_id)
        except ValidationError as exc:
            why = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"item id {item_id[:64]!r} in row {row}: {why}.") from None
    features = _numbers(frame, feature_cols)
    embeddings = _numbers(frame, embedding_cols) if embedding_cols else None
    for start in range(0, len(frame), batch):
        stop = min(len(frame), start + batch)
        yield [
            ItemInput(
                ids.iloc[i],
                features[i],
                None if embeddings is None else embeddings[i],
                ("file", f"row {i}"),
            )
            for i in range(start, stop)
        ]


def _numbers(frame: pd.DataFrame, columns: list[str]) -> NDArray[np.float64]:
    values: NDArray[np.float64] = (
        frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    )
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"column {columns[col]!r} must hold finite numbers; row {row} holds "
            f"{frame[columns[col]].iloc[row]!r}."
        )
    return values
