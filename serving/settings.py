"""Service settings, read from ``BANDITOPS_*`` environment variables (pydantic-settings).

Every knob of the decision service lives here or in the core settings it extends
(:class:`eventstore.settings.CoreSettings`: workspace, store, registry, reward rules),
validated once at start-up; the rest of ``serving`` receives a :class:`Settings` object and
never reads the environment itself.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from bandit_core import MAX_ABS_INPUT
from bandit_core.types import MARGINAL_DRAWS, MARGINAL_MAX_STATES
from eventstore.settings import DIRECTORY, PERIOD, CoreSettings, SettingError, env_name

SALT_FILE = "user_salt"


#: What an ``Authorization: Bearer`` credential may hold (RFC 6750's b64token).
_BEARER = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: The fewest characters of a configured secret (the token, the user-id salt): a short
#: one is guessed (a salt of a few letters makes every stored user hash reversible).
MIN_SECRET_CHARS = 16
#: Marks the placeholders of ``docker/.env.example``, which must never serve.
PLACEHOLDER = "change-me"
_GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class Settings(CoreSettings):
    """Configuration of the decision service: the core settings plus the request path's.

    Attributes
    ----------
    model_path, candidate_model_path : Path or None
        Local policy state files (``bandit_core.save_policy``) for the production model
        and for the rollout candidate, read when no MLflow tracking URI is set (with one,
        they are refused: the service would never read them).
    candidate_share : float
        Share of traffic, by hashed user id, served by the candidate version when no
        staged rollout runs. While one runs (``banditops rollout status``), its stage's
        share and version, read from the event store at every model poll, win; a version
        whose last rollout ended unpromoted (stopped, rolled back, expired) gets none.
    poll_interval_s : float
        Seconds between two polls of the model source (off the request path).
    fallback_policy : str
        What serves when no model is ready or a model errors: uniform over the candidates,
        or ε-greedy around the caller's order (the first candidate is the default).
    fallback_epsilon : float
        Exploration share of the ε-greedy fallback.
    api_token : SecretStr or None
        Bearer token of the decision, reward, catalog-write and admin endpoints (not
        empty; RFC 6750 characters only).
    max_body_bytes, max_candidates, max_slate : int
        Request limits (413 / 422 beyond them).
    context_features : list of str
        Names of the context features, in vector order, for named contexts; a model
        version with another number of user features is refused (as by
        ``model_dim_user``).
    user_salt : SecretStr or None
        Salt of the user-id hash (generated once into the workspace when unset).
    snapshot_every_rewards, snapshot_every_s
        Head snapshot cadence.
    snapshot_part_bytes : int
        Most bytes of a head snapshot written in one transaction: a larger state is
        written in parts, so that the events committed meanwhile never wait behind the
        whole of it.
    snapshot_keep : int
        Head snapshots of a served version kept in the store: older ones are deleted as
        new ones are written (recovery tries them newest first; the newest suffices
        unless it cannot be read).
    writer_max_batch : int
        Most events in one group commit.
    decision_cache_size : int
        Recent decisions kept in memory for their rewards (older ones are read back from
        the store).
    decision_cache_bytes : int
        The most memory those decisions take (their context and shown items' features):
        with wide features the count alone let 50,000 of them take 1.6 GB.
    journal : bool
        While the event store is unreachable, acknowledge events once they are fsynced
        in a local journal and drain it into the store when it is back (see
        ``docs/reliability.md``); off: such events fail with 503.
    journal_dir : Path or None
        Where the journal lives (default ``<workspace>/journal``; a local disk).
    journal_max_bytes : int
        Largest journal; beyond it events are refused (503) until the store is back.
    store_probe_s : float
        Seconds between two checks of an unreachable event store.
    store_connect_timeout_s : float
        Connect timeout of event-store connections (PostgreSQL), so an unreachable host
        is noticed in this time rather than the system's TCP timeout.
    store_lock_timeout_s : float
        Longest a write waits for a lock another process holds on the event store
        (SQLite's busy timeout, PostgreSQL's ``lock_timeout``); then the store counts as
        unavailable for writes: events go to the journal (503 without one) and the probe
        tries a write every ``store_probe_s``.
    store_deadline_s : float
        Longest a request waits for the event store. A read (a reward's decision, a
        catalog item) past it is answered 503. An event not durable by then: 503
        (an event still queued is withdrawn, never written; one whose transaction began
        may still land), and while a write has been under way this long (a store frozen
        in the middle of a statement, which never raises) new events are refused at once
        and ``/readyz`` says ``stalled``. More than ``store_lock_timeout_s``, so that a
        lock wait ends in the journal, not in a 503. The latency histograms' top
        buckets are this and twice this.
    sqlite_checkpoint_s : float
        SQLite event store: seconds between two checkpoints of the write-ahead log, run
        by a thread of their own (:mod:`eventstore.checkpoint`) so that no commit waits
        for one; 0 leaves them to SQLite, inside the commit that fills the log.
    model_dim_user, model_dim_arm : int or None
        The feature dimensions every served version must have (a version with others is
        not loaded); unset: those of the version being served, once there is one.
    seed : int or None
        Seed of the decision randomness (None: fresh entropy).
    workers : int
        Worker processes of ``banditops serve`` (its ``--workers`` overrides it); above 1
        each worker rebuilds its heads from the store and snapshots are off.
    replica_id : str or None
        Name of this replica (process) in logs and metrics; default ``<hostname>-<pid>``.
    replica_sync_s : float
        Seconds between two syncs of the heads with the rewards other replicas (or
        workers) applied (:mod:`serving.replica_sync`); 0 turns the sync off (one replica).
        With the sync on, snapshots are off.
    lease_s : float
        How long a serving process's lease on the event store holds unless renewed (every
        third of it; :mod:`eventstore.leases`). A process of one worker without replica
        sync (the store's only writer) refuses to start beside another serving process,
        and a replica refuses to start beside such a process; a starting one waits this
        long for the lease of one that was killed to lapse (on the same host a killed
        process's lease lapses at once). At least 1 s.
    replica_sync_horizon_s : float
        A reward is settled (every reward with a smaller id is committed or will never
        be) this long after a replica first read it: longer than a commit takes.
    catalog_index : str
        Retrieval over the item catalog: exact dot products, faiss HNSW, or exact up to
        ``catalog_exact_max`` items and HNSW beyond.
    catalog_exact_max : int
        Largest catalog searched exactly when ``catalog_index`` is ``auto``.
    catalog_hnsw_m, catalog_hnsw_ef_construction, catalog_hnsw_ef_search : int
        HNSW graph degree and beam widths (build, search).
    catalog_rebuild_fraction : float
        Rebuild the index from the active items when this share of its rows belongs to
        retired or superseded versions.
    catalog_poll_s : float
        Seconds between two reads of the catalog's change feed (changes made by other
        workers or by ``banditops catalog load``).
    max_retrieve : int
        Largest ``retrieve.k``.
    max_groups : int
        Most groups in a grouped request.
    max_arms : int
        Most arms the head of a per-arm model (one block of O(d²) floats per arm:
        ``linucb``, ``lints``, the hybrid models) learns online; a reward whose arm would
        be one more is stored as ``arm_limit``, an outcome the nightly retrain learns,
        and the head stays as it is (a client that sends a new id per request cannot
        grow it without bound). Fewer where the per-arm blocks would take more than
        ``model_max_bytes``, the registry's bound on a version (with d = 500, 4 MB an
        arm: 132 arms at the default). Other models have no per-arm state.
    new_item_impressions : int
        An item is new until it has been shown this many times (0: no item is new).
    new_item_p_min, new_item_max_share : float
        Exploration floor of each new candidate, and the most probability the new
        candidates may take together.
    new_item_slots : int
        Retrieved sets include up to this many of the best-scoring new items.
    slate_marginal_draws : int
        Monte-Carlo budget of the marginal (per-position) propensities of a slate; 0
        logs only the conditional ones.
    slate_max_states : int
        Prefix sets the exact marginal computation may keep per position.
    auth_disabled : bool
        Serve without a bearer token (decisions, rewards and catalog writes open; a
        warning at every start). Without it, a service with no ``api_token`` refuses to
        start. ``/v1/admin/*`` always needs the token.
    public_decisions : bool
        Decide without the bearer token (for callers that cannot keep a secret: a
        browser, an app). Every decision is logged and counts: one never rewarded counts
        ``default_reward`` in the training replay and the rollout's online test, so an
        anonymous caller's unrewarded decisions can hold a worse candidate in a rollout
        and teach the retrain that production's choices earn nothing. Keep it off unless
        a proxy authenticates the callers.
    max_work_units : int
        Request budget: the most work units (:func:`serving.budget.work_units`: the
        model's work per choice, about one unit per multiply-add, × choices) one
        decision may cost; 422 beyond, before any work. A unit is ~0.04 ns on the
        reference machine (``benchmarks.work_units``): the default is ~100 ms.
    inline_work_units : int
        Decisions up to this cost are chosen on the event loop (the default: ~1 ms);
        costlier ones in the decision thread, under ``decision_deadline_s``.
    decision_deadline_s : float
        A decision chosen in the decision thread and not done by then is served by the
        fallback policy (logged as such, with its exact propensity, and counted).
    costly_work_nice : int
        Niceness of the decision thread (:mod:`serving.lanes`; Linux only, 0 leaves it at
        the process's): under CPU contention the event loop and the store writer run
        first.
    max_abs_feature : float
        Largest magnitude of a context, candidate, query or catalog feature (422 beyond);
        at most ``bandit_core.MAX_ABS_INPUT``, the largest a head learns from.
    max_context_features : int
        Widest context vector, with or without a model.
    max_arm_features : int
        Widest candidate (or variant) feature vector, with or without a model.
    http_timeout_keep_alive_s : float
        uvicorn: seconds an idle keep-alive connection is kept open.
    http_limit_concurrency : int
        uvicorn: most concurrent connections and tasks (503 beyond).
    http_backlog : int
        uvicorn: the listen backlog (connections waiting to be accepted).
    http_max_incomplete_event_bytes : int
        Largest request line and headers before the body (431 beyond, and the connection
        is closed).
    http_head_timeout_s : float
        A request line and headers not received in this time (from the connection's
        opening, or from the first byte of a kept-alive connection's next request) are
        answered 408 and the connection closed: idle and slow connections would hold
        ``http_limit_concurrency`` places for good.
    http_body_timeout_s : float
        A request body not received in this time is answered 408.
    http_large_body_bytes : int
        Requests with a larger body are handled ``http_large_body_concurrency`` at a time
        (parsing them is event-loop work; the others wait without delaying small ones).
    http_large_body_concurrency : int
        How many large-body requests are handled at once.
    """

    section: ClassVar[str] = "service"

    model_path: Path | None = None
    candidate_model_path: Path | None = None
    candidate_share: float = Field(0.0, ge=0.0, le=1.0)
    poll_interval_s: Annotated[float, PERIOD] = Field(30.0, gt=0.0)

    fallback_policy: Literal["uniform", "epsilon_greedy"] = "uniform"
    fallback_epsilon: float = Field(0.1, ge=0.0, le=1.0)

    api_token: SecretStr | None = None
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_candidates: int = Field(1000, ge=1)
    max_slate: int = Field(20, ge=1)
    context_features: Annotated[list[str], NoDecode] = Field(default_factory=list)

    user_salt: SecretStr | None = None

    snapshot_every_rewards: int = Field(1000, ge=1)
    snapshot_every_s: Annotated[float, PERIOD] = Field(300.0, gt=0.0)
    snapshot_part_bytes: int = Field(256 << 10, ge=1 << 10)
    snapshot_keep: int = Field(2, ge=1)
    writer_max_batch: int = Field(512, ge=1)
    decision_cache_size: int = Field(50_000, ge=0)
    decision_cache_bytes: int = Field(128 << 20, ge=0)
    journal: bool = True
    journal_dir: Annotated[Path | None, DIRECTORY] = None
    journal_max_bytes: int = Field(1 << 30, ge=1 << 20)
    store_probe_s: Annotated[float, PERIOD] = Field(1.0, gt=0.0)
    store_connect_timeout_s: float = Field(5.0, gt=0.0)
    store_lock_timeout_s: float = Field(2.0, gt=0.0, le=60.0)
    store_deadline_s: float = Field(10.0, gt=0.0)
    sqlite_checkpoint_s: Annotated[float, PERIOD] = Field(0.5, ge=0.0)
    model_dim_user: int | None = Field(None, ge=1)
    model_dim_arm: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    workers: int = Field(1, ge=1)
    replica_id: str | None = None
    replica_sync_s: Annotated[float, PERIOD] = Field(0.0, ge=0.0)
    replica_sync_horizon_s: float = Field(60.0, gt=0.0)
    lease_s: float = Field(30.0, ge=1.0)

    catalog_index: Literal["auto", "exact", "hnsw"] = "auto"
    catalog_exact_max: int = Field(20_000, ge=0)
    catalog_hnsw_m: int = Field(32, ge=4)
    catalog_hnsw_ef_construction: int = Field(80, ge=8)
    catalog_hnsw_ef_search: int = Field(256, ge=8)
    catalog_rebuild_fraction: float = Field(0.2, gt=0.0, le=1.0)
    catalog_poll_s: Annotated[float, PERIOD] = Field(5.0, gt=0.0)
    max_retrieve: int = Field(1000, ge=1)
    max_groups: int = Field(100, ge=1)
    max_arms: int = Field(100_000, ge=1)
    new_item_impressions: int = Field(100, ge=0)
    new_item_p_min: float = Field(0.02, gt=0.0, le=1.0)
    new_item_max_share: float = Field(0.2, gt=0.0, le=1.0)
    new_item_slots: int = Field(2, ge=0)
    slate_marginal_draws: int = Field(MARGINAL_DRAWS, ge=0)
    slate_max_states: int = Field(MARGINAL_MAX_STATES, ge=1)

    # hardening: auth, request budget, numeric bounds, model admission, HTTP limits
    auth_disabled: bool = False
    public_decisions: bool = False
    max_work_units: int = Field(2_500_000_000, ge=1)
    inline_work_units: int = Field(25_000_000, ge=0)
    decision_deadline_s: float = Field(0.25, gt=0.0)
    costly_work_nice: int = Field(19, ge=0, le=19)
    max_abs_feature: float = Field(MAX_ABS_INPUT, gt=0.0, le=MAX_ABS_INPUT)
    max_context_features: int = Field(1024, ge=1)
    max_arm_features: int = Field(1024, ge=1)
    http_timeout_keep_alive_s: float = Field(5.0, gt=0.0)
    http_limit_concurrency: int = Field(1000, ge=1)
    http_backlog: int = Field(2048, ge=1, le=65_535)
    http_max_incomplete_event_bytes: int = Field(16 << 10, ge=1 << 10)
    http_head_timeout_s: float = Field(10.0, gt=0.0)
    http_body_timeout_s: float = Field(30.0, gt=0.0)
    http_large_body_bytes: int = Field(65_536, ge=1024)
    http_large_body_concurrency: int = Field(1, ge=1)

    @field_validator("context_features", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        """Accept ``"a,b,c"`` as well as a JSON list in the environment."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("api_token")
    @classmethod
    def _bearer_token(cls, value: SecretStr | None) -> SecretStr | None:
        # an empty or blank token is refused with every blank setting (check_blanks)
        if value is not None and not _BEARER.fullmatch(value.get_secret_value()):
            # a space, a non-ASCII or invisible character: no client sends it back in an
            # Authorization header, so every authenticated call would be refused
            raise ValueError(
                "api_token must be a bearer token (RFC 6750): letters, digits and "
                f"-._~+/, then '=' padding only (e.g. {_GENERATE})."
            )
        return value

    @field_validator("api_token", "user_salt")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        text = None if value is None else value.get_secret_value()
        if not text or not text.strip():
            return value  # unset, or blank: refused with every blank setting
        if PLACEHOLDER in text.lower():
            raise ValueError(
                f"{info.field_name} is a placeholder of docker/.env.example; set a secret of "
                f"your own (e.g. {_GENERATE})."
            )
        return value

    def check_secrets_strong(self) -> None:
        """Raise ``ValueError`` (naming the setting) for a configured token or salt of
        fewer than :data:`MIN_SECRET_CHARS` characters: ``banditops serve`` checks it
        before it listens (a test's app may use a short one)."""
        for name in ("api_token", "user_salt"):
            value: SecretStr | None = getattr(self, name)
            if value is not None and len(value.get_secret_value()) < MIN_SECRET_CHARS:
                # a new salt hashes every user anew (upgrade helper, stop 45): say so
                moves = (
                    " A new salt gives every user a new hash: the rollout split, the "
                    "exploration floor's hashed user groups and the stored user hashes "
                    "start over."
                    if name == "user_salt"
                    else ""
                )
                raise ValueError(
                    f"{name} ({env_name(name)}) must have at least {MIN_SECRET_CHARS} "
                    f"characters; got {len(value.get_secret_value())} (e.g. {_GENERATE})." + moves
                )

    @property
    def expected_dim_user(self) -> int | None:
        """The user features every served version must have: ``model_dim_user``, else the
        number of ``context_features``, else none (a version's own)."""
        return self.model_dim_user or (len(self.context_features) or None)

    @property
    def sole_writer(self) -> bool:
        """Whether this process is the only one writing the event store: one worker and
        no other replica (``replica_sync_s`` 0). Its snapshots and its journal's ledger
        of reward counts rely on it."""
        return self.workers == 1 and self.replica_sync_s == 0

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if len(set(self.context_features)) != len(self.context_features):
            raise ValueError("context_features must be distinct names.")
        named = len(self.context_features)
        if named and self.model_dim_user is not None and named != self.model_dim_user:
            raise SettingError(
                "context_features",
                f"names {named} features, but model_dim_user is {self.model_dim_user}: a "
                "named context would never fit the models served.",
            )
        if self.store_deadline_s <= self.store_lock_timeout_s:
            raise SettingError(
                "store_deadline_s",
                f"must be more than store_lock_timeout_s ({self.store_lock_timeout_s:g} s); "
                f"got {self.store_deadline_s:g} s: a write waiting for a lock would "
                "have its requests answered 503 before it turned to the journal.",
            )
        if self.mlflow_registry_uri is not None and self.mlflow_tracking_uri is None:
            # the service reads models only through a tracking URI: promotions made in
            # that registry would never reach it (it served the fallback, no error)
            raise ValueError(
                "mlflow_registry_uri is set without mlflow_tracking_uri: the service loads "
                "models through the tracking URI; set BANDITOPS_MLFLOW_TRACKING_URI too."
            )
        if self.mlflow_tracking_uri is not None:
            for name in ("model_path", "candidate_model_path"):
                if getattr(self, name) is not None:
                    # the registry wins: the file would be ignored without a word
                    raise SettingError(
                        name,
                        f"{name} is set with mlflow_tracking_uri: the service loads models "
                        "from the registry then and would never read the file; unset one.",
                    )
        return self

    def check_auth(self) -> None:
        """Fail closed: no token is an error unless auth is disabled explicitly.

        Raises
        ------
        ValueError
            ``api_token`` unset and ``auth_disabled`` false.
        """
        if self.api_token is None and not self.auth_disabled:
            raise ValueError(
                "no api_token: set BANDITOPS_API_TOKEN, or BANDITOPS_AUTH_DISABLED=true to "
                "serve decisions, rewards and catalog writes without authentication."
            )

    # ------------------------------------------------------------------ derived
    @property
    def journal_path(self) -> Path:
        """The journal directory (the configured one or ``<workspace>/journal``)."""
        return self.journal_dir if self.journal_dir is not None else self.workspace / "journal"

    @property
    def uses_mlflow(self) -> bool:
        return self.mlflow_tracking_uri is not None

    def resolve_salt(self) -> bytes:
        """The user-id salt: configured, or generated once and kept in the workspace.

        A generated salt is written with mode 0600 so hashes stay stable across restarts
        (and so does the rollout split, which hashes the same salted id).
        """
        if self.user_salt is not None:
            return self.user_salt.get_secret_value().encode()
        path = self.workspace / SALT_FILE
        if not path.exists():
            self.workspace.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_hex(32))
        return path.read_text().strip().encode()
