"""The decision service: select and log, learn from each reward, snapshot heads.

Threads and what they own:

* the **event loop** (request handlers) owns every policy object: decisions and reward
  application run there, so no lock is needed and the request-path numpy runs
  single-threaded (``threadpool_limits(1)``). Every change to a served head on the loop
  goes through the head gate (:class:`serving.snapshots.HeadGate`), which holds them
  while a worker thread copies a head's state for a snapshot (the loop keeps deciding);
* the **writer** thread commits events in groups (:mod:`serving.store.writer`); after a
  commit it schedules the application of the batch's rewards on the loop *before*
  completing the requests' futures, so a reward's response is sent after its head update
  (held by the gate, the response waits for it), and heads learn in reward-id order
  (which is what recovery replays);
* the **loader** thread polls the model source and swaps the served set;
* the **decision** thread (at ``costly_work_nice``: :mod:`serving.lanes`) chooses the
  decisions costing more than ``inline_work_units`` (:mod:`serving.budget`), each on a
  copy of the policy for its candidates taken on the loop (its cost does not grow with
  the arms learnt: :mod:`bandit_core.policies.decision_copy`), so it never touches a
  live policy; past ``decision_deadline_s`` the fallback answers instead. A policy whose
  ``select`` records state (an exposure cap) always decides on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from threadpoolctl import threadpool_limits

from bandit_core import Candidates
from bandit_core.policies.decision_copy import decision_copy
from bandit_core.policies.linear import ArmLimit
from bandit_core.policies.overlap import for_users
from bandit_core.policies.position import update_at
from bandit_core.policies.wrappers import records_on_select
from bandit_core.state import state_to_parts
from eventstore import records
from eventstore.admission import Admission
from eventstore.contract import CANDIDATE, FALLBACK_LABELS, PRODUCTION
from eventstore.engine import store_identity
from eventstore.leases import SHARED, SOLE, Lease
from eventstore.migrate import require_current
from eventstore.records import DecisionGroup, DecisionRow, RewardOutcome, RewardRow
from eventstore.rollouts import latest_rollout
from serving.budget import (
    Limits,
    NonFiniteChoiceError,
    body_lengths,
    check_budget,
    check_choice_finite,
    check_lengths,
    check_magnitude,
    check_width,
    grouped_lengths,
    learnable,
    work_units,
)
from serving.catalog.index import Retrieved
from serving.catalog.runtime import CatalogService
from serving.decide import Choice, ChoiceOptions, choose, decision_row, event_time
from serving.identity import hash_user, route
from serving.inputs import (
    DecisionInput,
    InputError,
    Loc,
    candidate_set,
    check_position,
    check_reward,
    check_same_reward,
    check_signature,
    check_slate,
    context_vector,
)
from serving.lanes import lowered_executor
from serving.metrics import ServiceMetrics
from serving.models.fallback import FallbackPolicy
from serving.models.loader import ModelLoader, RolloutTarget
from serving.models.recovery import catch_up
from serving.models.served import ServedModel, ServingSet, Signature, find_head
from serving.models.sources import FileModelSource, ModelSource
from serving.replica_sync import ReplicaSync, replica_name
from serving.schemas import (
    Candidate,
    DecisionRequest,
    DecisionResponse,
    ModelInfo,
    RewardRequest,
    RewardResponse,
    ServedModelInfo,
)
from serving.settings import Settings
from serving.snapshots import HeadGate, Snapshotter, own_writer
from serving.store.engine import checkpointer, store_engine, transaction_bound_s
from serving.store.journal import DrainReport, Journal, stored_decision
from serving.store.reads import call_within, read_within
from serving.store.repository import (
    EventStore,
    RefusedReward,
    StoredDecision,
    batch_landed,
    write_events,
)
from serving.store.writer import GroupCommitWriter, WriterClosedError

log = logging.getLogger(__name__)

#: Refused head updates kept in memory, the newest (see ``_refused``).
_REFUSALS_KEPT = 1024
#: How long the loader waits for the event loop to take newly loaded models.
_SWAP_WAIT_S = 30.0
#: Why a process whose lease was lost for good takes no events (503s, ``/healthz``).
LEASE_LOST_REASON = (
    "this service lost its lease on the event store to another serving process and "
    "takes no more events until it restarts (its log says which)"
)


class PastDeadlineError(TimeoutError):
    """A choice not even started: its request's deadline had passed (a grouped request's
    later groups). Counted, not logged again: one line per request, not per group."""


class NotReadyError(RuntimeError):
    """No model and no fallback decided yet (503)."""


class NotFoundError(LookupError):
    """An event id the store does not know, or a role no model serves (404)."""


class StoreUnavailableError(RuntimeError):
    """The event could not be committed, so it is not acknowledged (503).

    ``maybe_stored``: its transaction began before the failure, so it may still be
    stored (else it was not)."""

    def __init__(self, message: str, *, maybe_stored: bool = False) -> None:
        super().__init__(message)
        self.maybe_stored = maybe_stored


def _call(job: Callable[[], None]) -> None:
    job()


def _outcome_into(done: concurrent.futures.Future[None], job: Callable[[], object]) -> None:
    """Run ``job`` and settle ``done`` with its outcome."""
    try:
        job()
    except BaseException as exc:
        done.set_exception(exc)
    else:
        done.set_result(None)


def _wait_on_loop(
    loop: asyncio.AbstractEventLoop,
    schedule: Callable[[Callable[[], None]], None],
    job: Callable[[], None],
) -> None:
    """From another thread: ``job`` run on ``loop`` by ``schedule`` (``_call``, or the head
    gate's ``run``), waited for at most ``_SWAP_WAIT_S``; its exception raised here."""
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        if done.set_running_or_notify_cancel():  # else given up on (below)
            _outcome_into(done, job)

    loop.call_soon_threadsafe(schedule, run)
    try:
        done.result(timeout=_SWAP_WAIT_S)
    except concurrent.futures.TimeoutError:
        if done.cancel():
            raise TimeoutError(
                f"the event loop did not take the new models within {_SWAP_WAIT_S} s"
            ) from None
        done.result()  # running now: wait for it


def _within(deadline_s: float, what: str, job: Callable[[], object]) -> None:
    """``job()`` in a thread of its own, waited for at most ``deadline_s``: past it
    :class:`StoreUnavailableError`."""
    try:
        call_within(deadline_s, "banditops-catch-up", job)
    except TimeoutError:
        raise StoreUnavailableError(
            f"the event store did not answer within {deadline_s:g} s to read {what}"
        ) from None


def _on_loop(future: concurrent.futures.Future[Any]) -> asyncio.Future[Any]:
    """An asyncio future with ``future``'s outcome. Unlike :func:`asyncio.wrap_future`,
    cancelling it (a request cancelled, a deadline) leaves ``future`` alone: withdrawing
    an item is the caller's explicit choice (``future.cancel()``)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()

    def copy(done: concurrent.futures.Future[Any]) -> None:
        if waiter.cancelled():
            return
        if done.cancelled():
            waiter.cancel()
        elif (exc := done.exception()) is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(done.result())

    def hand_over(done: concurrent.futures.Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # a loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(copy, done)

    future.add_done_callback(hand_over)
    return waiter


@dataclass(frozen=True)
class LearnInput:
    """What a head needs to learn from a reward of a decision: the item shown at
    ``position`` (a position-aware model adds that position's one-hot), and when the
    decision was made (``decided_at``: which served versions' windows it is after)."""

    context: NDArray[np.float64]
    arm_id: str
    arm_features: NDArray[np.float64]
    position: int = 0
    decided_at: datetime | None = None


def _why_not_applicable(late: bool, decision: StoredDecision, served: ServingSet) -> str | None:
    """Why a (first) reward of ``decision`` cannot update a head here, or None."""
    if late:
        return records.LATE
    if decision.fallback:
        return records.FALLBACK
    if not _learnt_here(decision, served):
        return records.NOT_SERVED
    return None


def _learnt_here(decision: StoredDecision, served: ServingSet) -> bool:
    """Whether a served head learns a reward of ``decision``: the deciding version's
    (:meth:`ServedModel.learns_own`), or one whose training window stops at or before the
    decision — it learns every later decision's reward, whichever version made it, so a
    reward of a version swapped out (production's, outstanding when its candidate was
    promoted) is still learnt by its successor rather than lost as ``not_served``."""
    created = decision.created_at
    model = served.for_version(decision.model_version)
    if model is not None and model.learns_own(created):
        return True
    return any(m.window_stop is not None and created >= m.window_stop for m in served.models())


def build_source(settings: Settings) -> ModelSource:
    """The MLflow registry source when a tracking URI is set, else local files."""
    admission = Admission.from_settings(
        settings, dim_user=settings.expected_dim_user, dim_arm=settings.model_dim_arm
    )
    if settings.mlflow_tracking_uri is not None:
        from serving.models.mlflow_source import MlflowModelSource

        return MlflowModelSource(
            settings.mlflow_tracking_uri,
            settings.model_name,
            {PRODUCTION: settings.production_alias, CANDIDATE: settings.candidate_alias},
            registry_uri=settings.mlflow_registry_uri,
            admission=admission,
        )
    return FileModelSource(
        {PRODUCTION: settings.model_path, CANDIDATE: settings.candidate_model_path},
        admission,
    )


class DecisionService:
    """Everything behind the HTTP endpoints.

    Parameters
    ----------
    settings : Settings
    engine : Engine
        The event store (already at the current migration).
    source : ModelSource
    metrics : ServiceMetrics
    rng : numpy Generator, optional
        Randomness of every decision (default: seeded from ``settings.seed``).
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        source: ModelSource,
        metrics: ServiceMetrics,
        rng: np.random.Generator | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = EventStore(engine)
        self.metrics = metrics
        self.rng = rng if rng is not None else np.random.default_rng(settings.seed)
        self.fallback = FallbackPolicy(settings.fallback_policy, settings.fallback_epsilon)
        self.salt = settings.resolve_salt()
        self.journal: Journal | None = None
        if settings.journal:
            self.journal = Journal(
                settings.journal_path,
                settings.journal_max_bytes,
                # another replica may reward this one's decisions: its ledger only
                # counts the rewards this process committed
                exclusive=settings.sole_writer,
                ledger_size=settings.decision_cache_size,
                observer=metrics,
                store=store_identity(engine),
            )
        # rewards a head learnt from that are journaled, not yet in the store, per version
        self._unsynced: dict[str, int] = {}
        # every change to a served head on the loop goes through the gate, which holds
        # them while a snapshot copies a head's state in a worker thread
        self.gate = HeadGate()
        # (event id, ordinal) of rewards whose head update waits behind the gate
        self._held_rewards: set[tuple[str, int]] = set()
        #: most arms a per-arm head learns online (README: max_arms): the registry's
        #: bound on a version's size bounds the head it grows into too
        self.arm_limit = ArmLimit(settings.max_arms, settings.model_max_bytes)
        # which serving processes write the store, and whether this one may take itself
        # for the only one (eventstore.leases)
        # (one taken before the service was built: renewed and released here, on its
        # engine)
        if lease is None:
            lease = Lease(
                engine,
                replica_name(settings.replica_id),
                SOLE if settings.sole_writer else SHARED,
                settings.lease_s,
            )
        lease.engine = engine
        self.lease = lease
        if self.journal is not None:  # a drain writes only under a lease that holds
            self.journal.guard = lambda conn: self.lease.writing(conn)
        self.replicas: ReplicaSync | None = None
        if settings.replica_sync_s > 0:  # several replicas: apply the others' rewards
            self.replicas = ReplicaSync(
                self.store,
                replica_name(settings.replica_id),
                settings.replica_sync_s,
                settings.replica_sync_horizon_s,
                # journaled rewards without ids yet, or a state copy in progress (the
                # head gate's): the next sync learns them
                hold=lambda: bool(self._unsynced) or self.gate.closed,
                arm_limit=self.arm_limit,
            )
        write = write_events if self.replicas is None else self.replicas.claiming(write_events)
        self.writer: GroupCommitWriter[Any, Any] = GroupCommitWriter(
            engine,
            self._under_lease(write),
            max_batch=settings.writer_max_batch,
            on_committed=self._on_committed,
            on_batch=metrics.observe_batch,
            spool=self.journal,
            on_drained=self._on_drained,
            on_degraded=metrics.set_degraded,
            probe_s=settings.store_probe_s,
            landed=batch_landed,
            statement_timeout_s=transaction_bound_s(settings),
            # an outage's retries leave half the deadline to the journal's fsync
            retry_budget_s=settings.store_deadline_s / 2,
            # a lease lost to another process: nothing more reaches the store from here
            fenced=lambda: self.lease.lost,
        )
        self.loader = ModelLoader(
            source,
            self.store,
            settings.poll_interval_s,
            settings.candidate_share,
            on_swap=self._on_swap,
            expected_dim_user=settings.expected_dim_user,
            expected_dim_arm=settings.model_dim_arm,
            on_failure=lambda reason, _msg: metrics.model_load_failures.labels(reason).inc(),
            rollout=self._running_rollout,
            arm_limit=self.arm_limit,
            max_work_units=settings.max_work_units,
            install=self._install,
        )
        # several workers or synced replicas rebuild from the store: no snapshots
        snapshots = settings.sole_writer
        # None: the snapshots commit beside the events (SQLite), or there are none
        self._snapshot_writer = (
            own_writer(engine, settings.store_probe_s, transaction_bound_s(settings))
            if snapshots
            else None
        )
        self.snapshots = Snapshotter(
            self._commit_snapshot,
            settings.snapshot_every_rewards,
            settings.snapshot_every_s,
            enabled=snapshots,
            gate=self.gate,
            part_bytes=settings.snapshot_part_bytes,
            keep=settings.snapshot_keep,
            hold=lambda model: self._unsynced.get(model.version, 0) > 0,
            on_unsafe=metrics.unsafe_heads.inc,
            lease=self.lease if snapshots else None,
        )
        self.catalog = CatalogService(engine, settings)
        # the SQLite log's checkpoints, off the commit path (0: inside commits, SQLite's)
        self.checkpointer = checkpointer(engine, settings)
        self._cache: OrderedDict[str, StoredDecision] = OrderedDict()
        self._cache_bytes = 0  # the cache's StoredDecision.nbytes
        # (event id, ordinal) of rewards whose deciding head refused the update → the
        # write that stores it (None: journaled, not in the store yet); the repeats of
        # its key judged before the store held it read it here (bounded, oldest out)
        self._refused: OrderedDict[tuple[str, int], concurrent.futures.Future[Any] | None] = (
            OrderedDict()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._blas: Any = None
        # costly decisions are chosen here, on a copy of the policy (``choose_for``),
        # behind the loop
        self._decider = lowered_executor("banditops-decide", settings.costly_work_nice)

    @classmethod
    def from_settings(
        cls, settings: Settings, metrics: ServiceMetrics, lease: Lease | None = None
    ) -> DecisionService:
        engine = store_engine(settings)
        require_current(engine)
        return cls(settings, engine, build_source(settings), metrics, lease=lease)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # first: a process that may not write beside the others writes nothing
        if self.lease.held:  # taken by `serve`: renewed at once (its start took time)
            await asyncio.to_thread(self.lease.renew)
        if not self.lease.held:
            # lost between `serve`'s take and now (nothing was written under it): the
            # start waits for it as any start does, or fails
            self.lease.lost = False
            await asyncio.to_thread(self.lease.acquire)
        self._lease_task = asyncio.create_task(self._renew_lease())
        self._blas = threadpool_limits(limits=1)
        try:
            if self.journal is not None:  # events of a run that ended degraded go first
                await self._recover_journal(self.journal)
                self.journal.open()
            await self.catalog.start()
        except BaseException:  # a failed start holds no lease
            self._lease_task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.lease.release)
            raise
        if self.checkpointer is not None:
            self.checkpointer.start()
        self.writer.start()
        if self._snapshot_writer is not None:
            self._snapshot_writer.start()
        self.loader.start()
        # everything allocated so far (imported modules, settings, the catalog) lives as
        # long as the process: keep it out of the collector's full passes, which would
        # otherwise scan it and stall the event loop for hundreds of milliseconds
        gc.freeze()
        self._timer = asyncio.create_task(self.snapshots.timer(self._served_models))
        if self.replicas is not None:
            self._sync_task = asyncio.create_task(self.replicas.run(self._served_models))

    async def _recover_journal(self, journal: Journal) -> None:
        """Drain the journal a previous run left (:meth:`Journal.recover`) in a daemon
        thread, watched: a transaction of it that takes longer than ``store_deadline_s``
        fails the start (a store that stops answering in the middle of a statement never
        raises: the start waited for ever, its port never opened and SIGTERM went
        unanswered). The thread is left behind, a daemon: the process can still exit."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        last = [time.monotonic()]

        def progress() -> None:
            last[0] = time.monotonic()

        def settle(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def run() -> None:
            outcome: BaseException | None = None
            try:
                journal.recover(self.engine, progress)
            except BaseException as exc:  # the waiter's to raise, if it still waits
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, outcome)

        threading.Thread(target=run, name="journal-recover", daemon=True).start()
        bound = self.settings.store_deadline_s
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout=min(1.0, bound))
                return
            except TimeoutError:
                stalled = time.monotonic() - last[0]
                if stalled > bound:
                    raise StoreUnavailableError(
                        f"the journal a previous run left could not be drained: the event "
                        f"store has not finished a write of it for {stalled:.0f} s "
                        f"(store_deadline_s {bound:g}); the journal is kept for the next "
                        "start"
                    ) from None

    async def stop(self) -> None:
        """Stop polling, snapshot every head with unsaved rewards, commit, close."""
        await asyncio.to_thread(self.loader.stop)
        await self.catalog.stop()
        if self._timer is not None:
            self._timer.cancel()
        if self._sync_task is not None:
            self._sync_task.cancel()
        if self._lease_task is not None:
            self._lease_task.cancel()
        try:
            await self.snapshots.dirty(self._served_models())
        except StoreUnavailableError as exc:  # the heads recover from the store later
            log.warning("no final snapshot: %s", exc)
        await self.snapshots.drain()
        self._decider.shutdown(wait=False, cancel_futures=True)
        if self._snapshot_writer is not None:
            await asyncio.to_thread(self._snapshot_writer.close)
        await asyncio.to_thread(self.writer.close)
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.stop)
        if self.journal is not None:
            self.journal.close()
        try:
            await asyncio.to_thread(self.lease.release)
        except Exception as exc:  # it lapses by itself
            log.warning("lease on the event store not released: %s", exc)
        self.engine.dispose()
        if self._blas is not None:
            self._blas.restore_original_limits()

    def _under_lease(
        self, write: Callable[[Any, Sequence[Any]], list[Any]]
    ) -> Callable[[Any, Sequence[Any]], list[Any]]:
        """``write`` (the writer's ``(connection, items) -> results``), committed only while
        this process's lease holds (:meth:`eventstore.leases.Lease.writing`): a process
        that has not renewed it for longer than the lease never writes beside the one
        that took over, whatever its renewals have found yet."""

        def write_under_lease(conn: Any, items: Sequence[Any]) -> list[Any]:
            with self.lease.writing(conn):
                return write(conn, items)

        return write_under_lease

    async def _renew_lease(self) -> None:
        """Run forever: renew the lease every third of its length. A store out of reach
        leaves it to lapse; a lease lost to another process ends the snapshots (the
        Snapshotter asks) and the journal's count of this process's rewards as the only
        ones."""
        while not self.lease.lost:
            await asyncio.sleep(self.lease.length_s / 3)
            try:
                await asyncio.to_thread(self.lease.renew)
            except Exception as exc:  # the store is out: the writer reports that
                log.debug("lease not renewed: %s", exc)
        self.metrics.lease_lost.set(1)
        if self.journal is not None:
            self.journal.exclusive = False

    @property
    def ready(self) -> bool:
        return self.loader.ready

    def _running_rollout(self) -> RolloutTarget | None:
        """The latest rollout of the served model (read at each model poll): a running
        one's share and version win over the fixed ``candidate_share``; past its end its
        share is 0, whether or not the controller has recorded the expiry yet. An ended
        one's version, unless promoted, gets no traffic from the fixed share."""
        rollout = latest_rollout(self.engine, self.settings.model_name)
        if rollout is None or rollout.status == "promoted":
            return None
        versions = (rollout.label, rollout.version)
        if not rollout.running:
            return RolloutTarget(versions, 0.0, running=False)
        share = 0.0 if rollout.past_its_end(datetime.now(UTC)) else rollout.share
        return RolloutTarget(versions, share)

    def signature_of(self, model: ServedModel | None) -> Signature | None:
        """The input shape a request decided by ``model`` must have: the model's, or —
        for the fallback — the widths ``model_dim_user`` (or ``context_features``) and
        ``model_dim_arm`` pin (None: any), so that the fallback logs only rows a model of
        those widths can learn."""
        if model is not None:
            return model.signature
        dim_user, dim_arm = self.settings.expected_dim_user, self.settings.model_dim_arm
        if dim_user is None and dim_arm is None:
            return None
        return Signature(dim_user, dim_arm or 0)

    def _served(self) -> ServingSet:
        served = self.loader.serving_set()
        if served is None:
            raise NotReadyError("no model or fallback is ready yet.")
        return served

    def _served_models(self) -> list[ServedModel]:
        served = self.loader.current
        return [] if served is None else served.models()

    async def snapshot_now(self) -> list[int]:
        """Snapshot every served head with rewards since its last snapshot."""
        return await self.snapshots.dirty(self._served().models())

    # ------------------------------------------------------------------ decisions
    def route(self, user_id: str | None) -> tuple[str | None, str, ServedModel | None]:
        """``(user hash, traffic arm, model of that arm)`` of a request.

        Raises
        ------
        NotReadyError
            Nothing serves yet (503).
        """
        served = self._served()
        user_hash = None if user_id is None else hash_user(user_id, self.salt)
        share = served.candidate_share if served.candidate is not None else 0.0
        traffic = route(user_hash, share, self.rng)
        model = served.candidate if traffic == CANDIDATE else served.production
        return user_hash, traffic, model

    async def decide(self, req: DecisionRequest) -> DecisionResponse:
        """Route, validate, choose (the fallback if the model fails), log, answer.

        Raises
        ------
        InputError
            A field does not fit the settings or the serving model (422).
        NotReadyError, StoreUnavailableError
            Nothing serves yet, or the decision could not be committed (503).
        """
        settings = self.settings
        user_hash, traffic, model = self.route(req.user_id)
        context = self.context_of(req.context)
        retrieved = None
        if req.retrieve is not None:
            if req.retrieve.query is not None:
                check_magnitude(
                    np.asarray(req.retrieve.query, dtype=np.float64),
                    settings.max_abs_feature,
                    ("body", "retrieve", "query"),
                )
            retrieved = self._retrieve(context, req.retrieve.k, req.retrieve.query)
            candidates = retrieved.candidates
        else:
            # the schema requires exactly one of candidates and retrieve
            candidates = self.candidates_of(cast(list[Candidate], req.candidates))
        inp = DecisionInput(context, candidates, user_hash)
        signature = self.signature_of(model)
        slots = 0
        if signature is not None:
            check_signature(inp, signature)
            slots = signature.position_slots
        check_slate(req.k, len(inp.candidates), settings.max_slate, slots)
        units = self.check_budget(model, inp, req.k)
        choice, fallback = await self.choose_for(model, inp, req.k, units)
        d = choice.decision
        row = decision_row(
            inp,
            choice,
            fallback=fallback,
            model_version=None if model is None else model.version,
            user_hash=user_hash,
            traffic=traffic,
            count_impressions=self.catalog.has_items,
            catalog_seq=None if retrieved is None else retrieved.catalog_seq,
            candidate_versions=None if retrieved is None else retrieved.versions,
            retrieval=None if retrieved is None else retrieved.summary,
        )
        await self.log_decision(row)
        ids = inp.candidates.ids
        return DecisionResponse(
            event_id=row.event_id,
            arm_id=d.arm_id,
            propensity=d.propensity,
            propensity_se=row.propensity_se,
            ranking=None if choice.ranking is None else [ids[i] for i in choice.ranking],
            slate_propensities=(
                None if choice.slate_propensities is None else list(choice.slate_propensities)
            ),
            position_propensities=(
                None if choice.position_propensities is None else list(choice.position_propensities)
            ),
            candidates=None if retrieved is None else list(ids),
            model_version=row.model_version,
            policy=d.policy,
            explored=row.explored,
            fallback=fallback,
            traffic=traffic,
        )

    def _retrieve(
        self, context: NDArray[np.float64], k: int, query: Sequence[float] | None
    ) -> Retrieved:
        if k > self.settings.max_retrieve:
            raise InputError(
                ("body", "retrieve", "k"),
                f"retrieve.k must be at most {self.settings.max_retrieve}; got {k}.",
            )
        vector = context if query is None else np.asarray(query, dtype=np.float64)
        return self.catalog.retrieve(vector, k)

    def context_of(self, context: Sequence[float] | dict[str, float]) -> NDArray[np.float64]:
        """The request's context as a vector within the width and magnitude limits."""
        settings = self.settings
        vector = context_vector(context, settings.context_features)
        check_width(
            vector.shape[0],
            settings.max_context_features,
            ("body", "context"),
            "context",
            "max_context_features",
        )
        check_magnitude(vector, settings.max_abs_feature, ("body", "context"))
        return vector

    def candidates_of(self, candidates: Sequence[Candidate]) -> Candidates:
        """Validated candidates within the count, width and magnitude limits."""
        settings = self.settings
        found = candidate_set(candidates, settings.max_candidates)
        where: Loc = ("body", "candidates", 0, "features")
        check_width(found.dim, settings.max_arm_features, where, "features", "max_arm_features")
        check_magnitude(found.features, settings.max_abs_feature, ("body", "candidates"))
        return found

    def check_budget(self, model: ServedModel | None, inp: DecisionInput, k: int | None) -> int:
        """The decision's work units (:mod:`serving.budget`); 422 beyond the budget."""
        settings = self.settings
        policy = model.policy if model is not None else self.fallback
        marginal = 0 if k is None or k == 1 else settings.slate_marginal_draws
        units = work_units(policy, len(inp.candidates), k, marginal)
        check_budget(units, settings.max_work_units)
        return units

    def check_budget_early(self, raw: Any, grouped: bool = False) -> None:
        """The request budget from a parsed decision body's lengths, before it is
        validated (:func:`serving.budget.body_lengths`; a grouped body's groups summed,
        :func:`serving.budget.grouped_lengths`), for the least costly model that could
        decide it: an over-budget request then costs its parse and nothing more. The
        full check (:meth:`check_budget`) still runs on every validated request."""
        settings = self.settings
        limits = Limits(settings.max_candidates, settings.max_groups, settings.max_context_features)
        check_lengths(raw, limits, grouped)
        found: list[tuple[int, int | None]] | None
        if grouped:
            sizes = grouped_lengths(raw)
            found = None if sizes is None else [(n, None) for n in sizes]
        else:
            lengths = body_lengths(raw)
            found = None if lengths is None else [lengths]
        if found is None:
            return
        policies: list[Any] = [m.policy for m in self._served_models()] or [self.fallback]
        units = 0
        for n, k in found:
            marginal = 0 if k is None or k == 1 else self.settings.slate_marginal_draws
            units += min(work_units(p, n, k, marginal) for p in policies)
        check_budget(units, self.settings.max_work_units)

    def _options(self, inp: DecisionInput, marginal: bool = True) -> ChoiceOptions:
        settings = self.settings
        return ChoiceOptions(
            marginal_draws=settings.slate_marginal_draws if marginal else 0,
            max_states=settings.slate_max_states,
            new_ids=self.catalog.new_ids(inp.candidates.ids),
            new_p_min=settings.new_item_p_min,
            new_max_share=settings.new_item_max_share,
        )

    async def choose_for(
        self,
        model: ServedModel | None,
        inp: DecisionInput,
        k: int | None,
        units: int = 0,
        deadline: float | None = None,
    ) -> tuple[Choice, bool]:
        """The model's choice, or the fallback's when there is no model, it fails, its
        scores are not finite, or (chosen in the decision thread) it misses the deadline:
        ``decision_deadline_s`` from now, or ``deadline`` (the event loop's clock) when
        that comes first — a grouped request's, shared by its groups.

        Decisions costing at most ``inline_work_units`` are chosen on the event loop;
        costlier ones on a copy of the policy in the decision thread, so the loop keeps
        answering. The fallback of a costly decision (past the deadline, or with no
        model) logs the conditional propensities only (exact), not the Monte-Carlo
        marginals, so it is cheap on the loop. The model decides for the request's user
        (:func:`bandit_core.policies.overlap.for_users`: its user-group floors).
        """
        costly = units > self.settings.inline_work_units
        options = self._options(inp)
        if model is not None:
            try:
                if not costly or records_on_select(model.policy):
                    policy = for_users(model.policy, [inp.user_hash])
                    choice = choose(policy, inp.context, inp.candidates, self.rng, k, options)
                else:
                    choice = await self._choose_off_loop(model, inp, k, options, deadline)
                check_choice_finite(
                    choice.decision, choice.slate_propensities, choice.position_propensities
                )
                return choice, False
            except TimeoutError as exc:
                if not isinstance(exc, PastDeadlineError):  # the request's first miss says it
                    log.warning(
                        "model %s missed the %.3f s decision deadline; the fallback decides",
                        model.version,
                        self.settings.decision_deadline_s,
                    )
                self.metrics.deadline_fallbacks.inc()
            except NonFiniteChoiceError as exc:  # the model's numbers: one line, counted
                log.warning("model %s: %s; the fallback decides", model.version, exc)
                self.metrics.model_errors.inc()
            except Exception:
                log.exception("model %s failed; the fallback decides", model.version)
                self.metrics.model_errors.inc()
        options = self._options(inp, marginal=not costly)
        return choose(self.fallback, inp.context, inp.candidates, self.rng, k, options), True

    async def _choose_off_loop(
        self,
        model: ServedModel,
        inp: DecisionInput,
        k: int | None,
        options: ChoiceOptions,
        deadline: float | None = None,
    ) -> Choice:
        """``choose`` on a copy of the policy for these candidates (taken here, on the
        loop, so it is consistent; :func:`~bandit_core.policies.decision_copy.decision_copy`
        copies the rows of the candidates' arms, not every arm's) in the decision thread;
        TimeoutError past the deadline (at once when ``deadline`` has passed)."""
        wait = self.settings.decision_deadline_s
        if deadline is not None:
            wait = min(wait, deadline - asyncio.get_running_loop().time())
            if wait <= 0:
                raise PastDeadlineError
        policy = for_users(decision_copy(model.policy, inp.candidates.ids), [inp.user_hash])
        rng = self.rng.spawn(1)[0]
        future = self._decider.submit(choose, policy, inp.context, inp.candidates, rng, k, options)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), wait)
        except TimeoutError:
            future.cancel()  # not started yet: never runs
            raise

    async def log_decision(self, row: DecisionRow) -> None:
        """Commit a decision, remember it for its rewards, count it."""
        await self._commit(row)
        self._logged(row)

    async def log_decisions(self, rows: Sequence[DecisionRow]) -> None:
        """Commit the decisions of one request in one transaction (or one journal append):
        all of them or none. Each committed on its own, a grouped request's 503 could
        leave some of its groups' decisions stored and the others not."""
        await self._commit(DecisionGroup(tuple(rows)))
        for row in rows:
            self._logged(row)

    def _logged(self, row: DecisionRow) -> None:
        """A committed decision: remembered for its rewards, its impressions, counted."""
        self._remember(row)
        if row.count_impressions:
            self.catalog.record_shown(row.shown_ids)
        self.metrics.decisions.labels(
            self.metrics.arm_label(row.arm_id), row.traffic, FALLBACK_LABELS[row.fallback]
        ).inc()

    def _remember(self, row: DecisionRow) -> None:
        """Keep the decision for its rewards, within ``decision_cache_size`` decisions and
        ``decision_cache_bytes`` (the oldest go first)."""
        size, budget = self.settings.decision_cache_size, self.settings.decision_cache_bytes
        if size == 0 or budget == 0:
            return
        stored = stored_decision(row)
        self._cache[row.event_id] = stored
        self._cache_bytes += stored.nbytes
        while len(self._cache) > size or (self._cache_bytes > budget and self._cache):
            _, gone = self._cache.popitem(last=False)
            self._cache_bytes -= gone.nbytes

    def _forget(self, event_id: str) -> None:
        gone = self._cache.pop(event_id, None)
        if gone is not None:
            self._cache_bytes -= gone.nbytes

    # ------------------------------------------------------------------ rewards
    async def reward(self, req: RewardRequest) -> RewardResponse:
        """Log a reward; the head of the deciding version learns from it before the
        answer (once per event, in the window, while that version is served).

        Raises
        ------
        InputError
            Reward out of range, or a timestamp before the decision (422).
        NotFoundError
            Unknown event id (404).
        NotReadyError, StoreUnavailableError
            Nothing serves yet, the reward could not be committed, or the event is not
            found while the store recovers and other processes write to it (503).
        """
        served = self._served()
        settings = self.settings
        check_reward(req.reward, settings.reward_min, settings.reward_max)
        decision = self._find(req.event_id)
        if decision is None:
            try:
                decision = await read_within(
                    settings.store_deadline_s,
                    f"read event {req.event_id!r}",
                    self.store.find_decision,
                    req.event_id,
                )
            except DBAPIError as exc:
                raise StoreUnavailableError(
                    f"the event store is unreachable to look up event {req.event_id!r}."
                ) from exc
        if decision is None and not settings.sole_writer and self._recovering():
            # another worker or replica may hold it in its journal, not stored yet: a 404
            # would tell the client it never existed, and its reward would be dropped
            raise StoreUnavailableError(
                f"event {req.event_id!r} is not in the event store yet, which is recovering "
                "from an outage (another worker or replica may still hold it): retry later."
            )
        if decision is None and not settings.sole_writer and self._made_lately(req.event_id):
            # a replica that lost the store alone (its own network, its pooler) journals
            # its decisions where this one cannot see them: their rewards were answered
            # 404 and dropped (PostgreSQL helper, stop 55). An event its id dates within
            # the horizon may yet land.
            raise StoreUnavailableError(
                f"event {req.event_id!r} is not in the event store yet; it was made less "
                f"than {settings.replica_sync_horizon_s:g} s ago, and another replica may "
                "still hold it: retry later."
            )
        if decision is None:
            raise NotFoundError(f"no decision with event_id {req.event_id!r}.")
        check_position(req.position, decision.slate_length)
        arm_id, arm_features = decision.shown_at(req.position)
        received = datetime.now(UTC)
        # the window is judged on the server's receive time: a client's timestamp can
        # be replayed or forged, or come from a clock minutes off (it is stored, for
        # analysis, and judges nothing: one more than 5 minutes before its decision was
        # a 422, so a phone whose clock was behind lost every reward, never retried)
        ts = req.timestamp.astimezone(UTC) if req.timestamp is not None else received
        late = received - decision.created_at > timedelta(seconds=settings.reward_window_s)
        status = _why_not_applicable(late, decision, served)
        deciding = served.for_version(decision.model_version)
        if status is None and self._new_arm_over_limit(deciding, decision, arm_id):
            status = records.ARM_LIMIT
        if status is None and not self._learnable(deciding, decision, arm_features, req.reward):
            status = records.REJECTED
        row = RewardRow(
            event_id=req.event_id,
            value=req.reward,
            ts=ts,
            received_at=received,
            model_version=decision.model_version,
            eligible=status is None,
            ineligible_status=status,
            repeat_status=records.repeat_status(settings.duplicate_rule, late),
            position=req.position,
            idempotency_key=req.idempotency_key,
            learn=LearnInput(
                decision.context, arm_id, arm_features, req.position or 0, decision.created_at
            ),
        )
        try:
            outcome: RewardOutcome = await self._commit(row)
        except StoreUnavailableError as exc:
            if not _decision_deleted(exc.__cause__):
                raise
            # retention deleted the decision while this process still remembered it: a
            # 503 sent the client to retry it for ever, the other workers said 404
            self._forget(req.event_id)
            raise NotFoundError(
                f"no decision with event_id {req.event_id!r} (retention deleted it)."
            ) from None
        # the head learnt it (or refused it) before the commit's answer reached here, or
        # it waits behind the gate (a snapshot's copy) and is learnt when the gate opens
        key = (req.event_id, outcome.ordinal)
        while key in self._held_rewards:
            await self.gate.opened()
        refused = key in self._refused
        first = outcome.repeat_of
        if first is not None:  # the key's first reward answers (its request may be waiting)
            check_same_reward(req.idempotency_key, req.reward, req.position, first)
            outcome = first.outcome
        else:
            if refused:
                await self._refusal_stored(key)
            self.metrics.rewards.labels(outcome.status).inc()
            self.metrics.reward_value.observe(req.reward)
        return RewardResponse(
            event_id=req.event_id,
            status=outcome.status,
            applied=outcome.applied and not refused,
            model_version=decision.model_version,
        )

    def _new_arm_over_limit(
        self, model: ServedModel | None, decision: StoredDecision, arm_id: str
    ) -> bool:
        """Whether the deciding head (``model``) keeps a block per arm, already holds as
        many as it may (:attr:`arm_limit`) and ``arm_id`` is not one of them (rewards in
        flight may each add one more)."""
        if model is None or not self.arm_limit.reached(model.policy, arm_id):
            return False
        log.warning(
            "reward of %s not learnt online: %s already holds its limit of %d arms "
            "(max_arms, and model_max_bytes of per-arm state)",
            decision.event_id,
            decision.model_version,
            self.arm_limit.of(model.policy),
        )
        return True

    def _learnable(
        self,
        model: ServedModel | None,
        decision: StoredDecision,
        arm_features: NDArray[np.float64],
        value: float,
    ) -> bool:
        """Whether the deciding head (``model``) may learn this reward and stay finite:
        its inputs are finite and bounded (:func:`serving.budget.learnable`) and the head
        is finite now. Otherwise the reward is stored as ``rejected``: never applied or
        replayed."""
        if not learnable(decision.context, arm_features, value, self.settings.max_abs_feature):
            log.warning("reward of %s rejected: its inputs are not bounded", decision.event_id)
            return False
        head = None if model is None else find_head(model.policy)
        if head is not None and not np.isfinite(head.theta_).all():
            log.error(
                "reward of %s rejected: the head of %s is not finite",
                decision.event_id,
                decision.model_version,
            )
            self.metrics.unsafe_heads.inc()
            return False
        return True

    def _recovering(self) -> bool:
        """This process's store is out, or came back less than ``replica_sync_horizon_s``
        ago (the others, which share the outage, drain their journals about when it
        does; the horizon is how late the replicas already let an event land), or
        another worker's journal holds events: a worker can journal alone (its
        transaction waited out its lock timeout), and this one answered its decisions'
        rewards 404 (concurrency helper)."""
        writer = self.writer
        if writer.degraded:
            return True
        if self.journal is not None and self.journal.others_hold_events():
            return True
        back = writer.recovered_at
        return back is not None and time.monotonic() - back < self.settings.replica_sync_horizon_s

    def _made_lately(self, event_id: str) -> bool:
        """Whether ``event_id`` dates itself (:func:`serving.decide.event_time`) within
        ``replica_sync_horizon_s`` of now, either way (clocks of replicas differ)."""
        made = event_time(event_id)
        if made is None:
            return False
        age = abs((datetime.now(UTC) - made).total_seconds())
        return age < self.settings.replica_sync_horizon_s

    def _find(self, event_id: str) -> StoredDecision | None:
        """A decision from memory: the recent ones, or the journal's (not yet stored)."""
        found = self._cache.get(event_id)
        if found is None and self.journal is not None:
            found = self.journal.find(event_id)
        return found

    async def _commit_snapshot(self, item: Any) -> Any:
        return await self._commit(item, self._snapshot_writer or self.writer)

    async def _commit(self, item: Any, writer: GroupCommitWriter[Any, Any] | None = None) -> Any:
        """``item``'s result once it is durable, within ``store_deadline_s``.

        A request cancelled meanwhile (its client left) leaves the item to be written
        all the same. Past the deadline the item is withdrawn when it still waits in the
        queue (never written), and the answer is 503 either way; while the write under
        way has taken longer than the deadline (a store that stopped answering in the
        middle of a statement never raises), nothing is queued behind it."""
        writer = writer or self.writer
        if self.lease.lost:
            raise StoreUnavailableError(
                f"{LEASE_LOST_REASON}: send them to another replica, or restart it once "
                "the other process is stopped"
            )
        deadline = self.settings.store_deadline_s
        stalled = writer.in_flight_s()
        if stalled > deadline:
            self.metrics.commit_timeouts.inc()
            raise StoreUnavailableError(
                f"the event store has not finished a write for {stalled:.0f} s; the event "
                "was not stored: retry later"
            )
        try:
            future = writer.submit(item)
        except WriterClosedError as exc:
            raise StoreUnavailableError(str(exc)) from exc
        try:
            try:
                async with asyncio.timeout(deadline):
                    return await _on_loop(future)
            except TimeoutError:
                if not future.done():
                    raise
                return future.result()  # settled just as the deadline passed: its outcome
        except TimeoutError:
            self.metrics.commit_timeouts.inc()
            if future.cancel():
                raise StoreUnavailableError(
                    f"the event store did not take the event within {deadline:g} s; it was "
                    "not stored: retry later"
                ) from None
            raise StoreUnavailableError(
                f"the event store did not confirm the event within {deadline:g} s; it may "
                "still be stored (a reward sent again with its idempotency_key is then "
                "answered as the first)",
                maybe_stored=True,
            ) from None
        except Exception as exc:
            # the driver's message quotes the whole batch's parameters (other clients'
            # events): it goes to the log, the client learns only its kind
            log.warning("the event store refused an event: %s", exc)
            raise StoreUnavailableError(
                f"the event store refused the event ({type(exc).__name__}); it was not "
                "stored: retry later"
            ) from exc

    def _on_committed(self, items: Sequence[Any], results: list[Any]) -> None:
        """Writer thread: hand the committed, applied rewards to the loop (in order)."""
        learn = [
            (item, res)
            for item, res in zip(items, results, strict=True)
            if isinstance(item, RewardRow) and res.applied
        ]
        if learn and self._loop is not None:
            self._loop.call_soon_threadsafe(self._apply_or_hold, learn)

    def _apply_or_hold(self, pairs: list[tuple[RewardRow, RewardOutcome]]) -> None:
        """Loop thread: :meth:`_apply` now, or when the gate opens (the requests wait)."""
        if self.gate.closed:
            self._held_rewards.update((row.event_id, out.ordinal) for row, out in pairs)
        self.gate.run(self._apply, pairs)

    def _apply(self, pairs: list[tuple[RewardRow, RewardOutcome]]) -> None:
        """Loop thread: update the head of the version that made each decision, and the
        heads of the other served versions that learn it (:meth:`_also_learning`)."""
        if self._held_rewards:
            self._held_rewards.difference_update((row.event_id, o.ordinal) for row, o in pairs)
        served = self.loader.current
        for row, outcome in pairs:
            self.metrics.admit_arm(row.learn.arm_id)
            if served is None:
                continue
            model = served.for_version(row.model_version)
            decided_at = row.learn.decided_at
            if model is not None and decided_at is not None and not model.learns_own(decided_at):
                model = None  # the label now names another artifact (ServedModel.learns_own)
            if model is None:
                # swapped out (before its reward was judged, or while it was committed):
                # the versions that learn it by their window still do, and the store
                # keeps it for the deciding version's next load
                log.debug(
                    "reward %d of %s: its version is not served", outcome.id, row.model_version
                )
            elif not self._learn_one(model, row, outcome):
                self._refuse(row, outcome)
            for other in self._also_learning(served, model, row.learn, outcome):
                self._learn_one(other, row, outcome)

    def _refuse(self, row: RewardRow, outcome: RewardOutcome) -> None:
        """Loop thread: the deciding head refused this reward. Its request, and every
        repeat of its idempotency key, answers ``applied: false``: from the store
        (:class:`~serving.store.repository.RefusedReward`, written now), and from memory
        until the store holds it; a journaled reward's refusal is this process's alone."""
        stored = None
        if not outcome.journaled:
            with contextlib.suppress(WriterClosedError):
                stored = self.writer.submit(RefusedReward(row.event_id, outcome.ordinal))
        self._refused[(row.event_id, outcome.ordinal)] = stored
        while len(self._refused) > _REFUSALS_KEPT:
            self._refused.popitem(last=False)

    async def _refusal_stored(self, key: tuple[str, int]) -> None:
        """Wait, within ``store_deadline_s``, until the store holds the refusal of reward
        ``key`` (event id, ordinal): the answer about to be given then outlives this
        process. When it cannot, say so."""
        stored = self._refused.get(key)
        if stored is None:
            return
        try:
            async with asyncio.timeout(self.settings.store_deadline_s):
                await _on_loop(stored)
        except Exception as exc:  # the store's error, or its deadline: the answer stands
            log.warning(
                "the head's refusal of reward %d of event %s is not stored (%s): only this "
                "process answers its repeats applied: false",
                key[1],
                key[0],
                exc or type(exc).__name__,
            )

    def _also_learning(
        self,
        served: ServingSet,
        model: ServedModel | None,
        learn: LearnInput,
        outcome: RewardOutcome,
    ) -> list[ServedModel]:
        """The other served versions whose heads learn this reward: those whose training
        window stops at or before the decision (``window_stop``), the rule recovery
        replays by (:mod:`serving.models.recovery`), so that during a rollout production
        and the candidate each learn every reward after their window, and the candidate
        promoted at its end has lost none of production's. A reward the version already
        replayed at its load (id ≤ its ``last_reward_id``) is not learnt twice. With the
        replica sync on, the sync brings them instead (its claims are per version)."""
        if self.replicas is not None or learn.decided_at is None:
            return []
        return [
            other
            for other in served.models()
            if other is not model
            and other.window_stop is not None
            and learn.decided_at >= other.window_stop
            and (outcome.journaled or outcome.id > other.last_reward_id)
        ]

    def _learn_one(self, model: ServedModel, row: RewardRow, outcome: RewardOutcome) -> bool:
        """Update ``model``'s head; False when the policy refused the update whole (an
        update it cannot make in float64): counted, and skipped the same way by recovery
        and the replica sync (:func:`serving.models.recovery.learn_rewards`)."""
        learn: LearnInput = row.learn
        if self.arm_limit.reached(model.policy, learn.arm_id):
            # a reward in flight when the deciding head filled up, or another served
            # version's head (a rollout): skipped, as recovery and the replica sync do
            log.warning(
                "reward %d not learnt by %s: its head holds its limit of %d arms",
                outcome.id,
                model.version,
                self.arm_limit.of(model.policy),
            )
            return False
        try:
            update_at(
                model.policy,
                learn.context,
                learn.arm_id,
                row.value,
                learn.arm_features,
                learn.position,
            )
        except ValueError as exc:  # the policy refused it whole: the head is as it was
            log.warning("head of %s refused reward %d: %s", model.version, outcome.id, exc)
            self.metrics.head_update_failures.inc()
            return False
        except Exception:  # not a refusal the policy names: the same, with its traceback
            log.exception("head update of %s failed for reward %d", model.version, outcome.id)
            self.metrics.head_update_failures.inc()
            return False
        if outcome.journaled:  # no store id yet: hold snapshots until it is drained
            self._unsynced[model.version] = self._unsynced.get(model.version, 0) + 1
        else:
            model.last_reward_id = max(model.last_reward_id, outcome.id)
        model.applied_rewards += 1
        model.rewards_since_snapshot += 1
        self.snapshots.after_reward(model)
        return True

    def _on_drained(self, report: DrainReport) -> None:
        """Writer thread: the journal is in the store; give the loop the rewards' ids."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.gate.run, self._synced, report.reward_ids)

    def _synced(self, reward_ids: list[tuple[str | None, int, bool]]) -> None:
        """Loop thread: every journaled reward a head learnt from has its store id now
        (this runs before the head learns from anything journaled later)."""
        served = self.loader.current
        models = [] if served is None else served.models()
        for version, reward_id, applied in reward_ids:
            if not applied:
                continue
            for model in models:
                # the deciding version's, and any other that learns rewards by its window
                # (_also_learning): the journal's rewards were applied in id order, so
                # every reward its head learns up to this id is in it
                if model.version == version or (
                    self.replicas is None and model.window_stop is not None
                ):
                    model.last_reward_id = max(model.last_reward_id, reward_id)
        if self.replicas is not None:  # learnt here: the replica sync must skip them
            self.replicas.claim((v, rid) for v, rid, applied in reward_ids if applied)
        self._unsynced.clear()

    def store_status(self) -> dict[str, Any]:
        """Whether events are being journaled, how many wait, whether a write has been
        under way longer than ``store_deadline_s`` (stalled), and whether new events
        can still be acknowledged (not while stalled, nor while degraded without a
        journal, with a full one, or with one whose last write failed: a full disk)."""
        journal, writer = self.journal, self.writer
        in_flight, deadline = writer.in_flight_s(), self.settings.store_deadline_s
        refusing = None
        if in_flight > deadline:
            refusing = (
                f"an event store write has been under way for {in_flight:.0f} s "
                f"(store_deadline_s {deadline:g})"
            )
        elif writer.degraded:
            if journal is None:
                refusing = "the event store is unreachable and this process keeps no journal"
            elif journal.full:
                refusing = (
                    f"the event store is unreachable and the journal is full ({journal.size} "
                    f"of {journal.max_bytes} bytes: journal_max_bytes)"
                )
            else:
                refusing = writer.spool_failure
        status: dict[str, Any] = {
            "degraded": writer.degraded,
            "journal_events": 0 if journal is None else journal.events,
            "stalled": in_flight > deadline,
            "accepting": refusing is None,
        }
        if refusing is not None:  # before, a 503 said "unavailable" and no more
            status["reason"] = refusing
        return status

    # ------------------------------------------------------------------ models
    async def state_parts(self, role: str) -> list[bytes]:
        """The live state of ``role``'s policy as ``.npz`` bytes, in parts (copied and
        serialised as a snapshot's is: :meth:`serving.snapshots.Snapshotter.copy_state`,
        :func:`bandit_core.state.state_to_parts`)."""
        served = self._served()
        model = served.candidate if role == CANDIDATE else served.production
        if model is None:
            raise NotFoundError(f"no model serves the {role} role.")
        state = await self.snapshots.copy_state(model.policy)
        return await asyncio.to_thread(state_to_parts, state, self.settings.snapshot_part_bytes)

    async def poll_now(self) -> ModelInfo:
        await asyncio.to_thread(self.loader.poll)
        return self.model_info()

    def _install(self, new: ServingSet, fresh: list[ServedModel]) -> None:
        """Loader thread: serve ``new``, whose ``fresh`` models were recovered from the
        store a while ago. A reward committed since was learnt online by the versions
        served then, not by these: each learns them here (``catch_up``) — most with the
        loop running, the last ones while the head gate is closed, so that every reward
        committed after that read reaches them online once they serve (the gate holds its
        update until then; ``_also_learning`` skips what they learnt here by its id). With
        the replica sync on, the sync does it.

        The last read runs in a thread of its own under ``store_deadline_s``, never on the
        loop: a store that stopped answering during a swap held every request, ``/healthz``
        included, for as long as it lasted (stall helper, stop 44). Past the deadline the
        swap is given up (the loader keeps what serves and tries again at its next poll)."""
        loop, catching = self._loop, self.replicas is None
        self._refuse_swap_while_journaling()
        if catching:
            for model in fresh:
                catch_up(self.store, model, self.arm_limit.of(model.policy))
        if loop is None or loop.is_closed():  # not started: no reward is learnt online
            self.loader.current = new
            return

        def close() -> None:
            self._refuse_swap_while_journaling()
            self.gate.close()

        opened = False

        def finish() -> None:
            nonlocal opened
            try:
                self._refuse_swap_while_journaling()
                self.loader.current = new
            finally:
                opened = True
                self.gate.open()

        _wait_on_loop(loop, self.gate.run, close)  # after any head copy under way
        try:
            if catching:
                _within(
                    self.settings.store_deadline_s,
                    "the rewards committed while the new versions loaded",
                    lambda: [catch_up(self.store, m, self.arm_limit.of(m.policy)) for m in fresh],
                )
            _wait_on_loop(loop, _call, finish)
        finally:
            if not opened:
                with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                    loop.call_soon_threadsafe(self.gate.open)

    def _refuse_swap_while_journaling(self) -> None:
        """No version is swapped in while a served head has learnt a reward that is in
        the journal only: it has no id in the store yet, so a version loaded now could not
        learn it from there (nor later: the drain's ids mark it learnt). The first poll
        after the drain swaps it in."""
        if self._unsynced:
            raise StoreUnavailableError(
                "rewards learnt online are being journaled: new versions are served once "
                "the journal is drained"
            )

    def _on_swap(self, served: ServingSet) -> None:
        labels = [
            (role, m.version, m.policy.name)
            for role, m in ((PRODUCTION, served.production), (CANDIDATE, served.candidate))
            if m is not None
        ]
        self.metrics.set_models(labels, served.fallback_active)

    def model_info(self) -> ModelInfo:
        """Served versions, policies and head statistics."""
        served = self.loader.current

        def describe(model: ServedModel | None) -> ServedModelInfo | None:
            return None if model is None else ServedModelInfo(**model.summary())

        return ModelInfo(
            ready=self.loader.ready,
            fallback_active=served is None or served.fallback_active,
            fallback_policy=self.fallback.name,
            production=describe(served.production if served else None),
            candidate=describe(served.candidate if served else None),
            candidate_share=served.candidate_share if served else 0.0,
            load_failures=self.loader.failures,
            last_load_error=self.loader.last_error,
            no_production=self.loader.no_production,
            store_degraded=self.writer.degraded,
            journal_events=0 if self.journal is None else self.journal.events,
        )


def _decision_deleted(exc: BaseException | None) -> bool:
    """Whether a reward's write failed because its decision is no longer stored (the
    foreign key of ``rewards.event_id``: PostgreSQL's SQLSTATE 23503, SQLite's message)."""
    if not isinstance(exc, IntegrityError):
        return False
    orig = exc.orig
    return getattr(orig, "pgcode", None) == "23503" or "FOREIGN KEY constraint failed" in str(orig)
