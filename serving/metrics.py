"""Prometheus metrics of the decision service.

One :class:`ServiceMetrics` per app, on its own registry (several apps can live in one
test process). With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` is set before
start (``banditops serve`` does it) and ``/metrics`` aggregates every worker's files
through a ``MultiProcessCollector``; the live gauges' files of workers that died are
removed first (:func:`mark_dead_processes`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)

from eventstore.contract import (
    DEADLINE_FALLBACKS,
    DECISIONS,
    HEAD_UPDATE_FAILURES,
    LATENCY,
    MODEL_ERRORS,
    REWARDS,
)
from serving.settings import Settings

#: Distinct arm labels kept before the rest are counted as ``"other"``.
MAX_ARM_LABELS = 1000


#: The latency buckets of what a request takes when nothing waits (seconds).
_LOW_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
#: Above the low buckets, bounds follow this series (times powers of ten) below the deadline.
_SERIES = (1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_DEFAULT_DEADLINE_S: float = Settings.model_fields["store_deadline_s"].default


def latency_buckets(store_deadline_s: float) -> tuple[float, ...]:
    """The upper bounds (seconds) of the latency histograms for a service whose requests
    wait at most ``store_deadline_s`` for the store: the low buckets, the 1–2.5–5 series
    above them and below the deadline, the deadline and twice it. A request answered when
    its deadline passed (a little after it) lands in a finite bucket, not ``+Inf``, and one
    answered before it in a bucket at most the deadline. Before, the top bound was 1 s
    against a 10 s deadline: every store wait past a second was only "more than 1 s"."""
    if not math.isfinite(store_deadline_s) or store_deadline_s <= 0.0:
        raise ValueError(f"store_deadline_s must be a positive number; got {store_deadline_s!r}.")
    top = _LOW_LATENCY_BUCKETS[-1]
    series: list[float] = []
    decade = top
    while decade < store_deadline_s:
        series += [decade * step for step in _SERIES if top < decade * step < store_deadline_s]
        decade *= 10.0
    deadline = float(store_deadline_s)
    return tuple(sorted({*_LOW_LATENCY_BUCKETS, *series, deadline, 2 * deadline}))


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


#: A live gauge's file in the multiprocess folder: ``gauge_<mode>_<pid>.db``.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live(?:all|sum|max|min|mostrecent)_(\d+)\.db")


def _zombie(pid: int) -> bool:
    """Whether process ``pid`` has exited and waits for its parent to reap it (False
    where ``/proc`` cannot say)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].startswith("Z")  # the name may hold spaces


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs. A pid given to a later process counts as alive: its
    files stay until that one exits. Telling it apart by start time against the file's
    last change removed a live worker's files when the wall clock stepped forward (an
    NTP step, a resumed VM; review, stop 56)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return not _zombie(pid)


def mark_dead_processes(directory: str | Path) -> set[int]:
    """Remove from ``directory`` the live gauges' files of processes that exited.

    A worker killed (SIGKILL, the OOM killer) never runs ``mark_process_dead``: its
    ``banditops_store_degraded`` kept saying 1 after the store was back, its
    ``banditops_journal_events`` counted events long stored, and ``banditops_model_info``
    kept a series for its pid, for as long as the service ran. A file is removed when
    its pid is gone or a zombie; a live process's files are kept, a sibling worker's or
    not. Counters' and histograms' files stay (their totals include the dead). Two
    workers may remove the same files at once; the collector skips a live gauge's file
    removed while it reads.

    Returns
    -------
    set of int
        The pids whose files were removed.
    """
    files: dict[int, list[Path]] = {}
    for path in Path(directory).glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if match is None:
            continue
        files.setdefault(int(match.group(1)), []).append(path)
    dead = {pid for pid in files if pid != os.getpid() and not _alive(pid)}
    for pid in dead:
        for path in files[pid]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return dead


class ServiceMetrics:
    """Request counts and latency, decisions per arm, rewards, served versions, fallback
    state and the event writer's batches; the latency histograms' buckets reach past
    ``store_deadline_s`` (:func:`latency_buckets`)."""

    def __init__(self, store_deadline_s: float = _DEFAULT_DEADLINE_S) -> None:
        latency = latency_buckets(store_deadline_s)
        self.directory = multiprocess_dir()
        self.multiprocess = self.directory is not None
        if self.directory is not None:  # a worker started after one died: its files go
            mark_dead_processes(self.directory)
        # In multiprocess mode values live in files; the registry is built per scrape.
        self.registry: CollectorRegistry | None = None if self.multiprocess else CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "banditops_requests", "HTTP requests", ["endpoint", "method", "status"], registry=reg
        )
        self.latency = Histogram(
            LATENCY,
            "Request latency in the service",
            ["endpoint"],
            buckets=latency,
            registry=reg,
        )
        self.decisions = Counter(
            DECISIONS,
            "Decisions served (arm: an arm a reward was applied to, else other)",
            ["arm", "traffic", "fallback"],
            registry=reg,
        )
        self.rewards = Counter(REWARDS, "Rewards received", ["status"], registry=reg)
        self.reward_value = Summary(
            "banditops_reward_value", "Reward values received", registry=reg
        )
        self.model_errors = Counter(
            MODEL_ERRORS,
            "Decisions where the model raised or returned non-finite scores (fallback used)",
            registry=reg,
        )
        self.deadline_fallbacks = Counter(
            DEADLINE_FALLBACKS,
            "Decisions the model did not finish by decision_deadline_s (fallback used)",
            registry=reg,
        )
        self.unsafe_heads = Counter(
            "banditops_unsafe_heads",
            "Head snapshots not written, or updates not applied, because the state was not finite",
            registry=reg,
        )
        self.head_update_failures = Counter(
            HEAD_UPDATE_FAILURES,
            "Rewards stored as applied whose head update the model refused (a precision "
            "singular in float64: features too large for its prior; the head is unchanged)",
            registry=reg,
        )
        self.model_info = Gauge(
            "banditops_model_info",
            "1 for the model version serving each role",
            ["role", "version", "policy"],
            registry=reg,
            multiprocess_mode="liveall",
        )
        self.fallback_active = Gauge(
            "banditops_fallback_active",
            "1 while no production model is served",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.batch_size = Histogram(
            "banditops_store_batch_size",
            "Events per group commit",
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        self.commit_seconds = Histogram(
            "banditops_store_commit_seconds",
            "Duration of one group commit",
            buckets=latency,
            registry=reg,
        )
        self.model_load_failures = Counter(
            "banditops_model_load_failures",
            "Polls that kept the served version: source unreachable, version not loadable, "
            "its feature dimensions not those served, or the rollout state unreadable",
            ["reason"],
            registry=reg,
        )
        self.store_degraded = Gauge(
            "banditops_store_degraded",
            "1 while the event store is unreachable and events go to the local journal",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.lease_lost = Gauge(
            "banditops_store_lease_lost",
            "1 once this process lost its lease on the event store to another serving "
            "process: it writes no more head snapshots until it restarts",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.commit_timeouts = Counter(
            "banditops_store_commit_timeouts",
            "Events not durable within store_deadline_s, or refused while a write "
            "had been under way that long (503)",
            registry=reg,
        )
        self.store_outages = Counter(
            "banditops_store_outages", "Times the event store became unreachable", registry=reg
        )
        self.journal_events = Gauge(
            "banditops_journal_events",
            "Events in the local journal, not yet in the event store",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.journal_bytes = Gauge(
            "banditops_journal_bytes",
            "Size of the local journal",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.journal_appended = Counter(
            "banditops_journal_appended", "Events written to the local journal", registry=reg
        )
        self.journal_drained = Counter(
            "banditops_journal_drained",
            "Journaled events copied into the event store",
            registry=reg,
        )
        self.journal_fsync_seconds = Histogram(
            "banditops_journal_fsync_seconds",
            "Duration of one journal append (write and fsync)",
            buckets=latency,
            registry=reg,
        )
        self._arms: set[str] = set()
        self._model_labels: set[tuple[str, str, str]] = set()

    def arm_label(self, arm_id: str) -> str:
        """``arm_id`` once a reward of it was applied (:meth:`admit_arm`), else
        ``"other"``: the decision endpoints are open, and ten anonymous grouped requests
        of junk ids took all 1,000 labels, every real arm counted as "other" until a
        restart (security helper, stop 55)."""
        return arm_id if arm_id in self._arms else "other"

    def admit_arm(self, arm_id: str) -> None:
        """Give ``arm_id`` a label of its own (a reward of it was applied: a client that
        holds the token named it), up to ``MAX_ARM_LABELS`` arms."""
        if len(self._arms) < MAX_ARM_LABELS:
            self._arms.add(arm_id)

    def observe_batch(self, n_items: int, seconds: float) -> None:
        self.batch_size.observe(n_items)
        self.commit_seconds.observe(seconds)

    def set_degraded(self, degraded: bool) -> None:
        self.store_degraded.set(1 if degraded else 0)
        if degraded:
            self.store_outages.inc()

    def on_journal_append(self, n: int, seconds: float, events: int, size: int) -> None:
        self.journal_appended.inc(n)
        self.journal_fsync_seconds.observe(seconds)
        self.journal_events.set(events)
        self.journal_bytes.set(size)

    def on_journal_drain(self, n: int, events: int, size: int) -> None:
        self.journal_drained.inc(n)
        self.journal_events.set(events)
        self.journal_bytes.set(size)

    def set_models(self, served: Iterable[tuple[str, str, str]], fallback: bool) -> None:
        """Mark ``(role, version, policy)`` triples as serving. The others' series are
        removed (a new version every night left a year's series behind), or set to 0 in
        multiprocess mode, which cannot remove a series."""
        now = set(served)
        for labels in self._model_labels - now:
            if self.multiprocess:
                self.model_info.labels(*labels).set(0)
            else:
                self.model_info.remove(*labels)
        for labels in now:
            self.model_info.labels(*labels).set(1)
        self._model_labels = self._model_labels | now if self.multiprocess else now
        self.fallback_active.set(1 if fallback else 0)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (in multiprocess mode, of the
        workers alive: :func:`mark_dead_processes` runs first)."""
        registry = self.registry
        if registry is None:
            from prometheus_client import multiprocess

            if self.directory is not None:
                mark_dead_processes(self.directory)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, self.directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST
