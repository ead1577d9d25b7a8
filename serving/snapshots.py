"""Head snapshots: every N applied rewards, every T seconds, and at shutdown.

A snapshot's state is copied (``policy.to_state()``) in a worker thread while the
:class:`HeadGate` holds every change to the served heads, so the event loop keeps deciding
during the copy (10–40 ms for a per-arm head of 16,000 arms) instead of stalling for it;
the rewards that arrive meanwhile are learnt, in order, when the copy ends, and their
answers wait for that. A policy whose ``select`` records state (an exposure cap) is copied
on the loop, where it decides. The state is then checked (every array finite) and
serialised in a worker thread, in memory and in parts of ``part_bytes``
(:func:`bandit_core.state.state_to_parts`: no copy of the whole state holds the
interpreter lock), and committed one part per transaction, the snapshot's row last
(where, :func:`own_writer` says: beside the events on SQLite, on a writer of its own
elsewhere). No event commits behind more than one part; before, one 68 MB state in one
transaction held the events behind it for 0.17 s on SQLite and 3.3 s on PostgreSQL. It
records ``last_reward_id``: recovery loads the snapshot covering the most rewards and
replays the applied rewards after that id.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from bandit_core import PolicyState
from bandit_core.policies.base import fold_pending
from bandit_core.policies.wrappers import records_on_select
from bandit_core.state import state_to_parts
from eventstore.admission import first_non_finite
from eventstore.leases import Lease
from eventstore.records import SnapshotPart, SnapshotRow
from serving.models.served import ServedModel
from serving.store.repository import (
    DropParts,
    SupersededSnapshots,
    batch_landed,
    write_events,
)
from serving.store.writer import GroupCommitWriter

log = logging.getLogger(__name__)

#: Parts of a superseded snapshot deleted per transaction.
PARTS_PER_DROP = 4

Commit = Callable[[SnapshotRow | SnapshotPart | SupersededSnapshots | DropParts], Awaitable[Any]]


def own_writer(
    engine: Engine, probe_s: float, statement_timeout_s: float | None = None
) -> GroupCommitWriter[Any, Any] | None:
    """The writer snapshots commit on, not started: None on SQLite, where they commit
    beside the events (one lock guards the file: a writer of their own would make the
    events wait in SQLite's busy handler), a writer of their own elsewhere (PostgreSQL:
    the events never wait behind them), which checks an unreachable database every
    ``probe_s`` seconds as the events' writer does (``store_probe_s``) and bounds its
    statements alike (``statement_timeout_s``)."""
    if engine.dialect.name == "sqlite":
        return None
    return GroupCommitWriter(
        engine,
        write_events,
        max_batch=1,
        name="banditops-snapshot-writer",
        probe_s=probe_s,
        landed=batch_landed,
        statement_timeout_s=statement_timeout_s,
    )


class HeadGate:
    """Event-loop work that changes served heads, held while a head's state is copied in
    a worker thread, then run in the order it arrived.

    Every change to a served policy on the loop (a reward's update, the journal's ids that
    move ``last_reward_id``) goes through :meth:`run`; a copy closes the gate
    (:meth:`close`) for its duration and opens it (:meth:`open`) after. Loop thread only.
    """

    def __init__(self) -> None:
        self._closed = 0
        self._held: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._opened = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed > 0

    def run(self, job: Callable[..., Any], *args: Any) -> None:
        """``job(*args)`` now, or when the gate opens (after the jobs held before it)."""
        if self._closed:
            self._held.append((job, args))
        else:
            job(*args)

    def close(self) -> None:
        if not self._closed:
            self._opened = asyncio.Event()
        self._closed += 1

    def open(self) -> None:
        """End one copy; with none left, run the held jobs and wake :meth:`opened`."""
        self._closed -= 1
        if self._closed:
            return
        woken = self._opened
        held, self._held = self._held, []
        for job, args in held:
            try:
                job(*args)
            except Exception:  # as the loop does for a callback: log it, run the rest
                log.exception("held head change %r failed", job)
        woken.set()

    async def opened(self) -> None:
        """Wait until the gate is open (at once when it is)."""
        if self._closed:
            await self._opened.wait()


class Snapshotter:
    """Decides when to snapshot a served head and writes the snapshot.

    Parameters
    ----------
    commit : async callable
        Commits a :class:`SnapshotRow` (and returns its id) or a :class:`SnapshotPart`.
    every_rewards : int
        Snapshot a head after this many applied rewards.
    every_s : float
        ... or when it has unsaved rewards this many seconds after its last snapshot.
    enabled : bool
        False turns snapshots off (several workers: each rebuilds from the store).
    gate : HeadGate
        Closed while a state is copied in a worker thread.
    part_bytes : int
        Most bytes of state in one transaction.
    keep : int
        Snapshots of a version kept: after each one, those beyond the ``keep`` that
        recovery tries first are deleted (a part or a few per transaction).
    hold : callable, optional
        True for a model that must not be snapshotted now: its head learnt rewards that
        are in the local journal and have no store id yet, so ``last_reward_id`` could not
        say what the snapshot covers.
    lease : Lease, optional
        This process's lease as the store's only writer (:mod:`eventstore.leases`): a
        snapshot is kept only while it holds (lost: none is taken any more).
    """

    def __init__(
        self,
        commit: Commit,
        every_rewards: int,
        every_s: float,
        enabled: bool,
        gate: HeadGate,
        part_bytes: int,
        keep: int,
        hold: Callable[[ServedModel], bool] | None = None,
        on_unsafe: Callable[[], None] | None = None,
        lease: Lease | None = None,
    ) -> None:
        if part_bytes < 1:
            raise ValueError(f"part_bytes must be at least 1; got {part_bytes}.")
        if keep < 1:
            raise ValueError(f"keep must be at least 1; got {keep}.")
        self._gate = gate
        self.part_bytes = part_bytes
        self.keep = keep
        self._on_unsafe = on_unsafe
        self._commit = commit
        self.every_rewards = every_rewards
        self.every_s = every_s
        self.enabled = enabled
        self._hold = hold
        self.lease = lease
        self._pending: set[asyncio.Task[int | None]] = set()

    def after_reward(self, model: ServedModel) -> None:
        """Loop thread: snapshot when N rewards have accumulated, once the loop is done
        with the batch of rewards being learnt (never in the middle of one)."""
        if model.rewards_since_snapshot >= self.every_rewards:
            asyncio.get_running_loop().call_soon(self._due, model)

    def _due(self, model: ServedModel) -> None:
        if model.rewards_since_snapshot >= self.every_rewards:
            self.take(model)

    def take(self, model: ServedModel) -> asyncio.Task[int | None] | None:
        """Loop thread: the state as it is now, copied in a worker thread behind the
        closed gate (on the loop for a policy that records on ``select``), then
        serialised and committed in the background."""
        if not self.enabled or (self._hold is not None and self._hold(model)):
            return None
        if self.lease is not None and not self.lease.held:
            return None  # lost to another process (its rewards are not in this head)
        meta = {
            "model_version": model.version,
            "last_reward_id": model.last_reward_id,
            "applied_rewards": model.applied_rewards,
            "incarnation": model.incarnation,
        }
        model.rewards_since_snapshot = 0
        model.last_snapshot_at = time.monotonic()
        task = asyncio.create_task(self._write_copied(self.copy_state(model.policy), meta))
        self._pending.add(task)
        task.add_done_callback(self._done)
        return task

    def copy_state(self, policy: Any) -> asyncio.Future[PolicyState]:
        """Loop thread: ``policy.to_state()`` as it is now — copied in a worker thread
        behind the closed gate (what the policy keeps pending folded here first:
        :func:`~bandit_core.policies.base.fold_pending`), or at once on the loop for a
        policy that records on ``select`` (it decides there)."""
        loop = asyncio.get_running_loop()
        if records_on_select(policy):
            done: asyncio.Future[PolicyState] = loop.create_future()
            done.set_result(policy.to_state())
            return done
        fold_pending(policy)  # here: the copy then only reads the policy
        self._gate.close()
        # the gate opens when the copy ends, whatever becomes of a task awaiting it
        copied = loop.run_in_executor(None, policy.to_state)
        copied.add_done_callback(lambda _: self._gate.open())
        return copied

    async def _write_copied(
        self, copied: asyncio.Future[PolicyState], meta: dict[str, Any]
    ) -> int | None:
        return await self._write(await copied, meta)

    def _checked_parts(self, state: PolicyState, version: str) -> list[bytes] | None:
        """Worker thread: the state's bytes in parts, or None when an array is not finite
        (never persist a poisoned head: recovery would bring it back)."""
        bad = first_non_finite(state.arrays)
        if bad is not None:
            log.error("no snapshot of %s: state array %r is not finite", version, bad)
            if self._on_unsafe is not None:
                self._on_unsafe()  # a Prometheus counter: safe from any thread
            return None
        return state_to_parts(state, self.part_bytes)

    def _done(self, task: asyncio.Task[int | None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("snapshot not written: %s", task.exception())

    async def _write(self, state: PolicyState, meta: dict[str, Any]) -> int | None:
        parts = await asyncio.to_thread(self._checked_parts, state, meta["model_version"])
        if parts is None:
            return None
        created_at = datetime.now(UTC)
        parts_key = None if len(parts) == 1 else uuid.uuid4().hex
        row = SnapshotRow(
            created_at=created_at,
            policy=state.policy,
            state=parts[-1],
            parts_key=parts_key,
            lease=None if self.lease is None else self.lease.token,
            **meta,
        )
        try:
            if parts_key is not None:  # the leading parts first, each in its own transaction
                for seq, part in enumerate(parts[:-1]):
                    await self._commit(SnapshotPart(parts_key, seq, created_at, part))
            snapshot_id: int | None = await self._commit(row)
        except Exception:
            # the parts written so far belong to no snapshot: before, each failed attempt
            # left them (a part or more of a whole head per attempt, on a disk already
            # full) until retention's horizon (resources pass, stop 50)
            if parts_key is not None:
                await self._drop_quietly(parts_key)
            raise
        if snapshot_id is None:  # the lease no longer held when it committed
            log.warning(
                "no snapshot of %s: this process's lease on the store had lapsed or was "
                "lost as it committed",
                meta["model_version"],
            )
            if parts_key is not None:
                await self._drop(parts_key)
            return None
        log.info(
            "snapshot %d of %s after reward %d",
            snapshot_id,
            meta["model_version"],
            meta["last_reward_id"],
        )
        await self._delete_superseded(meta["model_version"], meta["incarnation"])
        return snapshot_id

    async def _delete_superseded(self, version: str, incarnation: str | None) -> None:
        """Delete the snapshots of ``version`` beyond the ``keep`` newest, their parts a
        few per transaction (what a failure here leaves, retention deletes)."""
        try:
            keys: list[str] = await self._commit(
                SupersededSnapshots(version, self.keep, incarnation)
            )
            for key in keys:
                await self._drop(key)
        except Exception as exc:
            log.warning("superseded snapshots of %s not deleted yet: %s", version, exc)

    async def _drop_quietly(self, parts_key: str) -> None:
        """:meth:`_drop`, whose own failure is logged (retention deletes what it leaves)."""
        try:
            await self._drop(parts_key)
        except Exception as exc:
            log.warning(
                "parts %s of a snapshot not written are not deleted yet: %s", parts_key, exc
            )

    async def _drop(self, parts_key: str) -> None:
        """Delete the parts of ``parts_key``, a few per transaction."""
        while await self._commit(DropParts(parts_key, PARTS_PER_DROP)) == PARTS_PER_DROP:
            pass

    async def dirty(self, models: Iterable[ServedModel]) -> list[int]:
        """Snapshot every head with unsaved rewards; the ids written (a head that is not
        finite writes none)."""
        tasks = [self.take(m) for m in models if m.rewards_since_snapshot > 0]
        written = [await t for t in tasks if t is not None]
        return [i for i in written if i is not None]

    async def timer(self, current: Callable[[], Iterable[ServedModel]]) -> None:
        """Run forever: snapshot heads whose unsaved rewards are older than ``every_s``."""
        while True:
            await asyncio.sleep(min(self.every_s, 5.0))
            now = time.monotonic()
            for model in current():
                if (
                    model.rewards_since_snapshot > 0
                    and now - model.last_snapshot_at >= self.every_s
                ):
                    self.take(model)

    async def drain(self) -> None:
        """Wait for the snapshots in flight."""
        await asyncio.gather(*list(self._pending), return_exceptions=True)
