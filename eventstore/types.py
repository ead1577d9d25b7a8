"""Column types that behave the same on SQLite and PostgreSQL.

* :class:`UTCDateTime` stores naive UTC and always returns timezone-aware UTC (SQLite has
  no timezone-aware type; PostgreSQL's ``timestamp`` is used the same way for symmetry).
* :func:`encode_floats` / :func:`decode_floats`: float arrays as little-endian float64
  bytes plus their shape in separate columns — compact, exact and never pickled.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

_FLOAT = np.dtype("<f8")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and read back as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamps must be timezone-aware; got naive {value!r}.")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        out: datetime = value.replace(tzinfo=UTC)
        return out


def encode_floats(values: NDArray[np.float64]) -> bytes:
    """Bytes of a float array (any shape; the shape is stored by the caller)."""
    return np.ascontiguousarray(values, dtype=_FLOAT).tobytes()


def decode_floats(data: bytes, shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Inverse of :func:`encode_floats` (a writable copy)."""
    out: NDArray[np.float64] = np.frombuffer(data, dtype=_FLOAT).astype(np.float64)
    return out.reshape(shape)
