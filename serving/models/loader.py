"""Polls the model source off the request path and swaps the served set atomically.

The served set (:class:`~serving.models.served.ServingSet`) is immutable; a poll that
finds a new version loads and recovers it in the loader thread, builds a new set and
replaces the reference in one assignment, so a request sees either the old set or the
new one. The rewards committed between a new version's recovery and that assignment are
learnt by the versions served meanwhile only: the assignment (``install``; the service
makes it on its event loop, between two reward updates) first has the new version learn
them from the store (:func:`~serving.models.recovery.catch_up`). A version already served
(e.g. a candidate promoted to production) is reused with its online head, and one version
in both roles is one model. A version that fails to load is logged and the current one keeps
serving; a source that cannot be reached changes nothing. A version whose feature
dimensions differ from the expected ones (``expected``, else those of the version serving
the role) is not loaded either: every request shaped for the current version would be
refused. Each of these is counted by reason (``on_failure``) and the last one is kept in
:attr:`ModelLoader.last_error`. An outage of the store or of the model source is logged
once as it begins and once as it ends (:mod:`serving.store.outage_log`), not at every
poll.

The candidate's traffic share is read at every poll too (``rollout``): while a staged
rollout runs (:mod:`eventstore.rollouts`), its share and version win over the fixed
``candidate_share``; the candidate role is served only when it resolves to the rollout's
version, and the fixed share never serves a version whose rollout ended unpromoted.
Every replica polls the same store, so a stage change reaches all of them within one
poll interval, without a restart. A store that cannot be read keeps the share served.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from bandit_core import Candidates, Policy
from bandit_core.policies.decision_copy import decision_copy
from bandit_core.policies.linear import ArmLimit, arm_state
from eventstore.admission import AdmissionError, ArtifactChangedError, first_non_finite
from eventstore.contract import CANDIDATE, PRODUCTION
from eventstore.text import redact_credentials
from serving.budget import check_choice_finite, work_units
from serving.decide import choose
from serving.models.recovery import catch_up, recover
from serving.models.served import ServedModel, ServingSet, Signature
from serving.models.sources import ModelRef, ModelSource, Role
from serving.store.outage_log import OutageLog
from serving.store.reads import call_within
from serving.store.repository import EventStore


class RolloutTarget(NamedTuple):
    """What a rollout reader returns (None: no rollout ever ran).

    ``versions``: the rollout's version labels (any of them names the version, e.g.
    ``("<model>/3", "3")``). While it runs (``running``) the candidate role serves that
    version alone, with ``share``. Once it ended otherwise than promoted, the fixed
    ``candidate_share`` never serves that version again (a person stopped it, or the
    test rolled it back): a stop that leaves ``@staging`` in place handed the version
    the fixed share, more traffic than the rollout gave it (audit, stop 54).
    """

    versions: tuple[str, ...]
    share: float
    running: bool = True


log = logging.getLogger(__name__)

#: What the model poll's outage lines name: the store, and its reads of it that are not
#: a version's.
STORE = "the event store"
_ROLLOUT = "model poll (rollout read)"
_INSTALL = "model poll (catch-up of the versions loaded)"


def _loading(stage: str, role: Role, ref: ModelRef) -> str:
    """The read of a version's load at ``stage``, as its outage lines name it."""
    read = "download" if stage == "load" else "recovery"
    return f"model poll ({read} of {role} version {ref.version})"


FloatArray = NDArray[np.float64]


class SignatureError(ValueError):
    """A version's feature dimensions are not those the service serves."""


class UnsafeModelError(ArithmeticError):
    """A version's recovered state is not finite, or its probe decision is not."""


#: Probe inputs of a new version: constant 0.5, constant −1, and standard Normal values
#: (seeded) — features of the scale a client sends, where a version whose scores overflow
#: on some of them (a few weights near 1e308) is found before it serves.
PROBES = ("half", "minus-one", "normal")
#: Known arms scored together in one probe decision of a per-arm model.
PROBE_ARMS = 1000


def _probe_values(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> FloatArray:
    if kind == "half":
        return np.full(shape, 0.5)
    if kind == "minus-one":
        return np.full(shape, -1.0)
    return rng.standard_normal(shape)


def smoke_test(policy: Policy, signature: Signature, max_work_units: int | None = None) -> None:
    """Check a version before it serves: its state is finite; a decision between two
    candidates fits ``max_work_units`` (:mod:`serving.budget`: else every request would
    be refused); and it decides with finite scores and propensities on each of
    :data:`PROBES` (copies of the policy, so nothing is learnt or added), among unseen
    arms and, for a model with a block per arm, among every arm it knows
    (:data:`PROBE_ARMS` at a time: a block whose finite values overflow in a score
    failed every request that offered its arm).

    Raises
    ------
    UnsafeModelError
    """
    bad = first_non_finite(policy.to_state().arrays)
    if bad is not None:
        raise UnsafeModelError(f"state array {bad!r} holds non-finite values")
    units = work_units(policy, 2, None, 0)
    if max_work_units is not None and units > max_work_units:
        raise UnsafeModelError(
            f"a decision between two candidates costs {units} work units; the limit "
            f"max_work_units is {max_work_units}"
        )
    dim_user = signature.dim_user or 1
    width = max(signature.dim_arm, 0)
    rng = np.random.default_rng(0)
    arms = arm_state(policy)
    known = tuple(arms.arm_ids) if arms is not None else ()
    groups: list[tuple[str, ...]] = [("probe-0", "probe-1")]  # unseen arms first
    groups += [known[i : i + PROBE_ARMS] for i in range(0, len(known), PROBE_ARMS)]
    for kind in PROBES:
        context = _probe_values(kind, (dim_user,), rng)
        for g, ids in enumerate(groups):
            candidates = Candidates(ids, _probe_values(kind, (len(ids), width), rng))
            try:
                choice = choose(decision_copy(policy, ids), context, candidates, rng)
                check_choice_finite(choice.decision, None, None)
            except Exception as exc:
                among = "unseen arms" if g == 0 else f"known arms from {ids[0]!r}"
                raise UnsafeModelError(
                    f"the probe decision ({kind} inputs, {among}) failed: {exc}"
                ) from exc


#: Longest a poll waits for one lookup (the rollout's state, a role's alias): MLflow's
#: timeout bounds each read of a response, not a call, and a registry sending a byte a
#: second held a poll for minutes — and with it a rollback's share of 0, which a replica
#: applies only when its poll ends (stall helper, stop 44). An unreachable registry's
#: own retries end within about 35 s.
LOOKUP_DEADLINE_S = 60.0


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
        Traffic share of the candidate role when no rollout runs (0 disables it).
    rollout : callable, optional
        Called at each poll: the latest rollout (:class:`RolloutTarget`) or None.
    on_swap : callable, optional
        Called with the new set after every change (metrics).
    expected_dim_user, expected_dim_arm : int, optional
        Dimensions every version must have (None: those of the version it replaces).
    on_failure : callable ``(reason, message)``, optional
        Called when a poll keeps what serves: ``"unreachable"`` (the source), ``"load"``
        (the version's artifact), ``"signature"`` (its dimensions), ``"admission"`` (its
        state failed :mod:`eventstore.admission`, or its recovered state or probe decision
        is not finite), ``"recover"`` (its online head could not be read from the event
        store) or ``"rollout"`` (the rollout state could not be read) (metrics).
    retry_failed_s : float
        A version that failed to load is not tried again for this long; one refused
        (signature, admission) is never tried again.
    arm_limit : ArmLimit, optional
        Most arms a recovered per-arm head may hold.
    max_work_units : int, optional
        The service's request budget: a version whose decision between two candidates
        exceeds it is refused (:func:`smoke_test`).
    install : callable ``(new_set, fresh_models)``, optional
        Makes ``new_set`` the served set (assigns :attr:`current`) once the versions
        loaded by this poll (``fresh_models``) have learnt the rewards committed since
        their recovery (:func:`~serving.models.recovery.catch_up`); the service does it
        on its event loop, between two reward updates. Default: catch up and assign here.
        When it raises, the poll keeps what serves (``"recover"``) and the next one
        loads the versions again.
    lookup_deadline_s : float
        Longest a poll waits for the rollout's state or an alias lookup: past it the
        lookup counts as failed (``"rollout"``, ``"unreachable"``) and the poll goes on
        with what serves.
    """

    def __init__(
        self,
        source: ModelSource,
        store: EventStore,
        interval_s: float,
        candidate_share: float = 0.0,
        on_swap: Callable[[ServingSet], None] | None = None,
        expected_dim_user: int | None = None,
        expected_dim_arm: int | None = None,
        on_failure: Callable[[str, str], None] | None = None,
        retry_failed_s: float = 300.0,
        rollout: Callable[[], RolloutTarget | None] | None = None,
        arm_limit: ArmLimit | None = None,
        max_work_units: int | None = None,
        install: Callable[[ServingSet, list[ServedModel]], None] | None = None,
        lookup_deadline_s: float = LOOKUP_DEADLINE_S,
    ) -> None:
        self.lookup_deadline_s = lookup_deadline_s
        self._install = install or self._catch_up_and_assign
        self._rollout = rollout
        self.arm_limit = arm_limit
        self.max_work_units = max_work_units
        self.expected = (expected_dim_user, expected_dim_arm)
        self.retry_failed_s = retry_failed_s
        self._failed_versions: dict[tuple[str, str | None], float] = {}
        self._on_failure = on_failure
        self.last_error: str | None = None
        #: Set while the source has no production version: where it was looked up (a
        #: mistyped registry URI gave an empty registry, and a fallback served for good
        #: with nothing saying why: README helper, stop 46).
        self.no_production: str | None = None
        self.source = source
        self.store = store
        # an outage of the store or of the model source is logged once as it begins and
        # once as it ends (it logged a line, or a traceback, at every poll while it
        # lasted), per read: reads that fail apart (the rollout's and a recovery, a
        # lookup and a download) shared one log, and a partial outage logged its start
        # and its end at every poll
        self._outages: dict[str, OutageLog] = {}
        self.interval_s = interval_s
        self.candidate_share = candidate_share
        self._on_swap = on_swap
        self.current: ServingSet | None = None
        self._started: float | None = None
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="banditops-loader", daemon=True)

    @property
    def ready(self) -> bool:
        """True once the first poll has decided what serves (a model or the fallback), or
        one poll interval after the start when it has not (a registry that does not
        answer): then the fallback serves until a poll loads a model."""
        if self.current is not None:
            return True
        return self._started is not None and time.monotonic() - self._started >= self.interval_s

    def serving_set(self) -> ServingSet | None:
        """What serves now: the polled set; the fallback alone once :attr:`ready` without
        one; None before."""
        current = self.current
        if current is None and self.ready:
            return ServingSet(None, None, self.candidate_share)
        return current

    def start(self) -> ModelLoader:
        self._started = time.monotonic()
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
            share, versions, ended = self._share(current)
            production = self._role(PRODUCTION, current.production, current)
            candidate = None
            if share > 0.0:  # the production just loaded serves the candidate role too
                candidate = self._role(CANDIDATE, current.candidate, current, production)
            if candidate is not None and versions is not None and candidate.version not in versions:
                log.warning(
                    "the candidate role serves %s, the running rollout is of %s: no candidate "
                    "traffic until they agree",
                    candidate.version,
                    versions[0],
                )
                candidate = None
            if candidate is not None and candidate.version in ended:
                log.debug(
                    "the candidate role holds %s, whose rollout ended unpromoted: the fixed "
                    "candidate share does not serve it",
                    candidate.version,
                )
                candidate = None
            new = ServingSet(production, candidate, share if candidate is not None else 0.0)
            changed = (
                self.current is None
                or new.production is not current.production
                or new.candidate is not current.candidate
                or new.candidate_share != current.candidate_share
            )
            if changed:
                served = current.models()
                fresh = [m for m in new.models() if all(m is not old for old in served)]
                try:
                    self._install(new, fresh)
                except Exception as exc:
                    self._failed("recover", f"could not serve the versions loaded: {exc}")
                    if not self._outage(_INSTALL, STORE, exc):
                        log.warning(
                            "could not serve the new versions (%s); keeping what serves", exc
                        )
                    return False
                if fresh:
                    self._answered(_INSTALL)
                names = [m.version if m else None for m in (production, candidate)]
                log.info("serving production=%s candidate=%s share=%s", *names, new.candidate_share)
                if self._on_swap is not None:
                    self._on_swap(new)
            return changed

    @property
    def _source_name(self) -> str:
        return f"the model source {self.source.name}"

    def _outage(self, what: str, source: str, exc: BaseException) -> bool:
        """Log ``exc`` in the outage log of the read ``what`` (of ``source``): whether it
        is an outage (:meth:`OutageLog.outage`)."""
        return self._outages.setdefault(what, OutageLog(log, what, source)).outage(exc)

    def _answered(self, what: str) -> None:
        """The read ``what`` worked: the end of its outage, if one was under way, is
        logged (and its log dropped: a version's reads end with it)."""
        outage = self._outages.pop(what, None)
        if outage is not None:
            outage.succeeded()

    def _max_arms(self, policy: Policy) -> int | None:
        return None if self.arm_limit is None else self.arm_limit.of(policy)

    def _catch_up_and_assign(self, new: ServingSet, fresh: list[ServedModel]) -> None:
        for model in fresh:
            catch_up(self.store, model, self._max_arms(model.policy))
        self.current = new

    def _share(self, current: ServingSet) -> tuple[float, tuple[str, ...] | None, tuple[str, ...]]:
        """The candidate share now, the versions it must be served by (None: any) and
        those it must not: the running rollout's, else the fixed share, never for the
        version of a rollout that ended unpromoted; the served share and version when
        the store cannot be read."""
        if self._rollout is None:
            return self.candidate_share, None, ()
        try:
            rollout = self._rollout
            target = call_within(self.lookup_deadline_s, "banditops-rollout-read", rollout)
        except Exception as exc:
            self._failed("rollout", f"could not read the rollout state: {exc}")
            if not self._outage(_ROLLOUT, STORE, exc):
                log.warning("could not read the rollout state: %s; keeping the share served", exc)
            kept = current.candidate
            return current.candidate_share, None if kept is None else (kept.version,), ()
        self._answered(_ROLLOUT)
        if target is None:
            return self.candidate_share, None, ()
        if not target.running:
            return self.candidate_share, None, target.versions
        return target.share, target.versions, ()

    def _role(
        self,
        role: Role,
        serving: ServedModel | None,
        current: ServingSet,
        loaded: ServedModel | None = None,
    ) -> ServedModel | None:
        """The model to serve ``role``: the one serving a version already (or
        ``loaded`` by this poll: one version, one head), else the version loaded, which
        must have the dimensions of ``loaded`` (the production model, when ``role`` is
        the candidate: the clients send one layout), else of ``serving``."""
        try:
            ref = call_within(
                self.lookup_deadline_s, "banditops-resolve", lambda: self.source.resolve(role)
            )
        except Exception as exc:
            self._failed("unreachable", f"model source {self.source.name} unreachable: {exc}")
            if not self._outage(f"model poll ({role} lookup)", self._source_name, exc):
                log.warning("model source %s unreachable for %s: %s", self.source.name, role, exc)
            return serving
        self._answered(f"model poll ({role} lookup)")
        if role == PRODUCTION:
            self._production_found(ref is not None, role)
        if ref is None:
            return None
        reused = current.for_version(ref.version)
        if reused is None and loaded is not None and loaded.version == ref.version:
            reused = loaded
        if reused is not None and ref.incarnation in (None, reused.incarnation):
            return reused
        if reused is not None:  # the label now names another artifact: a new version
            log.warning(
                "%s %s now names another artifact (%s, was %s): the registered model was "
                "created again; loading it as a new version",
                role,
                ref.version,
                ref.incarnation,
                reused.incarnation,
            )
        failed_at = self._failed_versions.get(ref.key)
        if failed_at is not None and (
            failed_at == math.inf or time.monotonic() - failed_at < self.retry_failed_s
        ):
            return serving  # failed a moment ago: counted and logged once, retried later
        return self._load(role, ref, serving, like=loaded)

    def _load(
        self,
        role: Role,
        ref: ModelRef,
        serving: ServedModel | None,
        like: ServedModel | None = None,
    ) -> ServedModel | None:
        keeping = serving.version if serving else "the fallback"
        stage = "load"
        try:
            if ref.refused is not None:
                raise AdmissionError(ref.refused)
            base = self.source.load(ref)
            self._check_signature(ref.version, Signature.of(base), like or serving)
            stage = "recover"  # reads the event store: a failure here is not the version's
            model = recover(
                self.store,
                ref.version,
                base,
                self.source.name,
                ref.window_stop,
                self._max_arms(base),
                ref.incarnation,
                ref.not_before,
            )
            stage = "smoke"
            smoke_test(model.policy, model.signature, self.max_work_units)
        except (SignatureError, AdmissionError, UnsafeModelError) as exc:
            # the version itself is refused: logged and counted once, never retried (a
            # changed artifact is a new version), unless its file may be put back
            retry = isinstance(exc, ArtifactChangedError)
            self._failed_versions[ref.key] = time.monotonic() if retry else math.inf
            reason = "signature" if isinstance(exc, SignatureError) else "admission"
            self._failed(reason, f"{role} version {ref.version} refused: {exc}")
            log.error("%s version %s refused: %s; keeping %s", role, ref.version, exc, keeping)
            return serving
        except Exception as exc:
            if stage == "load":
                self._failed_versions[ref.key] = time.monotonic()
            self._failed(stage, f"could not {stage} {role} version {ref.version}: {exc}")
            # the download reads the model source, the recovery the store: their outages
            # are logged once; anything else (a smoke test that raised) with its traceback
            source = {"load": self._source_name, "recover": STORE}.get(stage)
            if source is None or not self._outage(_loading(stage, role, ref), source, exc):
                log.exception(
                    "could not %s %s version %s; keeping %s", stage, role, ref.version, keeping
                )
            return serving
        for read in ("load", "recover"):
            self._answered(_loading(read, role, ref))
        log.info("loaded %s %s (%d rewards replayed)", role, ref.version, model.applied_rewards)
        return model

    def _check_signature(
        self, version: str, signature: Signature, serving: ServedModel | None
    ) -> None:
        dim_user, dim_arm = self.expected
        if serving is not None:
            dim_user = serving.signature.dim_user if dim_user is None else dim_user
            dim_arm = serving.signature.dim_arm if dim_arm is None else dim_arm
        if (dim_user is not None and signature.dim_user != dim_user) or (
            dim_arm is not None and signature.dim_arm != dim_arm
        ):
            raise SignatureError(
                f"version {version} has dim_user={signature.dim_user}, "
                f"dim_arm={signature.dim_arm}; the service expects dim_user={dim_user}, "
                f"dim_arm={dim_arm}"
            )

    def _production_found(self, found: bool, role: Role) -> None:
        """Keep :attr:`no_production` (logged once each time it starts)."""
        if found:
            self.no_production = None
            return
        missing = f"nothing plays the {role} role: {self.source.describe(role)}"
        if missing != self.no_production:
            log.warning("%s; the fallback policy serves until it does", missing)
        self.no_production = missing

    def _failed(self, reason: str, message: str) -> None:
        self.failures += 1
        self.last_error = redact_credentials(message)[:500]  # GET /v1/model shows it
        if self._on_failure is not None:
            self._on_failure(reason, message)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # keep polling whatever happens
                log.exception("model poll failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()
