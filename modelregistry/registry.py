"""The MLflow model registry: the only module in banditops that writes to MLflow.

Versions move through aliases, never stages: the registered alias (every registered
version; ``candidate`` by default) → the staging alias (when the offline gate passes;
``staging``) → the production alias (by :meth:`promote`; ``production``). The names are
settings (:class:`Aliases` from :class:`~eventstore.settings.CoreSettings`).
Every alias move is recorded as a registered-model tag ``alias_move.<ns timestamp>`` whose
value is a JSON record (alias, version, previous version, when, by whom, why), so the
history reads back with :meth:`ModelRegistry.alias_history`.

The model of a version is an MLflow pyfunc logged *from code* (``modelregistry/pyfunc_model.py``)
with the policy state as its artifact at ``artifacts/policy_state.npz`` (the layout the
service loads, see :mod:`eventstore.contract`); nothing is pickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from bandit_core import load_policy
from eventstore.admission import Admission
from eventstore.contract import (
    GATE_PASSED_TAG,
    GATE_REASONS_TAG,
    MLFLOW_CLIENT_ENV,
    POLICY_STATE_ARTIFACT,
    POLICY_STATE_FILE,
    POLICY_STATE_PATH,
    REFERENCE_ARTIFACT,
    ROLLOUT_REASON_TAG,
    ROLLOUT_STATUS_TAG,
    STATE_DIGEST_TAG,
    WINDOW_STOP_TAG,
    gate_reasons,
    gate_verdict,
    previous_tag,
    version_label,
    window_stop_time,
)
from eventstore.rollouts import ENDED_AGAINST
from eventstore.settings import CoreSettings
from eventstore.text import check_text
from modelregistry.pyfunc_model import table_signature

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
_MOVE_PREFIX = "alias_move."
log = logging.getLogger(__name__)

#: Requirements written into the model (skips MLflow's slow requirement inference).
PIP_REQUIREMENTS = ["banditops", "numpy", "pandas", "mlflow"]


#: MLflow error codes of a missing model or alias.
_MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}

#: Versions a listing shows by default (the Bandits page, ``banditops models``): the newest
#: this many, and every older one that holds an alias. A month of nightly versions; every
#: version listed costs a share of a run search, and a registry grows by one a night.
LISTED_VERSIONS = 30

#: Runs read by one search (a filter ``attributes.run_id IN (…)``): one call in place of a
#: ``get_run`` per version, with a filter a few kilobytes long.
RUNS_PER_SEARCH = 100

#: Bytes one feature may take in a feature reference (``steps.validate`` writes its
#: histogram indented, a number a line: ~650 bytes with the 10 bins it uses; this leaves
#: room for ~30). A reference holds at most ``2 × model_max_dim`` features (``dim_user``
#: and ``dim_arm``, each a model's dimension): 16 MiB at the defaults.
REFERENCE_BYTES_PER_FEATURE = 2048

#: Run ids a search filter may quote as they are (MLflow's are 32 hex digits).
_RUN_ID = re.compile(r"[A-Za-z0-9_\-]+")


@dataclass(frozen=True)
class Aliases:
    """The alias names a version moves through (``BANDITOPS_*_ALIAS`` settings).

    Parameters
    ----------
    registered : str
        Every newly registered version (``registered_alias``).
    staging : str
        A version whose offline gate passed; the service's rollout candidate
        (``candidate_alias``).
    production : str
        The version the service serves (``production_alias``).
    """

    registered: str
    staging: str
    production: str

    @classmethod
    def from_settings(cls, settings: CoreSettings) -> Aliases:
        return cls(settings.registered_alias, settings.candidate_alias, settings.production_alias)


#: The default names (the settings' defaults, not the environment's).
DEFAULT_ALIASES = Aliases.from_settings(CoreSettings.model_construct())


def _check_record(by: str, reason: str) -> None:
    """``by`` and ``reason`` as the history can keep them (else ``ValueError``)."""
    check_text("by", by)
    check_text("reason", reason)


def client_defaults() -> None:
    """Set :data:`~eventstore.contract.MLFLOW_CLIENT_ENV` in this process's environment
    where it sets none (the service's polls, the CLI's registry calls)."""
    for variable, value in MLFLOW_CLIENT_ENV.items():
        os.environ.setdefault(variable, value)


class RegistryError(RuntimeError):
    """A registry operation that cannot be carried out (named version, alias, reason)."""


class FeatureReferenceError(RegistryError):
    """A version's feature reference that cannot be used: larger than its bound, not
    JSON, or not the histograms the retrain writes. Its readers (the monitor's drift
    check, the retrain's drift expectations) go on without one, as for a version that
    logged none, and say why.

    Attributes
    ----------
    version : str
        The version whose reference it is.
    """

    def __init__(self, version: str, message: str) -> None:
        super().__init__(message)
        self.version = version


@dataclass(frozen=True)
class VersionInfo:
    """A registered version as the CLI and the DAGs see it."""

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return version_label(self.name, self.version)


@dataclass(frozen=True)
class VersionListing:
    """The versions a listing shows, newest first, and how many it left out.

    Parameters
    ----------
    versions : list of VersionInfo
        The newest versions and every older one that holds an alias, newest first.
    omitted : int
        Older versions that hold no alias, not listed (nor their runs read).
    """

    versions: list[VersionInfo]
    omitted: int = 0

    @property
    def note(self) -> str | None:
        """What the listing left out, in one sentence (None when nothing): the Bandits
        page and ``banditops models`` say it alike."""
        if self.omitted <= 0:
            return None
        older = "older version" if self.omitted == 1 else "older versions"
        return (
            f"{self.omitted} {older} without an alias not listed "
            "(`banditops models --all` lists every version)."
        )


#: The largest version number the registry's stores can hold (a signed 64-bit integer).
MAX_VERSION = 2**63 - 1


def version_number(version: str | int) -> str:
    """A registered version's number as MLflow writes it (``"3"``): one form for every
    comparison and tag. ``"0003"``, ``" 3"`` and ``3`` name version 3; anything but ASCII
    digits (``"٣"``, ``"3.0"``, ``"latest"``) is refused.

    Raises
    ------
    RegistryError
    """
    text = str(version).strip() if not isinstance(version, bool) else ""
    if not (text.isascii() and text.isdigit()):
        raise RegistryError(f"a model version is a number such as 3; got {version!r}.")
    digits = text.lstrip("0") or "0"  # (int() refuses over 4,300 digits, leading zeros too)
    if len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:
        # the registry's stores hold 64-bit integers (SQLite raised its own error)
        raise RegistryError(f"a model version is at most {MAX_VERSION}; got {text[:40]!r}.")
    return str(int(digits))


class ModelRegistry:
    """Registers, gates, promotes and rolls back policy versions.

    Parameters
    ----------
    tracking_uri : str
        ``sqlite:///<workspace>/mlflow.db`` (embedded default), an MLflow server URL or a
        database URL.
    model_name : str
        Registered model name (the service loads ``models:/<model_name>@<production>``).
    experiment : str
        Experiment that holds the training runs.
    artifact_location : str, optional
        Where the experiment keeps its artifacts. Default for a ``sqlite:///…/mlflow.db``
        store: the folder ``mlartifacts`` beside the database (MLflow's own default would
        be ``./mlruns`` under whatever the working directory happens to be).
    """

    def __init__(
        self,
        tracking_uri: str,
        model_name: str = CoreSettings.model_fields["model_name"].default,
        experiment: str = "banditops",
        artifact_location: str | None = None,
        *,
        registry_uri: str | None = None,
        aliases: Aliases = DEFAULT_ALIASES,
        admission: Admission | None = None,
    ) -> None:
        if not tracking_uri:
            raise ValueError(
                "tracking_uri must be an MLflow tracking URI "
                "(e.g. sqlite:///workspace/mlflow.db); got an empty value."
            )
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.experiment = experiment
        #: what a version must pass to be registered: the service's own admission checks
        self.admission = Admission() if admission is None else admission
        if artifact_location is None and tracking_uri.startswith("sqlite:///"):
            db = Path(tracking_uri.removeprefix("sqlite:///"))
            artifact_location = (db.parent / "mlartifacts").resolve().as_uri()
        self.artifact_location = artifact_location
        self.registry_uri = registry_uri or tracking_uri
        self.aliases = aliases
        self.client = self._open_sqlite_stores()

    def _open_sqlite_stores(self) -> MlflowClient:
        """Open the embedded SQLite stores one process at a time. MLflow creates and
        migrates a store's tables when a process first opens it: two ``banditops train``
        started together on a fresh workspace raced through the migrations and left
        ``mlflow.db`` half-migrated ("table _alembic_tmp_experiments already exists"),
        every later command failing (audit, stop 54). A file lock beside each database
        orders the first opening (the client's construction opens the tracking store);
        the store's own errors come, as before, from the call that needs it."""
        locks = [
            db.parent / f"{db.name}.open-lock"
            for uri in dict.fromkeys((self.tracking_uri, self.registry_uri))
            if uri.startswith("sqlite:///")
            and (db := Path(uri.removeprefix("sqlite:///"))).parent.is_dir()
        ]
        with contextlib.ExitStack() as held:
            for lock in locks:
                held.enter_context(_file_lock(lock))
            client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
            if locks:
                with contextlib.suppress(Exception):
                    client.search_experiments(max_results=1)
                    client.search_registered_models(max_results=1)
        return client

    @classmethod
    def from_settings(cls, settings: CoreSettings) -> ModelRegistry:
        """The registry, model and alias names of ``settings``."""
        return cls(
            settings.tracking_uri,
            settings.model_name,
            registry_uri=settings.registry_uri,
            aliases=Aliases.from_settings(settings),
            admission=Admission.from_settings(settings),
        )

    # ------------------------------------------------------------------ downloads
    def run_artifact(self, run_id: str, artifact_path: str, dst_path: str | Path) -> Path:
        """Download one artifact of a run into ``dst_path``; its local path.

        Raises
        ------
        RegistryError
            When the run or the artifact does not exist.
        """
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=artifact_path,
                dst_path=str(dst_path),
                tracking_uri=self.tracking_uri,
            )
        except MlflowException as exc:
            raise RegistryError(f"no artifact {artifact_path!r} in run {run_id}: {exc}") from exc
        return Path(local)

    def feature_reference(self, alias: str) -> tuple[dict[str, Any] | None, str | None]:
        """The feature reference (:data:`~eventstore.contract.REFERENCE_ARTIFACT`: the
        histograms of its training window) logged with the version ``alias`` names, and
        that version: ``(None, None)`` when no version has the alias, ``(None, version)``
        when the version has no reference.

        Raises
        ------
        FeatureReferenceError
            The reference is larger than :meth:`reference_max_bytes` (checked before it is
            read: it was parsed whole, whatever its size), not JSON, or not a reference.
        """
        version = self.by_alias(alias)
        if version is None:
            return None, None
        limit = self.reference_max_bytes()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.run_artifact(version.run_id, REFERENCE_ARTIFACT, tmp)
                size = Path(local).stat().st_size
            except (RegistryError, OSError):
                return None, version.version
            where = f"the feature reference of version {version.version}"
            if size > limit:
                raise FeatureReferenceError(
                    version.version,
                    f"{where} has {size} bytes; the limit is {limit} "
                    f"({REFERENCE_BYTES_PER_FEATURE} a feature, 2 × model_max_dim features).",
                )
            try:
                reference = json.loads(Path(local).read_bytes())
            except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested deep
                raise FeatureReferenceError(version.version, f"{where} is not JSON: {exc}") from exc
        problem = _reference_problem(reference)
        if problem is not None:
            raise FeatureReferenceError(version.version, f"{where} is malformed: {problem}.")
        return reference, version.version

    def reference_max_bytes(self) -> int:
        """The largest feature reference read: :data:`REFERENCE_BYTES_PER_FEATURE` for each
        of the ``2 × model_max_dim`` features a reference may hold."""
        return 2 * self.admission.max_dim * REFERENCE_BYTES_PER_FEATURE

    def download_version(self, version: str | int, dst_path: str | Path) -> Path:
        """Download a version's model directory into ``dst_path``; its local path (the
        policy state is at ``<path>/``:data:`~eventstore.contract.POLICY_STATE_PATH`)."""
        uri = self.client.get_model_version_download_uri(self.model_name, version_number(version))
        with fluent_uris(self.tracking_uri, self.registry_uri):
            return Path(
                mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst_path))
            )

    # ------------------------------------------------------------------ helpers
    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        return str(
            self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        )

    def _ensure_model(self) -> None:
        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(self.model_name)

    def _info(
        self,
        version: Any,
        aliases: tuple[str, ...] | None = None,
        runs: Mapping[str, tuple[dict[str, float], dict[str, str]]] | None = None,
    ) -> VersionInfo:
        """``version`` (an MLflow model version) with its run's metrics and parameters
        (from ``runs`` when it holds the run, else read); ``aliases`` where the entity does
        not carry them (a search's do not)."""
        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        if version.run_id and runs is not None and version.run_id in runs:
            metrics, params = runs[version.run_id]
        elif version.run_id:
            try:
                data = self.client.get_run(version.run_id).data
                metrics, params = dict(data.metrics), dict(data.params)
            except MlflowException:
                metrics, params = {}, {}
        return VersionInfo(
            name=self.model_name,
            version=str(version.version),
            run_id=str(version.run_id or ""),
            aliases=tuple(sorted(getattr(version, "aliases", []) or []))
            if aliases is None
            else aliases,
            tags=dict(version.tags or {}),
            metrics=metrics,
            params=params,
        )

    def _runs(self, run_ids: Iterable[str]) -> dict[str, tuple[dict[str, float], dict[str, str]]]:
        """The metrics and parameters of the runs ``run_ids`` of the training experiment,
        by run id, read :data:`RUNS_PER_SEARCH` at a time by a search (deleted runs too,
        as ``get_run`` reads them). A run it does not find (another experiment's, an id
        the filter cannot quote, a store that cannot search) is left out: :meth:`_info`
        reads it on its own."""
        wanted = sorted({r for r in run_ids if _RUN_ID.fullmatch(r)})
        if not wanted:
            return {}
        try:
            experiment = self.client.get_experiment_by_name(self.experiment)
        except MlflowException:
            return {}
        if experiment is None:
            return {}
        found: dict[str, tuple[dict[str, float], dict[str, str]]] = {}
        for start in range(0, len(wanted), RUNS_PER_SEARCH):
            chunk = wanted[start : start + RUNS_PER_SEARCH]
            quoted = ", ".join(f"'{r}'" for r in chunk)
            try:
                runs = self.client.search_runs(
                    [str(experiment.experiment_id)],
                    f"attributes.run_id IN ({quoted})",
                    run_view_type=ViewType.ALL,
                    max_results=len(chunk),
                )
            except MlflowException:
                continue
            for run in runs:
                found[run.info.run_id] = (dict(run.data.metrics), dict(run.data.params))
        return found

    def get(self, version: str | int) -> VersionInfo:
        try:
            number = version_number(version)
            return self._info(self.client.get_model_version(self.model_name, number))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(
                    f"model {self.model_name!r} has no version {version!r}."
                ) from exc
            raise RegistryError(
                f"the registry could not read version {version!r} of {self.model_name!r}: "
                f"{str(exc.message)[:300]}"
            ) from exc

    def by_alias(self, alias: str) -> VersionInfo | None:
        """The version ``alias`` points at; None when the model or the alias is missing.

        Raises :class:`RegistryError` when the registry cannot say (before, an
        unreachable registry read as "no version": ``rollback`` said "nothing to roll
        back")."""
        try:
            found = self.client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException as exc:
            if exc.error_code in _MISSING:
                return None
            raise RegistryError(
                f"the registry could not say which version of {self.model_name!r} holds "
                f"@{alias}: {str(exc.message)[:300]}"
            ) from exc
        return self._info(found)

    def _search(self, condition: str = "") -> list[Any]:
        """The model's versions a search finds (``condition``: more of the filter)."""
        where = f"name = '{self.model_name}'" + (f" AND {condition}" if condition else "")
        try:
            return list(self.client.search_model_versions(where))
        except MlflowException as exc:  # never "no versions": a retrain would register twice
            raise RegistryError(
                f"the registry could not list the versions of {self.model_name!r}: "
                f"{str(exc.message)[:300]}"
            ) from exc

    def versions(self) -> list[VersionInfo]:
        """Every version, newest first (:meth:`listing` without a limit)."""
        return self.listing().versions

    def listing(self, newest: int | None = None) -> VersionListing:
        """The newest ``newest`` versions (every version when None) and every older one
        that holds an alias, newest first, with how many were left out: one search, one
        read of the model's aliases (a search's versions carry none) and one run search
        per :data:`RUNS_PER_SEARCH` listed versions.

        Before, each version was read again for its aliases (a registration took 9 s at
        400 versions), then each version's run was read on its own: a page view took
        2.5 s at 365 versions on SQLite, several times that through a tracking server.

        Raises
        ------
        RegistryError
            The versions or the aliases cannot be read (never "no versions").
        ValueError
            ``newest`` below 1.
        """
        if newest is not None and newest < 1:
            raise ValueError(f"newest must be an integer ≥ 1 or None; got {newest!r}.")
        found = sorted(self._search(), key=lambda v: int(v.version), reverse=True)
        if not found:
            return VersionListing([])  # no versions (nor, maybe, the model): no aliases
        try:
            held = self.client.get_registered_model(self.model_name).aliases or {}
        except MlflowException as exc:  # never "no version holds an alias"
            raise RegistryError(
                f"the registry could not read the aliases of {self.model_name!r}: "
                f"{str(exc.message)[:300]}"
            ) from exc
        aliases: dict[str, list[str]] = {}
        for alias, number in held.items():
            aliases.setdefault(str(number), []).append(alias)
        cut = len(found) if newest is None else newest
        shown = found[:cut] + [v for v in found[cut:] if str(v.version) in aliases]
        runs = self._runs(v.run_id for v in shown if v.run_id)
        infos = [self._info(v, tuple(sorted(aliases.get(str(v.version), []))), runs) for v in shown]
        return VersionListing(infos, omitted=len(found) - len(shown))

    def find_by_run_key(self, run_key: str) -> VersionInfo | None:
        """The version registered by ``run_key`` (the first, should two tries of one run
        have raced: :meth:`register_candidate` keeps that one): found by a search on the
        tag, so a registration does not read every version."""
        if _SEARCHABLE.fullmatch(run_key):
            found = [str(v.version) for v in self._search(f"tags.run_key = '{run_key}'")]
        else:  # a key the filter language cannot quote: every version's tag
            found = [i.version for i in self.versions() if i.tags.get("run_key") == run_key]
        return self.get(min(found, key=int)) if found else None

    # ------------------------------------------------------------------ registering
    def register_candidate(
        self,
        *,
        state_path: str | Path,
        run_key: str,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, str | Path] | None = None,
        input_example: pd.DataFrame | None = None,
    ) -> VersionInfo:
        """Log a training run and register its policy as a new version with the registered
        alias.

        Idempotent per ``run_key`` (e.g. the Airflow run id): when a version with that key
        exists nothing new is registered, and its registration is finished where a failed
        try left it (ready, and given the registered alias unless a later version holds
        it). Two tries of one run at once (a task's zombie and its retry) may each create
        a version: the later one withdraws its own, and both return the first. The logged
        model is loaded back before it is registered; a model that does not load is
        refused (:class:`RegistryError`) and no version is created.
        """
        existing = self.find_by_run_key(run_key)
        if existing is not None:
            return self._finish_registration(existing.version, run_key)
        state_path = Path(state_path)
        try:  # the serving side's admission (finite, bounded, no bombs), then a build
            self.admission.policy(state_path)
        except Exception as exc:  # any failure to load means: refuse to register
            raise RegistryError(f"policy state {state_path} does not load: {exc}") from exc
        with (
            fluent_uris(self.tracking_uri, self.registry_uri),
            tempfile.TemporaryDirectory() as tmp,
            mlflow.start_run(experiment_id=self._experiment_id(), run_name=run_key) as run,
        ):
            staged = Path(tmp) / POLICY_STATE_FILE
            shutil.copyfile(state_path, staged)
            if params:
                mlflow.log_params({k: _param(v) for k, v in params.items()})
            if metrics:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            mlflow.set_tags({"run_key": run_key, **(tags or {})})
            for name, path in (artifacts or {}).items():
                path = Path(path)
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=name)
                else:
                    mlflow.log_artifact(str(path), artifact_path=name)
            info = mlflow.pyfunc.log_model(
                name="policy",
                python_model=str(PYFUNC_CODE),
                artifacts={POLICY_STATE_ARTIFACT: str(staged)},
                input_example=input_example,
                signature=None if input_example is None else table_signature(input_example),
                pip_requirements=PIP_REQUIREMENTS,
            )
            self._verify_loadable(info.model_uri)
            self._ensure_model()
            digest = hashlib.sha256(staged.read_bytes()).hexdigest()
            created = self.client.create_model_version(
                self.model_name,
                source=info.model_uri,
                run_id=run.info.run_id,
                tags={"run_key": run_key, **(tags or {}), STATE_DIGEST_TAG: digest},
                # a tracking server resolves a `models:/m-…` source through its model id
                # (a SQLite store accepts the source alone)
                model_id=info.model_id,
            )
        version = str(created.version)
        first = self.find_by_run_key(run_key)
        if first is not None and first.version != version:
            log.warning(
                "run %s registered version %s while another try registered %s: withdrawing %s",
                run_key,
                first.version,
                version,
                version,
            )
            self.client.delete_model_version(self.model_name, version)
            self.client.set_tag(run.info.run_id, "superseded_by_version", first.version)
            version = first.version
        return self._finish_registration(version, run_key)

    def _finish_registration(self, version: str, run_key: str) -> VersionInfo:
        """``version`` ready and given the registered alias, once (a later version that
        holds the alias keeps it)."""
        self._wait_ready(version)
        alias = self.aliases.registered
        if not self.moved_to(alias, version):
            holder = self.by_alias(alias)
            if holder is None or int(holder.version) < int(version):
                self.set_alias(alias, version, by="training", reason=f"registered by run {run_key}")
        return self.get(version)

    def _verify_loadable(self, model_uri: str) -> None:
        with (
            fluent_uris(self.tracking_uri, self.registry_uri),
            tempfile.TemporaryDirectory() as tmp,
        ):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
            try:
                load_policy(local / POLICY_STATE_PATH)
            except Exception as exc:
                raise RegistryError(
                    f"the logged model {model_uri} does not load back: {exc}"
                ) from exc

    def _wait_ready(self, version: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.client.get_model_version(self.model_name, version).status
            if status == "READY":
                return
            if status == "FAILED_REGISTRATION":
                raise RegistryError(f"version {version} of {self.model_name!r} failed to register.")
            time.sleep(0.2)
        raise RegistryError(
            f"version {version} of {self.model_name!r} was not ready after {timeout_s:.0f} s."
        )

    # ------------------------------------------------------------------ aliases
    def set_alias(self, alias: str, version: str | int, *, by: str, reason: str) -> None:
        """Point ``alias`` at ``version`` and record the move in the history."""
        _check_record(by, reason)
        version = version_number(version)
        self.get(version)  # raises RegistryError for an unknown version
        previous = self.by_alias(alias)
        self.client.set_registered_model_alias(self.model_name, alias, version)
        self._record_move(alias, version, previous.version if previous else None, by, reason)

    def _record_move(
        self, alias: str, version: str | None, previous: str | None, by: str, reason: str
    ) -> None:
        record = {
            "alias": alias,
            "version": version,
            "previous": previous,
            "at": datetime.now(UTC).isoformat(),
            "by": by,
            "reason": reason,
        }
        self.client.set_registered_model_tag(
            self.model_name, f"{_MOVE_PREFIX}{time.time_ns()}", json.dumps(record)
        )

    def remove_alias(
        self, alias: str, *, by: str, reason: str, version: str | int | None = None
    ) -> bool:
        """Delete ``alias`` (only while it points at ``version``, when given) and record
        the move (``version`` None) in the history; True when it was removed."""
        _check_record(by, reason)
        current = self.by_alias(alias)
        if current is None or (version is not None and current.version != version_number(version)):
            return False
        self.client.delete_registered_model_alias(self.model_name, alias)
        self._record_move(alias, None, current.version, by, reason)
        return True

    def tag_version(self, version: str | int, tags: Mapping[str, object]) -> None:
        """Set the tags ``tags`` on ``version`` (values as text; None as empty)."""
        for key, value in tags.items():
            text = "" if value is None else str(value)
            self.client.set_model_version_tag(self.model_name, version_number(version), key, text)

    def last_move(self, alias: str) -> dict[str, Any] | None:
        """The newest recorded move of ``alias`` (None when none is recorded)."""
        moves = [m for m in self.alias_history() if m.get("alias") == alias]
        return moves[-1] if moves else None

    def moved_to(self, alias: str, version: str | int) -> bool:
        """Whether the history records ``alias`` being moved to ``version`` (ever)."""
        number = version_number(version)
        return any(
            m.get("alias") == alias and m.get("version") == number for m in self.alias_history()
        )

    def alias_history(self) -> list[dict[str, Any]]:
        """Every recorded alias move, oldest first."""
        model = self.client.get_registered_model(self.model_name)
        moves = sorted((k, v) for k, v in (model.tags or {}).items() if k.startswith(_MOVE_PREFIX))
        return [json.loads(v) for _, v in moves]

    def record_gate(
        self, version: str | int, passed: bool, reasons: list[str], by: str = "gate"
    ) -> bool:
        """Tag the gate decision on ``version``; move the staging alias to it when it
        passed."""
        version = version_number(version)
        self.client.set_model_version_tag(
            self.model_name, version, GATE_PASSED_TAG, str(bool(passed)).lower()
        )
        self.client.set_model_version_tag(
            self.model_name, version, GATE_REASONS_TAG, json.dumps(reasons)
        )
        if passed:
            self.set_alias(
                self.aliases.staging, version, by=by, reason="; ".join(reasons) or "gate passed"
            )
        return passed

    def promote(
        self,
        version: str | int,
        *,
        by: str,
        reason: str,
        alias: str | None = None,
        force: bool = False,
    ) -> VersionInfo:
        """Move ``alias`` (default: the production alias) to ``version`` and tag who, when
        and why.

        A version whose gate failed (tag ``gate_passed=false``), or whose online rollout
        ended otherwise than promoted (rolled back, stopped, expired: its
        ``rollout_status`` tag), is refused unless ``force``; a forced promotion of a
        failed gate is tagged ``promoted_despite_gate``. (``banditops promote 3`` put the
        demo's rolled-back version in production without a word: README helper, stop 46.)

        Raises
        ------
        RegistryError
            An unknown version, or one refused as above without ``force``.
        ValueError
            ``by`` or ``reason`` with a NUL character or a lone surrogate.
        """
        _check_record(by, reason)
        alias = alias or self.aliases.production
        version = version_number(version)
        target = self.get(version)
        if gate_verdict(target.tags) is False:
            if not force:
                raw = target.tags[GATE_PASSED_TAG]
                why = gate_reasons(target.tags)
                if raw != "false":  # set by hand: the retrain writes "true" or "false"
                    why.insert(0, f"{GATE_PASSED_TAG}={raw[:40]!r}, not 'true'")
                raise RegistryError(
                    f"version {version} failed its gate ({'; '.join(why)[:500]}); promote it "
                    "anyway with --force."
                )
            self.client.set_model_version_tag(
                self.model_name, version, "promoted_despite_gate", "true"
            )
        rollout = target.tags.get(ROLLOUT_STATUS_TAG)
        if rollout in ENDED_AGAINST and not force:
            raise RegistryError(
                f"version {version}'s online rollout ended {rollout} "
                f"({target.tags.get(ROLLOUT_REASON_TAG, '')[:200]}); promote it anyway "
                "with --force."
            )
        previous = self.by_alias(alias)
        if previous is not None and previous.version == version:
            last = self.last_move(alias)
            if last is None or last.get("version") != version:
                # moved without its record: a retry after the record failed, or a move
                # with MLflow's own client; the history (audit, rollouts) must show it,
                # and a rollback must find where it came from (the last recorded holder)
                before = None if last is None else last.get("version")
                self._tag_promotion(version, alias, by, reason, before)
                self._record_move(alias, version, before, by, f"{reason} (recorded late)")
            return self.get(version)
        self._tag_promotion(version, alias, by, reason, previous.version if previous else None)
        self.set_alias(alias, version, by=by, reason=reason)
        return self.get(version)

    def _tag_promotion(
        self, version: str, alias: str, by: str, reason: str, previous: str | None
    ) -> None:
        tags = {
            "promoted_at": datetime.now(UTC).isoformat(),
            "promoted_by": by,
            "promotion_reason": reason,
            previous_tag(alias): previous or "",
        }
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, version, key, value)

    def rollback(self, *, by: str, reason: str, alias: str | None = None) -> VersionInfo:
        """Point ``alias`` (default: the production alias) back at the version it held
        before the current one (``ValueError`` for unstorable ``by`` or ``reason`` text).

        A version rolled back from production leaves the staging alias too, when it
        holds it (an auto-promoted version holds both): the rollout controller started
        a rollout of it at its next step, sending users back to the version just taken
        away from them (upgrade helper, stop 45)."""
        _check_record(by, reason)
        alias = alias or self.aliases.production
        current = self.by_alias(alias)
        if current is None:
            raise RegistryError(
                f"nothing to roll back: {self.model_name!r} has no @{alias} version."
            )
        previous = current.tags.get(previous_tag(alias), "")
        if not previous:
            raise RegistryError(
                f"version {current.version} is the first @{alias} of {self.model_name!r}; "
                "there is no previous version to roll back to."
            )
        try:  # before any tag: a deleted previous version left the current one tagged
            target = self.get(previous)
        except (RegistryError, ValueError) as exc:
            raise RegistryError(
                f"cannot roll @{alias} back from version {current.version} to the version "
                f"before it ({previous_tag(alias)}={previous[:40]!r}): {exc}"
            ) from exc
        if target.version == current.version:
            raise RegistryError(
                f"version {current.version} names itself as the @{alias} before it "
                f"({previous_tag(alias)}); there is no other version to roll back to."
            )
        why = f"rollback from {current.version}: {reason}"
        self.set_alias(alias, target.version, by=by, reason=why)
        self.client.set_model_version_tag(
            self.model_name, current.version, "rolled_back_at", datetime.now(UTC).isoformat()
        )
        self.client.set_model_version_tag(self.model_name, current.version, "rolled_back_by", by)
        if alias == self.aliases.production:
            self.remove_alias(self.aliases.staging, by=by, reason=why, version=current.version)
        return self.get(target.version)


@contextlib.contextmanager
def fluent_uris(uri: str, registry_uri: str | None = None) -> Iterator[None]:
    """Point MLflow's process-global (fluent) tracking URI at ``uri`` and its registry URI
    at ``registry_uri`` (default ``uri``) for the duration, then put back exactly what was
    there (including "unset"): a registry object must not redirect other code's MLflow
    calls."""
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri or uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():  # set_*_uri also export these variables
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


#: Run keys a search filter may quote as they are (Airflow's run ids are of these).
_SEARCHABLE = re.compile(r"[A-Za-z0-9_.~:+\-@ ]+")


class AliasReader:
    """The service's read side of the registry: which version an alias points at, and that
    version's policy state file (nothing else is downloaded; no pyfunc is loaded).

    Parameters
    ----------
    tracking_uri, registry_uri : str
        MLflow server or database (``registry_uri`` defaults to ``tracking_uri``).
    model_name : str
        Registered model name.
    """

    def __init__(self, tracking_uri: str, model_name: str, registry_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.model_name = model_name
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)

    def version(self, alias: str) -> str | None:
        """The version ``alias`` points at (None when the model or the alias is missing)."""
        found = self.resolve(alias)
        return None if found is None else found[0]

    def resolve(self, alias: str) -> tuple[str, dict[str, str], int] | None:
        """The version ``alias`` points at, its tags and its creation time (ms since the
        epoch: which *incarnation* of the label it is, as a registered model deleted and
        created again numbers its versions from 1 again), in one call (None when the
        model or the alias is missing)."""
        try:
            found = self._client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException as exc:
            if exc.error_code in _MISSING:
                return None
            raise
        return str(found.version), dict(found.tags or {}), int(found.creation_timestamp or 0)

    def served_labels(self, aliases: Iterable[str]) -> set[str]:
        """The labels (:func:`~eventstore.contract.version_label`) of the versions
        ``aliases`` point at, and of those a rollback of each would bring back (its
        ``previous_<alias>`` tag): what the service serves, or may serve next."""
        labels: set[str] = set()
        for alias in aliases:
            found = self.resolve(alias)
            if found is None:
                continue
            version, tags, _ = found
            labels.add(version_label(self.model_name, version))
            previous = tags.get(previous_tag(alias))
            if previous:
                labels.add(version_label(self.model_name, previous))
        return labels

    def window_stop(self, label: str) -> datetime | None:
        """Where the training window of the version the service names ``label`` in the
        store (:func:`~eventstore.contract.version_label`) stops, read as the service
        reads it: what retention keeps of a served head
        (:data:`eventstore.retention.WindowStops`). None for another model's label, a
        version no longer registered, or one without a readable tag (the service learns
        only its own rewards for it, or does not serve it)."""
        name, _, version = label.rpartition("/")
        if name != self.model_name or not version.isascii() or not version.isdigit():
            return None
        try:
            found = self._client.get_model_version(self.model_name, version)
        except MlflowException as exc:
            if exc.error_code in _MISSING:
                return None
            raise
        stop = (found.tags or {}).get(WINDOW_STOP_TAG)
        try:
            return None if not stop else window_stop_time(stop)
        except ValueError:
            return None

    def state_size(self, version: str) -> int | None:
        """Bytes of ``version``'s policy state file as its artifact store lists them (None
        where the store lists no size), read before anything is downloaded."""
        root = self._client.get_model_version_download_uri(self.model_name, version)
        folder, _, name = f"{root.rstrip('/')}/{POLICY_STATE_PATH}".rpartition("/")
        try:
            listed = mlflow.artifacts.list_artifacts(
                artifact_uri=folder, tracking_uri=self.tracking_uri
            )
        except Exception:  # a store that lists nothing: the download and admission check
            log.debug("no artifact listing for version %s", version, exc_info=True)
            return None
        sizes = [f.file_size for f in listed if f.path.rpartition("/")[2] == name]
        return int(sizes[0]) if sizes and sizes[0] is not None else None

    def download_state(self, version: str, dst_path: str | Path) -> Path:
        """Download only the policy state file of ``version`` into ``dst_path``."""
        root = self._client.get_model_version_download_uri(self.model_name, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{root.rstrip('/')}/{POLICY_STATE_PATH}",
            dst_path=str(dst_path),
            tracking_uri=self.tracking_uri,
        )
        return Path(local)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created) held by this process for the block; none
    where the file cannot be opened or locking is not supported."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    try:
        handle = path.open("a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _reference_problem(reference: Any) -> str | None:
    """What keeps ``reference`` from being a feature reference as ``training.steps.validate``
    writes it (None: nothing): integer ``dim_user`` / ``dim_arm``, and ``features`` mapping
    each name to lists of numbers ``edges`` and ``proportions``."""
    if not isinstance(reference, dict):
        return f"a JSON object is expected; got {type(reference).__name__}"
    for key in ("dim_user", "dim_arm", "rows"):
        value = reference.get(key)
        if key == "rows" and value is None:  # (optional)
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{key} must be a non-negative integer; got {str(value)[:40]!r}"
    features = reference.get("features")
    if not isinstance(features, dict):
        return f"features must be an object; got {type(features).__name__}"
    for name, histogram in features.items():
        if not isinstance(histogram, dict):
            return f"features[{name[:40]!r}] must be an object"
        for key in ("edges", "proportions"):
            values = histogram.get(key)
            if not isinstance(values, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            ):
                return f"features[{name[:40]!r}].{key} must be a list of numbers"
        if len(histogram["proportions"]) != len(histogram["edges"]) + 1:
            return f"features[{name[:40]!r}] must have one proportion more than edges"
    return None
