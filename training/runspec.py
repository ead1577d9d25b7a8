"""The run spec: everything one retrain run needs, fixed when the run starts.

:func:`plan` makes it from the retrain form's values (:mod:`training.form`, checked
there) and the ``BANDITOPS_*`` settings, and writes it to
``<runs_dir>/<run key>/spec.json``; the ``bandit_retrain`` DAG and ``banditops train``
both call it, then run the same steps (:mod:`training.pipeline`). The steps take the
:class:`RunSpec` (``to_xcom()`` / ``from_xcom()`` through XCom). Cheap to import (the DAG
file reads it at parse time).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from bandit_core._validation import as_finite_float
from bandit_core.catalog import policy_spec
from bandit_core.support import MAX_UNSUPPORTED, SUPPORT_THRESHOLD
from eventstore.contract import RETRAIN_DAG
from eventstore.settings import CoreSettings, check_rules, env_name
from eventstore.text import redact_credentials, with_password
from eventstore.workspace import as_utc, aware, run_folder
from training.form import FIELDS, check_form
from training.settings import AUTO, WINDOW_DAYS_MAX, PipelineSettings

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
#: The champion–challenger run's linear candidate (``algorithm="auto"``: always trained).
LINEAR_CHALLENGER = "lints"
#: Its neural candidate (joins on large windows where a linear model fails).
NEURAL_CHALLENGER = "neural_linear"
#: Who an automatic promotion is recorded as (the CLI and the DAG run the same retrain).
PROMOTED_BY = RETRAIN_DAG


@dataclass(frozen=True)
class RunSpec:
    """Everything one retrain run needs, fixed when the run starts.

    Parameters
    ----------
    run_key : str
        Identity of the run (the Airflow run id); at most one registered version per key.
    run_dir : str
        The run's folder; every output of the run lives under it.
    store_url, tracking_uri, registry_uri, model_name : str
        Event store, MLflow tracking server, MLflow model registry and registered model;
        the URLs without their passwords (``***``: the spec is an XCom, which every
        Airflow viewer reads): :meth:`url` puts the configured one back.
    registered_alias, staging_alias, production_alias : str
        The aliases a version moves through: every registered version, a version whose
        gate passed (the service's rollout candidate), the version the service serves.
    window_start, window_end : str
        The replay window ``[start, end)``, ISO 8601 with a UTC offset.
    as_of : str
        "Now" for the reward join, fixed at planning so that a re-run sees the same rows
        (:func:`read_as_of`).
    reward_window_s : float
        How long after a decision its reward counts.
    duplicate_rule : {"first_wins", "sum"}
        What the replay does with a repeated reward of one event.
    missing_reward, default_reward
        What the replay does with a decision whose reward never came.
    reward_min, reward_max : float
        Reward range the data validation accepts.
    min_rows : int
        Fewest replay rows the data validation accepts.
    train : dict
        Fields of :class:`training.train.TrainConfig`.
    tolerance, min_ess : float
        The promotion gate's rule (:class:`validation.gate.GateRule`, DR estimator).
    n_resamples : int
        Bootstrap resamples of the offline evaluation.
    auto_promote : bool
        Move the production alias to the version when its gate passes.
    promoted_by : str
        Who an automatic promotion is recorded as.
    shards : int
        Shards of the map-reduce head rebuild and OPE (:mod:`training.shards`); 1 is the
        single-node path.
    drift_warning, drift_failing : float
        The data validation's drift levels against the production version's training
        window: beyond ``drift_warning`` a feature is a recorded warning, beyond
        ``drift_failing`` the validation fails (``0 < drift_warning ≤ drift_failing``).
    overlap : dict
        The form's overlap fields (``floor``, ``deterministic_floor``,
        ``segment_floors``, ``cold_start_floor``, ``exposure_cap``); each trained
        policy's options get them through :func:`overlap_options` (``train["options"]``
        holds the result for ``train["algorithm"]``).
    challengers : dict
        Empty for a run of one algorithm; for ``algorithm="auto"`` the
        champion–challenger plan (:mod:`training.challengers`): ``linear``, ``neural``,
        ``neural_min_rows``, ``epochs``.
    support_threshold, max_unsupported : float
        The gate's support check (:class:`validation.gate.GateRule`).
    model_max_bytes, model_max_dim : int
        The service's admission limits: a version beyond them is not registered.
    """

    run_key: str
    run_dir: str
    store_url: str
    tracking_uri: str
    registry_uri: str
    model_name: str
    registered_alias: str
    staging_alias: str
    production_alias: str
    window_start: str
    window_end: str
    as_of: str
    reward_window_s: float
    duplicate_rule: str
    missing_reward: str
    default_reward: float
    reward_min: float
    reward_max: float
    min_rows: int
    train: dict[str, Any]
    tolerance: float
    min_ess: float
    n_resamples: int
    auto_promote: bool
    promoted_by: str
    shards: int
    drift_warning: float
    drift_failing: float
    overlap: dict[str, Any] = field(default_factory=dict)
    challengers: dict[str, Any] = field(default_factory=dict)
    support_threshold: float = SUPPORT_THRESHOLD
    max_unsupported: float = MAX_UNSUPPORTED
    model_max_bytes: int = CoreSettings.model_fields["model_max_bytes"].default
    model_max_dim: int = CoreSettings.model_fields["model_max_dim"].default

    def __post_init__(self) -> None:
        if not self.run_key.strip():
            raise ValueError("run_key must be a non-empty string; got an empty value.")
        for name in (
            "store_url",
            "tracking_uri",
            "registry_uri",
            "model_name",
            "run_dir",
            "registered_alias",
            "staging_alias",
            "production_alias",
        ):
            if not getattr(self, name):
                raise ValueError(f"{name} must be set; got {getattr(self, name)!r}.")
        aliases = (self.registered_alias, self.staging_alias, self.production_alias)
        if len(set(aliases)) != 3:
            raise ValueError(
                f"registered_alias, staging_alias and production_alias must differ; got {aliases}."
            )
        start, end = self.window()
        if start >= end:
            raise ValueError(
                f"window_start must be before window_end; got {self.window_start} ≥ "
                f"{self.window_end}."
            )
        aware("as_of", self.as_of)
        if not self.reward_window_s > 0:
            raise ValueError(f"reward_window_s must be > 0; got {self.reward_window_s!r}.")
        check_rules(self.duplicate_rule, self.missing_reward)
        for name in ("reward_min", "reward_max", "default_reward"):
            as_finite_float(name, getattr(self, name))  # a head learns each of them
        if not self.reward_min < self.reward_max:
            raise ValueError(
                f"reward_min must be below reward_max; got {self.reward_min} and {self.reward_max}."
            )
        for name in ("min_rows", "n_resamples", "shards"):  # the form's fields' bounds
            FIELDS[name].check(getattr(self, name))
        if not 0.0 < self.drift_warning <= self.drift_failing:
            raise ValueError(
                "drift_warning must be in (0, drift_failing]; got "
                f"{self.drift_warning!r} and {self.drift_failing!r}."
            )
        self.train_config()  # raises ValueError naming a bad training field
        self.gate_rule()  # raises ValueError naming a bad gate field
        if not isinstance(self.auto_promote, bool):
            raise ValueError(f"auto_promote must be a bool; got {self.auto_promote!r}.")

    # ------------------------------------------------------------------ views
    def window(self) -> tuple[datetime, datetime]:
        return aware("window_start", self.window_start), aware("window_end", self.window_end)

    def train_config(self) -> Any:
        # lazy: the DAG files import this module at parse time (no torch there)
        from training.train import TrainConfig

        known = {f.name for f in fields(TrainConfig)} - {"min_rows"}
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise ValueError(
                f"train has unknown fields {unknown}; expected some of {sorted(known)}."
            )
        return TrainConfig(**self.train, min_rows=self.min_rows)

    def gate_rule(self) -> Any:
        # lazy: parse-time module, as above
        from validation.gate import GateRule

        return GateRule(
            tolerance=float(self.tolerance),
            min_ess=float(self.min_ess),
            support_threshold=float(self.support_threshold),
            max_unsupported=float(self.max_unsupported),
        )

    @property
    def folder(self) -> Path:
        return Path(self.run_dir)

    def url(self, name: str) -> str:
        """The spec's ``store_url``, ``tracking_uri`` or ``registry_uri`` with its password:
        the configured URL's (the settings of this process), which must be the same URL."""
        hidden = getattr(self, name)
        if name not in ("store_url", "tracking_uri", "registry_uri"):
            raise ValueError(f"name must be a URL of the spec; got {name!r}.")
        return with_password(hidden, lambda: getattr(PipelineSettings(), name), name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    to_xcom = to_dict

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | RunSpec) -> RunSpec:
        """The spec from its dict (as it travels through XCom); unknown or missing keys are
        an error."""
        if isinstance(data, RunSpec):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(f"spec must be a mapping; got {type(data).__name__}.")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"spec has unknown fields {unknown}.")
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"spec has missing fields {missing}.")
        return cls(**dict(data))

    from_xcom = from_dict

    def write(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / SPEC_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        path.chmod(0o600)
        return path


def plan(
    params: Mapping[str, Any],
    *,
    run_key: str,
    interval_end: datetime,
    settings: PipelineSettings | None = None,
) -> RunSpec:
    """The spec of a retrain run from the retrain form's values; written to ``spec.json``.

    Parameters
    ----------
    params : mapping
        Values of the fields of :data:`training.form.RETRAIN_FORM` (missing or None: the
        field's default): ``window_days`` (number > 0) or ``window_start`` and
        ``window_end`` (``YYYY-MM-DD``, UTC midnights, end exclusive); ``min_rows``;
        ``algorithm``; ``policy_options``; ``epochs`` (neural policies); ``seed``;
        ``tolerance``; ``min_ess``; ``n_resamples``; ``auto_promote``; ``shards``.
    run_key : str
        The Airflow run id (the CLI makes one).
    interval_end : datetime
        End of the run's data interval (the window ends there unless dates are given); also
        the run's "now" for the reward join.
    settings : PipelineSettings, optional
        Default: read from the ``BANDITOPS_*`` environment.

    Returns
    -------
    RunSpec
    """
    settings = PipelineSettings() if settings is None else settings
    values = check_form(params, settings)
    if values["auto_promote"]:
        check_promotion_allowed(settings)
        check_gate_not_loosened(values, settings)
    interval_end = as_utc("interval_end", interval_end)
    start, end = resolve_window(values, interval_end)
    as_of = read_as_of(start, end, interval_end, settings.reward_window_s)
    overlap = {
        k: values[k] for k in ("floor", "deterministic_floor", "segment_floors", "cold_start_floor")
    }
    overlap["exposure_cap"] = values["exposure_cap"]
    challengers: dict[str, Any] = {}
    algorithm = values["algorithm"]
    options = dict(values["policy_options"])
    if algorithm == AUTO:
        # policy_options: the linear candidate's, or per candidate under its name
        own = {
            name: dict(options.pop(name))
            for name in (LINEAR_CHALLENGER, NEURAL_CHALLENGER)
            if isinstance(options.get(name), Mapping)
        }
        options.update(own.get(LINEAR_CHALLENGER, {}))
        challengers = {
            "linear": LINEAR_CHALLENGER,
            "neural": NEURAL_CHALLENGER,
            "neural_min_rows": values["neural_min_rows"],
            "epochs": values["epochs"],
            "options": {NEURAL_CHALLENGER: own.get(NEURAL_CHALLENGER, {})},
        }
        algorithm = LINEAR_CHALLENGER
    check_option_names("policy_options", algorithm, options)
    from eventstore.admission import Admission  # (it loads the policies: not at DAG parse)

    admission = Admission.from_settings(settings)  # what the registry will admit
    admission.check_dimensions(options, "policy_options")
    for name, own_options in challengers.get("options", {}).items():
        check_option_names(f"policy_options.{name}", name, own_options)
        admission.check_dimensions(own_options, f"policy_options.{name}")
    if policy_spec(algorithm).trains_network:
        options.setdefault("epochs", values["epochs"])
    options = overlap_options(algorithm, options, overlap)
    spec = RunSpec(
        run_key=run_key,
        run_dir=str(run_folder(settings.runs_path, run_key)),
        store_url=redact_credentials(settings.store_url),
        tracking_uri=redact_credentials(settings.tracking_uri),
        registry_uri=redact_credentials(settings.registry_uri),
        model_name=settings.model_name,
        registered_alias=settings.registered_alias,
        staging_alias=settings.candidate_alias,
        production_alias=settings.production_alias,
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        as_of=as_of.isoformat(),
        reward_window_s=settings.reward_window_s,
        duplicate_rule=settings.duplicate_rule,
        missing_reward=settings.missing_reward,
        default_reward=settings.default_reward,
        reward_min=settings.reward_min,
        reward_max=settings.reward_max,
        min_rows=values["min_rows"],
        train={"algorithm": algorithm, "options": options, "seed": values["seed"]},
        tolerance=values["tolerance"],
        min_ess=values["min_ess"],
        n_resamples=values["n_resamples"],
        auto_promote=values["auto_promote"],
        promoted_by=PROMOTED_BY,
        shards=values["shards"],
        drift_warning=settings.validation_drift_warning,
        drift_failing=settings.validation_drift_failing,
        overlap=overlap,
        challengers=challengers,
        support_threshold=values["support_threshold"],
        max_unsupported=values["max_unsupported"],
        model_max_bytes=settings.model_max_bytes,
        model_max_dim=settings.model_max_dim,
    )
    spec.write()
    log.info("run %s: window %s → %s, folder %s", run_key, start, end, spec.run_dir)
    return spec


#: The gate's knobs a run's form may set: (form field, its setting, +1 when a larger
#: value lets more candidates pass, -1 when a smaller one does).
GATE_KNOBS = (
    ("tolerance", "retrain_tolerance", +1),
    ("min_ess", "retrain_min_ess", -1),
    ("support_threshold", "retrain_support_threshold", -1),
    ("max_unsupported", "retrain_max_unsupported", +1),
)


def check_promotion_allowed(settings: PipelineSettings) -> None:
    """``ValueError`` when a run asks for ``auto_promote`` that the settings leave off:
    whoever may trigger a run could otherwise move production with no approval, past the
    approvers and the four-eyes rule ``bandit_promote`` enforces (security helper, stop
    56). The form may turn it off, never on."""
    if not settings.retrain_auto_promote:
        raise ValueError(
            f"auto_promote is off in the settings ({env_name('retrain_auto_promote')}="
            "false): a run cannot turn it on, since it would move production without "
            "bandit_promote's approval. Run without it (the version is staged) or change "
            "the setting."
        )


def check_gate_not_loosened(values: Mapping[str, Any], settings: PipelineSettings) -> None:
    """``ValueError`` naming each gate knob of the form looser than its setting: with
    ``auto_promote`` a version that passes goes straight to production, so whoever may
    trigger a run could otherwise promote past the configured gate and the approvers
    (operator helper, stop 44). A looser gate without ``auto_promote`` only stages."""
    looser = [
        f"{field} {values[field]!r} ({env_name(setting)}: {getattr(settings, setting)!r})"
        for field, setting, sign in GATE_KNOBS
        if sign * (float(values[field]) - float(getattr(settings, setting))) > 0
    ]
    if looser:
        raise ValueError(
            f"auto_promote needs the configured gate: {', '.join(looser)} "
            "is looser; run without auto_promote (the version is staged, and its rollout or "
            "bandit_promote's approval decides) or change the settings."
        )


def active_windows(
    runs_path: str | Path, is_active: Callable[[str], bool], expected: int | None = None
) -> dict[str, datetime]:
    """``{run key: window start}`` of the retrain runs whose spec is under ``runs_path``
    (``<run key>/spec.json``) and that ``is_active`` says still run (the retention DAG
    asks Airflow); newest spec first, stopping once ``expected`` runs are found."""
    specs = sorted(
        Path(runs_path).glob(f"*/{SPEC_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    found: dict[str, datetime] = {}
    for path in specs:
        if expected is not None and len(found) >= expected:
            break
        try:
            data = json.loads(path.read_text())
            key, start = str(data["run_key"]), aware("window_start", data["window_start"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("ignoring the unreadable run spec %s: %s", path, exc)
            continue
        if is_active(key):
            found[key] = start
    return found


def resolve_window(values: Mapping[str, Any], interval_end: datetime) -> tuple[datetime, datetime]:
    """``[window_start, window_end)`` from explicit dates, else ``window_days`` back from
    ``interval_end``. Explicit dates end by ``interval_end``: the replay reads rewards no
    later than it (:func:`read_as_of`), and the service refuses a version whose window
    ends after it was registered (later decisions may still get rewards)."""
    start_text, end_text = values.get("window_start"), values.get("window_end")
    if start_text or end_text:
        if not (start_text and end_text):
            missing = "window_end" if start_text else "window_start"
            raise ValueError(
                f"{missing} must be given together with "
                f"{'window_start' if start_text else 'window_end'} (YYYY-MM-DD)."
            )
        start = datetime.combine(parse_date("window_start", start_text), time(), UTC)
        end = datetime.combine(parse_date("window_end", end_text), time(), UTC)
        if start >= end:
            raise ValueError(
                f"window_start must be before window_end; got {start_text} and {end_text}."
            )
        if end - start > timedelta(days=WINDOW_DAYS_MAX):
            raise ValueError(
                f"window_start to window_end must span at most {WINDOW_DAYS_MAX:g} days, as "
                f"window_days; got {(end - start).days} days."
            )
        if end > interval_end:
            raise ValueError(
                f"window_end must not be after the run's data interval end "
                f"({interval_end.isoformat()}); got {end_text}."
            )
        return start, end
    days = values["window_days"]
    return interval_end - timedelta(days=days), interval_end


def read_as_of(
    start: datetime,
    end: datetime,
    interval_end: datetime,
    reward_window_s: float,
    now: datetime | None = None,
) -> datetime:
    """When the replay of ``[start, end)`` reads the store: once the reward window of the
    window's last decision has closed, but no later than the run's data interval end (a
    re-run then reads the same rows) nor than ``now`` (default: the clock's). A run whose
    data interval ends in the future (Airflow takes any logical date a trigger names) read
    the reward windows still open as missing rewards, and its version never learnt them
    (the service replays only decisions after the window's stop).

    A window ending by the interval end less ``reward_window_s`` is read whole; the
    nightly window, which ends at the interval end, stops ``reward_window_s`` before it
    (:func:`eventstore.replay.window_stop`: later decisions could still get rewards, and
    the served version learns them online). A window with no decision whose reward
    window has closed is refused: its replay could only be empty.
    """
    from eventstore.replay import window_stop  # (pandas and SQLAlchemy: not at DAG parse)

    rewards = timedelta(seconds=reward_window_s)
    now = datetime.now(UTC) if now is None else now
    as_of = min(interval_end, end + rewards, now)
    if window_stop(end, rewards, as_of) <= start:
        by = "the run's data interval end" if as_of == interval_end else "now"
        raise ValueError(
            f"the window {start.isoformat()} to {end.isoformat()} holds no decision whose "
            f"reward window (reward_window_s = {reward_window_s:g} s) had closed by "
            f"{by} ({as_of.isoformat()}): its replay would be empty. Make window_days "
            "longer than the reward window, or end window_end earlier."
        )
    return as_of


def check_option_names(field_name: str, algorithm: str, options: Mapping[str, Any]) -> None:
    """Refuse, naming ``field_name``, an option ``algorithm`` does not take (its config's
    fields, the overlap options, ``position_slots``): at planning, not after the window
    was extracted and validated."""
    from bandit_core.policies.overlap import OVERLAP_OPTIONS

    known = {*policy_spec(algorithm).option_names(), *OVERLAP_OPTIONS, "position_slots"}
    unknown = sorted(str(k) for k in set(options) - known)
    if unknown:
        raise ValueError(
            f"{field_name} has options {algorithm} does not take: {unknown}; it takes "
            f"{sorted(known - {'dim_user', 'dim_arm'})}."
        )


def overlap_options(
    algorithm: str, options: Mapping[str, Any], overlap: Mapping[str, Any]
) -> dict[str, Any]:
    """``options`` of ``algorithm`` with the run's overlap fields as policy options
    (:class:`bandit_core.policies.overlap.OverlapConfig`); an option given in ``options``
    itself wins.

    ``floor`` is raised to ``deterministic_floor`` for a policy that does not randomize
    (:meth:`bandit_core.catalog.PolicySpec.randomizes`); ``segment_floors``
    ``{"feature": i, "floors": {...}}`` becomes ``segment_feature`` and
    ``segment_floors``, ``{"user_groups": n, "floors": {"group_<g>": ...}}``
    ``segment_user_groups`` and ``segment_floors``; a zero ``cold_start_floor`` or
    ``exposure_cap`` is left out.

    Raises ``ValueError`` naming a bad field.
    """
    out = dict(options)
    floor = float(overlap.get("floor", 0.0) or 0.0)
    if not policy_spec(algorithm).randomizes(options):
        floor = max(floor, float(overlap.get("deterministic_floor", 0.0) or 0.0))
    wanted: dict[str, Any] = {}
    if floor > 0:
        wanted["floor"] = floor
    segments = overlap.get("segment_floors") or {}
    if segments:
        wanted.update(segment_options(segments))
    cold = float(overlap.get("cold_start_floor", 0.0) or 0.0)
    if cold > 0:
        wanted["cold_start_floor"] = cold
    cap = float(overlap.get("exposure_cap", 0.0) or 0.0)
    if cap > 0:
        wanted["exposure_cap"] = cap
    for key, value in wanted.items():
        out.setdefault(key, value)
    # lazy: parse-time module (the overlap config is plain Python, numpy only)
    from bandit_core.policies.overlap import OverlapConfig, split_overlap_options

    OverlapConfig(**split_overlap_options(out)[1])  # raises naming a bad overlap option
    return out


#: The form's ``segment_floors`` key that names the segment → the overlap option it sets.
SEGMENT_BY = {"feature": "segment_feature", "user_groups": "segment_user_groups"}
#: Least value of each: a context index, a number of groups.
SEGMENT_MIN = {"feature": 0, "user_groups": 1}


def segment_options(segments: Mapping[str, Any]) -> dict[str, Any]:
    """The overlap options of the form's ``segment_floors``: ``{"feature": i, "floors":
    {...}}`` (a context feature's value) or ``{"user_groups": n, "floors": {"group_<g>":
    ...}}`` (a hashed user group among ``n``); ``ValueError`` naming the field."""
    by = [k for k in SEGMENT_BY if k in segments]
    unknown = sorted(set(segments) - {*SEGMENT_BY, "floors"})
    if unknown or len(by) != 1 or not segments.get("floors"):
        raise ValueError(
            'segment_floors must be {"feature": <context index>, "floors": {<segment>: '
            '<floor>}} or {"user_groups": <number of groups>, "floors": {"group_<g>": '
            f"<floor>}}}}; got {dict(segments)!r}."
        )
    if not isinstance(segments["floors"], Mapping):
        raise ValueError(
            "segment_floors.floors must be an object of segment → floor; got "
            f"{segments['floors']!r}."
        )
    key = by[0]
    value = segments[key]
    low = SEGMENT_MIN[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"segment_floors.{key} must be an integer ≥ {low}; got {value!r}.")
    return {SEGMENT_BY[key]: value, "segment_floors": dict(segments["floors"])}


# ---------------------------------------------------------------------- checks
def parse_date(name: str, text: Any) -> date:
    """The ``YYYY-MM-DD`` date ``text`` (field ``name``)."""
    try:
        return date.fromisoformat(str(text))
    except ValueError as exc:
        raise ValueError(f"{name} must be a date YYYY-MM-DD; got {text!r}.") from exc


def check_bool(name: str, value: Any) -> bool:
    """A real bool (``"yes"`` and 1 are refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}.")
    return value
