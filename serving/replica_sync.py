"""Several serving replicas, one head: each applies the others' rewards from the store.

Every replica (a ``banditops serve`` process, or a worker of one) learns from the rewards
it receives at once (:meth:`DecisionService._apply`); every ``replica_sync_s`` it reads the
rewards the store says were applied to the versions it serves and applies those its head
does not have yet — exactly once, tracked by reward id — so after a sync every replica's
head has learnt from the same rewards as a single replica that received them all.

Bookkeeping per served model (its :class:`_Tracker`):

* ``floor``: every applied reward with id ≤ ``floor`` is in the head;
* ``seen``: ids > ``floor`` in the head, learnt here from the sync or at load (recovery
  replays a known set of ids: ``ServedModel.replayed_ids``);
* the replica's **claims**: ids of the rewards it applies itself, recorded inside the
  transaction that inserts them (:meth:`ReplicaSync.claiming` wraps the writer's write
  function), so no sync can see one of them before it is claimed.

Ids come from one sequence but commit out of order across replicas: a reward with a
smaller id may become visible after a larger one. A sync reads the applied ids above
``high`` (the largest id read so far: the new rewards); every quarter horizon it reads
those above ``floor`` instead, which finds the ones that committed late (ids only; the
rows the head lacks are then read in full). ``floor`` moves up to a reward only once this
replica first read it ``replica_sync_horizon_s`` ago (its own monotonic clock): every
smaller id was taken before that reward committed, so by then its transaction has
committed or rolled back (the horizon must exceed a commit's duration). The reward's
``received_at`` is not the measure: a reward a replica journaled during an outage is
stored minutes after it was received, with a new id, and taking it as settled at once
moved the floor past a smaller id still being committed, which the head then never
learnt (audit, stop 55); and no clock is compared across hosts.

**Which rewards.** A head learns the rewards of its own decisions; a version that
records where its training window stops (``ServedModel.window_stop``) learns those of
every decision created from then on, whichever version made it
(:mod:`serving.models.recovery`), and the sync brings it those the other served version
learnt here too (claims are per version: a reward this replica applied to another head is
not this head's). Without the sync a single replica gives it those at once, in
``DecisionService._apply``.

**Order.** The posterior of a Bayesian linear head without discount or window is a sum,
``A = λI + Σφφᵀ``, ``b = Σrφ``: applying the same rewards in another order gives the same
head up to round-off, which is why replicas converge. A discounted head (γ < 1,
``A ← γA + φφᵀ``) or a sliding window depends on the order: replicas that applied the
same rewards in different orders hold different heads (the difference fades with γⁿ for a
discount, and vanishes once the window has moved past the reorder). Such policies are
reported at start (``order_dependent``); exact agreement for them needs every replica to
replay rewards in id order from a common state — a restart (recovery replays in id order)
or a retrain provides it.

With the sync on, snapshots are off (a snapshot records "every reward up to
``last_reward_id``", which a synced head does not satisfy); a replica recovers by
replaying from the version's base state.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from bandit_core.policies.linear import ArmLimit
from eventstore.records import RewardRow
from serving.models.recovery import learn_rewards
from serving.models.served import ServedModel, find_head
from serving.store.outage_log import OutageLog
from serving.store.repository import AppliedRewards, EventStore

log = logging.getLogger(__name__)

#: Rows read per ``IN (...)`` query of missing rewards.
FETCH_CHUNK = 1000


def replica_name(configured: str | None) -> str:
    """The configured replica id, or ``<hostname>-<pid>``."""
    return configured or f"{socket.gethostname()}-{os.getpid()}"


def order_dependent(policy: Any) -> bool:
    """Whether the policy's learning depends on the order of its rewards (a discounted or
    windowed head, or no Bayesian head at all)."""
    head = find_head(policy)
    if head is None:
        return True
    config = head.config
    return bool(config.gamma < 1.0 or config.window is not None)


@dataclass
class _Tracker:
    """Which rewards a served model's head has (see the module docstring)."""

    floor: int
    seen: set[int] = field(default_factory=set)
    high: int = 0
    checked_at: float = -math.inf  # monotonic time of the last read above ``floor``
    #: monotonic time each applied id above ``floor`` was first read here
    first_read: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncReport:
    """What one sync did: rewards applied per version."""

    applied: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.applied.values())


class ReplicaSync:
    """Applies the rewards other replicas applied, exactly once.

    Parameters
    ----------
    store : EventStore
    replica_id : str
        Name of this replica (logs).
    interval_s : float
        Seconds between syncs (:meth:`run`).
    horizon_s : float
        How long after it was received a reward is settled.
    hold : callable, optional
        True while the sync must not apply anything (rewards learnt here still wait for
        their store ids, e.g. in the service's journal).
    """

    def __init__(
        self,
        store: EventStore,
        replica_id: str,
        interval_s: float,
        horizon_s: float,
        hold: Callable[[], bool] | None = None,
        arm_limit: ArmLimit | None = None,
    ) -> None:
        if interval_s <= 0 or horizon_s <= 0:
            raise ValueError(
                f"interval_s and horizon_s must be > 0; got {interval_s} and {horizon_s}."
            )
        self.store = store
        self.replica_id = replica_id
        self.interval_s = interval_s
        self.horizon = timedelta(seconds=horizon_s)
        self._hold = hold
        self.arm_limit = arm_limit
        self._claims: dict[str, set[int]] = {}
        self._claims_lock = threading.Lock()
        self._trackers: weakref.WeakKeyDictionary[ServedModel, _Tracker] = (
            weakref.WeakKeyDictionary()
        )
        self._warned: set[str] = set()
        self._outage = OutageLog(log, "replica sync")
        self.syncs = 0

    # ------------------------------------------------------------------ claims
    def claim(self, rewards: Iterable[tuple[str | None, int]]) -> None:
        """Record ``(version, reward id)`` pairs this replica applies itself (any thread)."""
        with self._claims_lock:
            for version, reward_id in rewards:
                if version is not None:
                    self._claims.setdefault(version, set()).add(int(reward_id))

    def claiming(self, write: Callable[[Any, Sequence[Any]], list[Any]]) -> Callable[..., Any]:
        """``write`` (the event writer's ``(connection, items) -> results``) that also
        claims the applied rewards it inserts, inside the same transaction."""

        def write_and_claim(conn: Any, items: Sequence[Any]) -> list[Any]:
            results = write(conn, items)
            self.claim(
                (item.model_version, res.id)
                for item, res in zip(items, results, strict=True)
                if isinstance(item, RewardRow) and res is not None and res.applied
            )
            return results

        return write_and_claim

    def _claimed(self, version: str) -> set[int]:
        with self._claims_lock:
            return set(self._claims.get(version, ()))

    def _forget_claims(self, version: str, floor: int) -> None:
        with self._claims_lock:
            claims = self._claims.get(version)
            if claims:
                claims.difference_update([i for i in claims if i <= floor])

    def _drop_unserved(self, versions: set[str]) -> None:
        with self._claims_lock:
            for version in list(self._claims):
                if version not in versions:
                    del self._claims[version]

    # ------------------------------------------------------------------ sync
    def _tracker(self, model: ServedModel) -> _Tracker:
        tracker = self._trackers.get(model)
        if tracker is None:
            seen = {int(i) for i in model.replayed_ids}
            tracker = _Tracker(model.replayed_after, seen, max(seen, default=model.replayed_after))
            self._trackers[model] = tracker
            if order_dependent(model.policy) and model.version not in self._warned:
                self._warned.add(model.version)
                log.warning(
                    "version %s learns order-dependently (discount, window or no Bayesian "
                    "head): replicas apply the same rewards in different orders and their "
                    "heads agree only approximately until they replay in id order",
                    model.version,
                )
        return tracker

    async def sync(self, models: Sequence[ServedModel]) -> SyncReport:
        """Loop thread: bring every served model up to the rewards in the store."""
        self._drop_unserved({m.version for m in models})
        applied: dict[str, int] = {}
        for model in models:
            if self._hold is not None and self._hold():
                break
            applied[model.version] = await self._sync_one(model)
        self.syncs += 1
        return SyncReport(applied)

    async def _sync_one(self, model: ServedModel) -> int:
        tracker = self._tracker(model)
        recheck = time.monotonic() - tracker.checked_at >= self.horizon.total_seconds() / 4
        after = tracker.floor if recheck else tracker.high
        ids, _ = await asyncio.to_thread(
            self.store.applied_reward_ids, model.version, after, model.window_stop
        )
        read_at = time.monotonic()
        for i in ids:
            tracker.first_read.setdefault(int(i), read_at)
        claimed = self._claimed(model.version)
        missing = [int(i) for i in ids if int(i) not in tracker.seen and int(i) not in claimed]
        fetched = []
        for start in range(0, len(missing), FETCH_CHUNK):
            chunk = missing[start : start + FETCH_CHUNK]
            fetched.append(
                await asyncio.to_thread(
                    self.store.applied_rewards, model.version, after, chunk, model.window_stop
                )
            )
        # back on the loop: nothing else touches the policy while this runs
        if self._hold is not None and self._hold():
            return 0
        count = 0
        claimed = self._claimed(model.version)  # rewards learnt here since the read
        for rows in fetched:
            keep = [j for j, i in enumerate(rows.ids) if int(i) not in claimed]
            if not keep:
                continue
            count += self._learn(model, rows, keep)
            tracker.seen.update(int(rows.ids[j]) for j in keep)
        if len(ids):
            tracker.high = max(tracker.high, int(ids[-1]))
        if recheck:
            tracker.checked_at = time.monotonic()
            self._advance(model.version, tracker)
        if count:
            log.debug(
                "replica %s: %d rewards of %s from other replicas",
                self.replica_id,
                count,
                model.version,
            )
        return count

    def _learn(self, model: ServedModel, rows: AppliedRewards, keep: list[int]) -> int:
        """Learn rows ``keep`` in order (a reward the head refuses is skipped, as it is
        by recovery, never retried); the number learnt."""
        limit = None if self.arm_limit is None else self.arm_limit.of(model.policy)
        learnt = learn_rewards(model.policy, rows.take(keep), model.version, limit)
        model.applied_rewards += learnt
        model.last_reward_id = max(model.last_reward_id, int(rows.ids[keep].max()))
        return learnt

    def _advance(self, version: str, tracker: _Tracker) -> None:
        """Move ``floor`` up to the newest reward first read here a horizon ago."""
        cutoff = time.monotonic() - self.horizon.total_seconds()
        settled = [i for i, at in tracker.first_read.items() if at <= cutoff]
        if settled and max(settled) > tracker.floor:
            tracker.floor = max(settled)
            tracker.seen = {i for i in tracker.seen if i > tracker.floor}
            tracker.first_read = {
                i: at for i, at in tracker.first_read.items() if i > tracker.floor
            }
            self._forget_claims(version, tracker.floor)

    async def run(self, current: Callable[[], list[ServedModel]]) -> None:
        """Run forever: a sync every ``interval_s`` (failures are logged, never raised; a
        store outage once as it begins and once as it ends, :mod:`serving.store.outage_log`)."""
        while True:
            await asyncio.sleep(self.interval_s)
            started = time.perf_counter()
            try:
                report = await self.sync(current())
            except Exception as exc:  # an outage: one line as it begins, one as it ends
                self._outage.failed(exc)
                continue
            self._outage.succeeded()
            if report.total:
                log.info(
                    "replica %s: applied %d rewards of other replicas in %.3f s",
                    self.replica_id,
                    report.total,
                    time.perf_counter() - started,
                )
