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
#: The monitor's folder under the runs folder: its reports and the state between runs.
MONITOR_FOLDER = "monitor"
#: A monitor run's report, in the run's own folder under :data:`MONITOR_FOLDER`.
MONITOR_REPORT_FILE = "report.json"
#: The newest monitor reports the Bandits page reads (its latency history): retention
#: keeps at least these, however old.
MONITOR_REPORTS_SHOWN = 24
#: Folders of the runs folder that no run's own folder may be (a retrain run named
#: ``monitor`` would write into the monitor's, and its report would read as the latest
#: monitor report).
RESERVED_FOLDERS = frozenset({MONITOR_FOLDER})


def run_folder(runs_dir: str | Path, run_key: str) -> Path:
    """``<runs_dir>/<run key made file-safe>`` (with a hash when characters were replaced,
    or when the key is one of :data:`RESERVED_FOLDERS`, so two keys never share a folder
    and no run writes into a folder the pipelines keep for themselves).

    Raises
    ------
    ValueError
        A key with a NUL character or a lone surrogate, naming ``run_key``.
    """
    check_text("run_key", run_key)
    safe = _UNSAFE.sub("_", run_key).strip("._") or "run"
    if safe != run_key or safe in RESERVED_FOLDERS:
        safe = f"{safe}-{hashlib.sha256(run_key.encode()).hexdigest()[:8]}"
    return Path(runs_dir).resolve() / safe


def refuse_run_conf(dag_id: str, conf: Any) -> None:
    """Raise ``ValueError`` for a run configuration given to a DAG that takes none (its
    settings are the workspace's): a key an operator sent would otherwise be ignored in
    silence (``{"retention_days": 0}`` pruned with the setting's days)."""
    if conf:
        keys = sorted(str(k) for k in conf)[:20]
        raise ValueError(
            f"{dag_id} takes no run configuration (its settings are BANDITOPS_* or the "
            f"workspace's banditops.toml); got {keys}."
        )


#: The times an event, a reward's timestamp or a report's end may take: inside them,
#: arithmetic with any window or lookback cannot overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def within_range(name: str, value: Any) -> datetime:
    """:func:`as_utc`, between :data:`EARLIEST` and :data:`LATEST`."""
    found = as_utc(name, value)
    if not EARLIEST <= found <= LATEST:
        raise ValueError(
            f"{name} must lie between {EARLIEST.isoformat()} and {LATEST.isoformat()}; got "
            f"{found.isoformat()}."
        )
    return found


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
