"""The runs folder's retention (``training.run_folders``): every nightly retrain left its
folder (a copy of its replay window, its data docs and reports) and every monitor run its
report for good (months helper, stop 46: 4.8 MB a night with a small window, a report an
hour)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from eventstore.workspace import (
    MONITOR_FOLDER,
    MONITOR_REPORT_FILE,
    MONITOR_REPORTS_SHOWN,
    run_folder,
)
from training.run_folders import prune_run_folders
from training.runspec import SPEC_FILE

NOW = datetime(2026, 12, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def _age(path: Path, at: datetime) -> None:
    """Every file and folder under ``path`` last written at ``at``."""
    stamp = at.timestamp()
    for parent, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.utime(os.path.join(parent, name), (stamp, stamp))
    os.utime(path, (stamp, stamp))


def _retrain(runs: Path, key: str, age_days: float, size: int = 1000) -> Path:
    folder = run_folder(runs, key)
    (folder / "replay").mkdir(parents=True)
    (folder / SPEC_FILE).write_text(json.dumps({"run_key": key}))
    (folder / "replay" / "replay.parquet").write_bytes(b"x" * size)
    _age(folder, NOW - age_days * DAY)
    return folder


def test_old_runs_go_active_and_recent_ones_stay(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    old = _retrain(runs, "scheduled__2026-08-01T02:00:00+00:00", 100, size=5000)
    active = _retrain(runs, "manual__cleared-long-ago", 100)  # Airflow runs it again
    recent = _retrain(runs, "scheduled__2026-11-20T02:00:00+00:00", 10)
    touched = _retrain(runs, "scheduled__2026-08-02T02:00:00+00:00", 100)
    (touched / "train").mkdir()  # a step of it wrote yesterday: not finished with
    _age(touched / "train", NOW - DAY)
    moved = _retrain(runs, "manual__moved", 100)  # found by the key its spec records
    moved = moved.rename(runs / "moved-by-hand")
    torn = _retrain(runs, "manual__torn", 100)
    (torn / SPEC_FILE).write_text('{"run_key": "manu')  # cannot tell: kept
    _age(torn, NOW - 100 * DAY)
    notes = runs / "notes"  # not a run's folder: no run spec
    notes.mkdir()
    _age(notes, NOW - 400 * DAY)
    link = runs / "elsewhere"
    link.symlink_to(old, target_is_directory=True)

    cutoff = NOW - 30 * DAY
    counted = prune_run_folders(
        runs, cutoff, active=["manual__cleared-long-ago", "manual__moved"], dry_run=True
    )
    held = 5000 + (old / SPEC_FILE).stat().st_size
    assert counted == {"run_folders": 1, "monitor_reports": 0, "bytes": held}
    assert old.exists()
    assert (
        prune_run_folders(runs, cutoff, active=["manual__cleared-long-ago", "manual__moved"])
        == counted
    )
    assert not old.exists() and link.is_symlink()  # the link itself is left alone
    assert all(p.exists() for p in (active, moved, torn, recent, touched, notes))
    # a run key no folder can have (Airflow's, read from a spec) stops nothing
    odd = prune_run_folders(runs, cutoff, active=["a\x00b", "\ud800", "manual__moved"])
    assert odd["run_folders"] == 1  # the one Airflow no longer runs
    assert moved.exists() and not active.exists()
    assert prune_run_folders(tmp_path / "none", cutoff) == {
        "run_folders": 0,
        "monitor_reports": 0,
        "bytes": 0,
    }


def test_monitor_reports_go_but_the_newest_the_page_shows_and_the_state_stay(
    tmp_path: Path,
) -> None:
    monitor = tmp_path / "runs" / MONITOR_FOLDER
    n = MONITOR_REPORTS_SHOWN + 6
    for i in range(n):  # hourly, the newest 40 days old: the monitor stopped running
        folder = monitor / f"scheduled__{i:04d}"
        folder.mkdir(parents=True)
        (folder / MONITOR_REPORT_FILE).write_text("{}")
        _age(folder, NOW - 40 * DAY - (n - i) * timedelta(hours=1))
    state = monitor / "latency_state.json"
    state.write_text("{}")
    _age(state, NOW - 300 * DAY)

    counted = prune_run_folders(tmp_path / "runs", NOW - 30 * DAY)
    assert counted["monitor_reports"] == 6 and counted["run_folders"] == 0
    left = sorted(p.name for p in monitor.iterdir() if p.is_dir())
    assert left == [f"scheduled__{i:04d}" for i in range(6, n)]  # the newest
    assert state.exists()
