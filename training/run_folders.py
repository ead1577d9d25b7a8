"""Retention of the runs folder: the folders of finished retrain runs and the monitor's
reports, once nothing reads them.

A retrain run's folder (``<runs_dir>/<run key>/``) holds a copy of its replay window, its
data docs, its evaluation and its policy files: what its later steps read, and what a
person opens to see why a run failed. Once the run ends, what the loop needs of it is in
MLflow (the registered state, the gate report, the feature reference); nothing deleted
them, and every night added one (4.8 MB a night with a small window, the replay copy
alone about 70 MB a night at 100k decisions a day: months helper, stop 46). The monitor
writes one report folder an hour (about 50 kB); the Bandits page reads the newest
:data:`~eventstore.workspace.MONITOR_REPORTS_SHOWN`.

:func:`prune_run_folders` deletes both once their newest file is older than
``runs_retention_days`` (``bandit_retention``), never the folder of a retrain run that
Airflow still runs or has queued (a cleared task reads its run's earlier outputs), nor
the newest reports the page shows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Collection, Iterator
from datetime import datetime
from pathlib import Path

from eventstore.workspace import (
    MONITOR_FOLDER,
    MONITOR_REPORT_FILE,
    MONITOR_REPORTS_SHOWN,
    as_utc,
    run_folder,
)
from training.runspec import SPEC_FILE

log = logging.getLogger(__name__)


def prune_run_folders(
    runs_path: str | Path,
    older_than: datetime,
    active: Collection[str] = (),
    *,
    dry_run: bool = False,
) -> dict[str, int]:
    """Delete the retrain run folders and monitor report folders under ``runs_path`` whose
    newest file was written before ``older_than``.

    Parameters
    ----------
    runs_path : str or Path
        The runs folder (``settings.runs_path``).
    older_than : datetime
        Timezone-aware.
    active : collection of str
        Run keys of the retrain runs Airflow still runs or has queued: their folders stay,
        however old.
    dry_run : bool
        Count, delete nothing.

    Returns
    -------
    dict
        ``run_folders`` and ``monitor_reports`` (folders deleted, or that would be) and
        ``bytes`` (what they held). Only folders the pipelines wrote are candidates: a
        retrain run's holds its run spec, a monitor run's its report; anything else under
        ``runs_path`` (a person's notes, a symlink) is left alone.
    """
    cutoff = as_utc("older_than", older_than).timestamp()
    root = Path(runs_path)
    kept = {name for key in active if (name := _folder_name(root, key))}
    counts = {"run_folders": 0, "monitor_reports": 0, "bytes": 0}
    if not root.is_dir():
        return counts
    retrain = [
        folder
        for folder in _folders(root)
        if (folder / SPEC_FILE).is_file() and not _is_active(folder, kept, active)
    ]
    reports = sorted(
        (f for f in _folders(root / MONITOR_FOLDER) if (f / MONITOR_REPORT_FILE).is_file()),
        key=lambda f: (f / MONITOR_REPORT_FILE).stat().st_mtime,
        reverse=True,
    )[MONITOR_REPORTS_SHOWN:]
    for kind, folders in (("run_folders", retrain), ("monitor_reports", reports)):
        for folder in folders:
            newest, size = _newest_and_size(folder)
            if newest >= cutoff:
                continue
            if not dry_run and not _delete(folder):
                continue
            counts[kind] += 1
            counts["bytes"] += size
    log.info(
        "%s %d retrain run folders and %d monitor reports (%d bytes) last written before %s",
        "would delete" if dry_run else "deleted",
        counts["run_folders"],
        counts["monitor_reports"],
        counts["bytes"],
        as_utc("older_than", older_than).isoformat(),
    )
    return counts


def _is_active(folder: Path, kept: Collection[str], active: Collection[str]) -> bool:
    """Whether ``folder`` is the folder of an ``active`` run: by its name, or by the run
    key its spec records (a spec that cannot be read counts as active: the retention
    DAG could not tell either)."""
    if folder.name in kept:
        return True
    try:
        return str(json.loads((folder / SPEC_FILE).read_text())["run_key"]) in active
    except (ValueError, KeyError, TypeError, OSError):
        return True


def _folder_name(root: Path, key: str) -> str | None:
    """The folder name of run ``key`` (None for a key no folder can have, one with a NUL
    or a lone surrogate: retention goes on, and still keeps a folder whose spec names
    that key)."""
    try:
        return run_folder(root, key).name
    except ValueError:
        return None


def _folders(parent: Path) -> Iterator[Path]:
    """The real folders directly under ``parent`` (no symlinks: deleting through one
    would delete what it points at)."""
    if not parent.is_dir():
        return
    for entry in os.scandir(parent):
        if entry.is_dir(follow_symlinks=False):
            yield Path(entry.path)


def _newest_and_size(folder: Path) -> tuple[float, int]:
    """The newest modification time of ``folder`` and everything in it, and the bytes
    its files hold (symlinks are not followed)."""
    newest, size = folder.stat().st_mtime, 0
    for parent, dirs, files in os.walk(folder):
        for name, is_file in [(d, False) for d in dirs] + [(f, True) for f in files]:
            try:
                st = os.lstat(os.path.join(parent, name))
            except OSError:  # gone meanwhile
                continue
            newest = max(newest, st.st_mtime)
            size += st.st_size if is_file else 0
    return newest, size


def _delete(folder: Path) -> bool:
    """Delete ``folder``; a folder that cannot be is logged and kept (retention goes on
    with the others)."""
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        log.warning("could not delete %s: %s", folder, exc)
        return False
    return True
