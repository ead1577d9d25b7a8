"""Workspace conventions every pipeline shares: the folder of a run under the runs
directory, and timestamps as plain UTC datetimes (as the event store keeps them)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventstore.text import check_text

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_folder(runs_dir: str | Path, run_key: str) -> Path:
    """``<runs_dir>/<run key made file-safe>`` (with a hash when characters were replaced,
    so two keys never share a folder).

    Raises
    ------
    ValueError
        A key with a NUL character or a lone surrogate, naming ``run_key``.
    """
    check_text("run_key", run_key)
    safe = _UNSAFE.sub("_", run_key).strip("._") or "run"
    if safe != run_key:
        safe = f"{safe}-{hashlib.sha256(run_key.encode()).hexdigest()[:8]}"
    return Path(runs_dir).resolve() / safe


def aware(name: str, text: str) -> datetime:
    """The timezone-aware ISO 8601 date-time ``text`` (field ``name``) in UTC."""
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an ISO 8601 date-time; got {text!r}.") from exc
    return as_utc(name, value)


def as_utc(name: str, value: Any) -> datetime:
    """A timezone-aware datetime (field ``name``) as a plain UTC ``datetime``."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime; got {value!r}.")
    # a plain UTC datetime, also from a pendulum DateTime (Airflow's context values)
    return datetime.fromtimestamp(value.timestamp(), UTC)
