"""Polls the model source off the request path and swaps the served set atomically.

The served set (:class:`~serving.models.served.ServingSet`) is immutable; a poll that
finds a new version loads and recovers it in the loader thread, builds a new set and
replaces the reference in one assignment, so a request sees either the old set or the
new one. A version already served (e.g. a candidate promoted to production) is reused
with its online head. A version that fails to load is logged and the current one keeps
serving; a source that cannot be reached changes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from serving.models.recovery import recover
from serving.models.served import ServedModel, ServingSet
from serving.models.sources import ModelRef, ModelSource, Role
from serving.store.repository import EventStore

log = logging.getLogger(__name__)


class ModelLoader:
    """Keeps :attr:`current` up to date with the source.

    Parameters
    ----------
    source : ModelSource
    store : EventStore
        For recovering the online head of a newly loaded version.
    interval_s : float
        Seconds between polls.
    candidate_share : float
        Traffic share of the candidate role (0 disables it).
    on_swap : callable, optional
        Called with the new set after every change (metrics).
    """

    def __init__(
        self,
        source: ModelSource,
        store: EventStore,
        interval_s: float,
        candidate_share: float = 0.0,
        on_swap: Callable[[ServingSet], None] | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.interval_s = interval_s
        self.candidate_share = candidate_share
        self._on_swap = on_swap
        self.current: ServingSet | None = None
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="banditops-loader", daemon=True)

    @property
    def ready(self) -> bool:
        """True once the first poll has decided what serves (a model or the fallback)."""
        return self.current is not None

    def start(self) -> ModelLoader:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def poll(self) -> bool:
        """One poll; True when the served set changed. Thread-safe."""
        with self._lock:
            current = self.current or ServingSet(None, None, self.candidate_share)
            production = self._role("production", current.production, current)
            candidate = None
            if self.candidate_share > 0.0:
                candidate = self._role("candidate", current.candidate, current)
            new = ServingSet(production, candidate, self.candidate_share)
            changed = (
                self.current is None
                or new.production is not current.production
                or new.candidate is not current.candidate
            )
            if changed:
                self.current = new
                names = [m.version if m else None for m in (production, candidate)]
                log.info("serving production=%s candidate=%s", *names)
                if self._on_swap is not None:
                    self._on_swap(new)
            return changed

    def _role(
        self, role: Role, serving: ServedModel | None, current: ServingSet
    ) -> ServedModel | None:
        try:
            ref = self.source.resolve(role)
        except Exception as exc:
            self.failures += 1
            log.warning("model source %s unreachable for %s: %s", self.source.name, role, exc)
            return serving
        if ref is None:
            return None
        reused = current.for_version(ref.version)
        if reused is not None:
            return reused
        return self._load(role, ref, serving)

    def _load(self, role: Role, ref: ModelRef, serving: ServedModel | None) -> ServedModel | None:
        try:
            base = self.source.load(ref)
            model = recover(self.store, ref.version, base, self.source.name)
        except Exception:
            self.failures += 1
            log.exception(
                "could not load %s version %s; keeping %s",
                role,
                ref.version,
                serving.version if serving else "the fallback",
            )
            return serving
        log.info("loaded %s %s (%d rewards replayed)", role, ref.version, model.applied_rewards)
        return model

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # keep polling whatever happens
                log.exception("model poll failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()
