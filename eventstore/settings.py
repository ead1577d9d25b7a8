"""The core settings shared by the service, the pipelines and the monitor (``BANDITOPS_*``).

Where the workspace, the event store and the MLflow registry are, the model's name and
aliases, and the reward rules: one definition, extended by :class:`serving.settings.Settings`
(the service), :class:`training.settings.PipelineSettings` (the retrain and promote
pipelines) and :class:`monitoring.settings.MonitorSettings` (the monitor), so each of these
variables means the same thing everywhere. Cheap to import (pydantic only): the DAG files
read settings at parse time.

Every settings class reads, in this order of precedence: keyword arguments, the
``BANDITOPS_*`` environment, the workspace file ``<workspace>/banditops.toml``
(:class:`WorkspaceFileSource`), the defaults declared here.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bandit_core import MAX_ABS_INPUT
from eventstore.contract import MODEL_NAME_LENGTH
from eventstore.text import redact_credentials

#: How several rewards of one event make its reward (:mod:`eventstore.replay`): the first
#: one, or their sum.
DuplicateRule = Literal["first_wins", "sum"]
DUPLICATE_RULES: tuple[str, ...] = typing.get_args(DuplicateRule)
#: What the training replay does with a decision without a reward: the default reward,
#: or leave it out.
MissingReward = Literal["default", "drop"]
#: SQLite's ``PRAGMA synchronous`` values the event store may run with (WAL mode).
SqliteSynchronous = Literal["FULL", "NORMAL"]
#: Drift scores of a feature's histogram against its reference (the monitor's
#: ``feature_drift_metric``, the replay suite's ``drift_metric``).
DriftMetric = Literal["psi", "kl"]
MISSING_REWARDS: tuple[str, ...] = typing.get_args(MissingReward)


def check_rules(duplicate_rule: object, missing_reward: object) -> None:
    """Raise a ``ValueError`` naming the field unless both are one of their rules."""
    for name, value, allowed in (
        ("duplicate_rule", duplicate_rule, DUPLICATE_RULES),
        ("missing_reward", missing_reward, MISSING_REWARDS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


#: Name of the workspace configuration file, in the workspace folder.
WORKSPACE_FILE = "banditops.toml"

#: URI schemes of an MLflow tracking server or registry store (a database's with any
#: driver, ``+psycopg2`` and the like).
MLFLOW_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


#: Longest duration any setting may hold, in seconds (31.7 years): far inside what
#: ``timedelta``, ``threading.TIMEOUT_MAX`` and PostgreSQL's integer timeouts take (``inf``
#: made every reward a 500 and killed the loader thread).
MAX_DURATION_S = 1e9
#: Shortest period of a loop a setting paces (a poll, a snapshot, a checkpoint, a probe):
#: 1e-300 passed ``> 0`` and spun a core; 0 still turns off a loop whose field allows it.
MIN_PERIOD_S = 0.01
#: Seconds per unit of a duration setting, by the suffix of its name.
DURATION_UNITS = {"_s": 1.0, "_h": 3600.0, "_days": 86_400.0}


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``Annotated[float, PERIOD]``: the field paces a loop (at least ``MIN_PERIOD_S`` unless 0).
PERIOD = _Marker("PERIOD")
#: ``Annotated[Path, DIRECTORY]``: a folder the process creates and writes in; a path that
#: exists as a file is refused (it failed at start with FileExistsError).
DIRECTORY = _Marker("DIRECTORY")
#: ``Annotated[str | None, BLANK_IS_UNSET]``: an empty value means unset (``X=`` in an env
#: file); for every other field an empty or blank value is refused.
BLANK_IS_UNSET = _Marker("BLANK_IS_UNSET")
#: ``Annotated[str | None, SECRET_PATH]``: a webhook URL whose path is its secret (Slack's,
#: Teams'): wherever settings are shown, its host only (:func:`eventstore.text.webhook_shown`).
SECRET_PATH = _Marker("SECRET_PATH")


class SettingError(ValueError):
    """A setting's value refused by a check of the whole settings (a model validator, so
    pydantic gives it no field): it names the ``field`` for :func:`setting_problems`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_values(cls: type[BaseSettings], values: Any) -> None:
    """``ValueError`` naming the first setting of ``values`` (a model's field values) that
    is a float that is not finite, a duration beyond ``MAX_DURATION_S``, a loop period
    below ``MIN_PERIOD_S`` or a directory that is a file."""
    for name, info in cls.model_fields.items():
        value = values.get(name) if isinstance(values, dict) else getattr(values, name, None)
        if DIRECTORY in info.metadata and isinstance(value, Path) and value.is_file():
            raise SettingError(name, f"{name} must be a directory; {value} is a file.")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(name, f"{name} must be a finite number; got {value!r}.")
        unit = next((u for sfx, u in DURATION_UNITS.items() if name.endswith(sfx)), None)
        if unit is None:
            continue
        if value * unit > MAX_DURATION_S:
            raise SettingError(
                name,
                f"{name} must be at most {MAX_DURATION_S / unit:g} "
                f"({MAX_DURATION_S:g} s); got {value!r}.",
            )
        if PERIOD in info.metadata and 0 < value * unit < MIN_PERIOD_S:
            raise SettingError(
                name,
                f"{name} paces a loop: it must be 0 (off, where allowed) or at least "
                f"{MIN_PERIOD_S / unit:g}; got {value!r}.",
            )


def check_blanks(cls: type[BaseSettings], data: Any) -> None:
    """``ValueError`` naming the first setting given as an empty or blank string (an env
    file's ``X=``, a workspace file's ``x = ""``) unless its field says blank is unset:
    an empty database URL meant the local SQLite file, an empty workspace the current
    directory, an empty user salt unsalted user hashes."""
    if not isinstance(data, dict):
        return
    for name, value in data.items():
        info = cls.model_fields.get(name)
        if info is None or BLANK_IS_UNSET in info.metadata:
            continue
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if isinstance(text, str) and "\x00" in text:
            raise SettingError(name, f"{name} must not contain a NUL character.")
        if isinstance(text, str) and not text.strip():
            raise SettingError(
                name,
                f"{name} is set but empty; unset {ENV_PREFIX}{name.upper()} (or remove it "
                "from the workspace file) for its default.",
            )


#: The prefix of every setting's environment variable.
ENV_PREFIX = "BANDITOPS_"


def env_name(field: str) -> str:
    """The environment variable of setting ``field``: ``BANDITOPS_<FIELD>``."""
    return f"{ENV_PREFIX}{field.upper()}"


#: The environment variable that names the workspace.
WORKSPACE_ENV = env_name("workspace")
#: The tables of the workspace file: one per settings class, each holding the fields that
#: class adds to its base (a test keeps this equal to the classes' ``section`` names).
SECTIONS = ("core", "service", "pipelines", "monitor")
#: Where a value came from (:meth:`CoreSettings.origins`).
Origin = Literal["argument", "env", "file", "default"]


def workspace_of(init_kwargs: dict[str, Any] | None = None) -> Path:
    """The workspace folder: ``workspace=`` given to the settings class, else
    ``BANDITOPS_WORKSPACE``, else ``./workspace`` (never the workspace file itself)."""
    if init_kwargs and init_kwargs.get("workspace") is not None:
        return Path(init_kwargs["workspace"])
    if WORKSPACE_ENV in os.environ:
        return Path(os.environ[WORKSPACE_ENV])
    default = CoreSettings.model_fields["workspace"].default
    return Path(default)


def workspace_file(workspace: Path) -> Path:
    """The configuration file of ``workspace``."""
    return Path(workspace) / WORKSPACE_FILE


def section_fields(settings_cls: type[BaseSettings]) -> dict[str, list[str]]:
    """``{section: field names}`` of ``settings_cls`` and its settings bases, base first:
    each class's section holds the fields its base lacks."""
    out: dict[str, list[str]] = {}
    for klass in reversed(settings_cls.__mro__):
        section = klass.__dict__.get("section")
        if not isinstance(section, str) or not issubclass(klass, BaseSettings):
            continue
        base = next(b for b in klass.__mro__[1:] if issubclass(b, BaseSettings))
        out[section] = [n for n in klass.model_fields if n not in base.model_fields]
    return out


def _known_sections() -> dict[str, set[str]]:
    """``{section: field names}`` over every settings class imported so far (the
    service's, the pipelines', the monitor's derive from :class:`CoreSettings`)."""
    out: dict[str, set[str]] = {}
    stack: list[type[BaseSettings]] = [CoreSettings]
    while stack:
        klass = stack.pop()
        stack.extend(klass.__subclasses__())
        for section, names in section_fields(klass).items():
            out.setdefault(section, set()).update(names)
    return out


def _where_it_belongs(key: str, names: list[str]) -> str:
    """`` (it belongs in [service])`` for a setting of another table, `` (did you mean
    poll_interval_s?)`` for a near miss of one of ``names``, else nothing."""
    home = sorted(s for s, fields in _known_sections().items() if key in fields)
    if home:
        return f" (it belongs in [{home[0]}])"
    near = difflib.get_close_matches(key, names, n=1, cutoff=0.8)
    return f" (did you mean {near[0]}?)" if near else ""


def _is_path(info: FieldInfo) -> bool:
    annotation = info.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return Path in typing.get_args(annotation)
    return annotation is Path


def read_workspace_file(settings_cls: type[BaseSettings], path: Path) -> dict[str, Any]:
    """The values the file ``path`` gives the fields of ``settings_cls`` (``{}`` when it does
    not exist); relative paths in it are relative to the file's folder.

    Raises
    ------
    ValueError
        When the file is not TOML, has a table other than :data:`SECTIONS` or a value
        outside a table, has a key that is not a field of its table's settings class, sets
        one of ``settings_cls``'s fields in another class's table, or sets ``workspace``
        (the folder that holds the file).
    """
    if not path.exists():
        return {}
    if not path.is_file():  # a folder of that name was read as no file: every default
        raise ValueError(f"{path} is not a file; the workspace's settings file must be one.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a valid TOML file: {exc}") from exc
    except OSError as exc:  # unreadable: its settings would silently not apply
        raise ValueError(f"{path} cannot be read: {exc.strerror or exc}.") from exc
    for key, table in data.items():
        if key not in SECTIONS or not isinstance(table, dict):
            raise ValueError(
                f"{path}: {key!r} is not a settings table; expected tables "
                f"{', '.join(f'[{s}]' for s in SECTIONS)} with settings as keys."
            )
    values: dict[str, Any] = {}
    sections = section_fields(settings_cls)
    home = {name: section for section, names in sections.items() for name in names}
    for section, table in data.items():  # another component's table (a name is in one)
        misplaced = sorted(set(table) & set(home)) if section not in sections else []
        if misplaced:  # its owner does not read it there, and this class would not
            raise ValueError(
                f"{path}: {misplaced[0]!r} is set in [{section}] but belongs in "
                f"[{home[misplaced[0]]}], where it would apply; move it there."
            )
    for section, names in sections.items():
        table = data.get(section, {})
        unknown = sorted(set(table) - set(names))
        if unknown:
            raise ValueError(
                f"{path}: unknown setting {unknown[0]!r} in [{section}]"
                f"{_where_it_belongs(unknown[0], names)}; expected some of "
                f"{', '.join(sorted(names))}."
            )
        if "workspace" in table:
            raise ValueError(
                f"{path}: 'workspace' cannot be set in the workspace file (it is the folder "
                "that holds the file); use BANDITOPS_WORKSPACE or --workspace."
            )
        for name, value in table.items():
            if isinstance(value, str) and _is_path(settings_cls.model_fields[name]):
                value = path.parent / Path(value).expanduser()
            values[name] = value
    return values


@dataclass(frozen=True)
class Bounds:
    """The numeric bounds a settings field declares (``Field(ge=…, lt=…)``): the one place
    they are written; the configuration reference and the retrain form read them here."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    @classmethod
    def of(cls, info: FieldInfo) -> Bounds:
        found = {
            key: value
            for item in info.metadata
            for key in ("ge", "gt", "le", "lt")
            if (value := getattr(item, key, None)) is not None
        }
        return cls(**found)

    def text(self) -> str:
        """``in [0, 1)``, ``≥ 1``, ``> 0``… (empty without bounds)."""
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            left = "[" if self.ge is not None else "("
            right = "]" if self.le is not None else ")"
            return f"in {left}{_num(low)}, {_num(high)}{right}"
        if low is not None:
            return f"{'≥' if self.ge is not None else '>'} {_num(low)}"
        if high is not None:
            return f"{'≤' if self.le is not None else '<'} {_num(high)}"
        return ""


def _num(value: float) -> str:
    """An integer bound in full (2⁶³ − 1, not 9.22337e+18), any other one short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _set_by(field: str) -> str:
    """`` (BANDITOPS_<FIELD>)`` when that variable is set (in any case), else
    `` (<workspace>/banditops.toml [table])`` when the workspace file sets it, else
    nothing: where the operator finds the value."""
    variable = env_name(field)
    if variable in {k.upper() for k in os.environ}:
        return f" ({variable})"
    path = workspace_of() / WORKSPACE_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return ""
    tables = [t for t in SECTIONS if isinstance(data.get(t), dict) and field in data[t]]
    return f" ({path} [{tables[0]}])" if tables else ""


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:///`` URL names (absolute), or None for another database, an
    in-memory one or a ``file:`` URI (SQLAlchemy's ``?uri=true``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None  # not a database URL (an MLflow server's): not a file
    if parsed.get_backend_name() != "sqlite" or parsed.query.get("uri"):
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).absolute()


def check_readable(settings: CoreSettings, *, store: bool = False, registry: bool = False) -> None:
    """Raise a ``ValueError`` naming the path when a command that only reads would open a
    SQLite file that does not exist: the event store (``store``), the MLflow registry
    (``registry``). Opening one creates it empty: ``banditops models --json`` on a
    mistyped ``--workspace`` made a new ``mlflow.db`` and printed ``[]`` with exit 0 (a
    script could not tell no versions from a wrong path), ``rollout status`` left an
    empty ``banditops.db`` behind. Nothing is created here."""
    # (what, its URL, the setting that names it, what creates it)
    wanted: list[tuple[str, str, str, str]] = []
    if store:
        wanted.append(("event store", settings.store_url, "database_url", "`banditops db upgrade`"))
    if registry:
        for uri, field in (
            (settings.tracking_uri, "mlflow_tracking_uri"),
            (settings.registry_uri, "mlflow_registry_uri"),
        ):
            if uri not in {url for _, url, _, _ in wanted}:
                wanted.append(("MLflow registry", uri, field, "the first `banditops train`"))
    for what, url, field, maker in wanted:
        path = sqlite_file(url)
        if path is None or path.exists():
            continue
        if getattr(settings, field) is not None:
            where = f"named by {field}{_set_by(field)}"
        elif not settings.workspace.is_dir():
            where = f"the workspace folder {settings.workspace.absolute()} does not exist"
        else:
            where = f"the default of the workspace {settings.workspace.absolute()}"
        raise ValueError(
            f"the {what} {path} does not exist: {where}; nothing was created. Check "
            f"--workspace (BANDITOPS_WORKSPACE) and {env_name(field)}; {maker} creates it."
        )


def create_directories(settings: BaseSettings) -> None:
    """Create every folder setting (``DIRECTORY``) that does not exist yet, before a
    process starts work: ``ValueError`` naming the setting when one cannot be (a path
    under ``/proc``, no permission), where the service failed at start with a traceback."""
    for name, info in type(settings).model_fields.items():
        value = getattr(settings, name)
        if DIRECTORY in info.metadata and isinstance(value, Path):
            try:
                value.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValueError(
                    f"{name}{_set_by(name)}: the folder {value} cannot be created: "
                    f"{exc.strerror or exc}."
                ) from None


def setting_problems(exc: ValidationError) -> list[str]:
    """One ``field: what it expects`` line per problem of a settings ``ValidationError``
    (what a command prints instead of a traceback); a field set by its environment
    variable is named by that variable too (``monitor_alpha (BANDITOPS_MONITOR_ALPHA)``),
    so that the operator finds where the value came from. Values are not repeated: a
    secret's would be (the checks' own messages show the others)."""
    lines = []
    for error in exc.errors():
        cause = (error.get("ctx") or {}).get("error")
        field = error["loc"][0] if error["loc"] else getattr(cause, "field", None)
        message = error["msg"].removeprefix("Value error, ")
        if field is None:
            lines.append(f"settings: {message}")
            continue
        message = message.removeprefix(f"{field} ")  # named once, in front
        path = ".".join(str(part) for part in error["loc"]) or str(field)
        lines.append(f"{path}{_set_by(str(field))}: {message}")
    return lines


class WorkspaceFileSource(PydanticBaseSettingsSource):
    """Settings from ``<workspace>/banditops.toml`` (:func:`read_workspace_file`), the
    workspace found by :func:`workspace_of` from the class's keyword arguments."""

    def __init__(self, settings_cls: type[BaseSettings], init_kwargs: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.path = workspace_file(workspace_of(init_kwargs))

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return read_workspace_file(self.settings_cls, self.path)


#: A registry alias (MLflow's rule): letters, digits, ``_`` and ``-``; not ``v<digits>``.
_ALIAS = re.compile(r"[\w-]{1,255}")
_VERSION = re.compile(r"[vV]\d+")


class CoreSettings(BaseSettings):
    """Settings every component reads.

    Where settings come from, by precedence: keyword arguments (the CLI's options), then
    ``BANDITOPS_<FIELD>`` environment variables, then the workspace file
    ``<workspace>/banditops.toml``, then the defaults below. The workspace is found first
    and without the file: ``workspace=`` (the CLI's ``--workspace``) or, unset,
    ``BANDITOPS_WORKSPACE`` or, unset, ``./workspace``. The file has one table per settings
    class (``[core]`` for these fields, ``[service]``, ``[pipelines]``, ``[monitor]`` for
    the fields each extension adds), keys are field names; a key its table's class does not
    have is an error naming the key and the file, and relative paths in it are relative to
    the workspace. ``banditops config show`` prints each value and where it came from.

    Attributes
    ----------
    workspace : Path
        Directory for local state: the default SQLite database and the generated user-id
        salt when none is configured.
    database_url : str or None
        SQLAlchemy URL of the event store; default ``sqlite:///<workspace>/banditops.db``.
        PostgreSQL: ``postgresql+psycopg2://user@host:5432/db``.
    sqlite_synchronous : str
        SQLite ``PRAGMA synchronous`` in WAL mode. ``FULL`` fsyncs the log on every
        commit, so an acknowledged event survives a power loss; ``NORMAL`` survives a
        process crash only.
    mlflow_tracking_uri, mlflow_registry_uri : str or None
        MLflow server (or ``sqlite:///...``) to poll; enables the registry source.
    model_name, production_alias, candidate_alias : str
        The registry model is ``models:/<model_name>@<production_alias>``; the rollout
        candidate (while a staged rollout of it runs, or if ``candidate_share > 0``) is
        ``@<candidate_alias>``, the alias the retrain's gate moves to a version that
        passed it.
    registered_alias : str
        The alias every newly registered version gets (before its gate).
    reward_min, reward_max : float
        Accepted reward range (422 outside it), within ±``bandit_core.MAX_ABS_INPUT``
        (as is ``default_reward``): a head learns every reward it accepts.
    reward_window_s : float
        A reward later than this after its decision is stored but not applied ("late").
    duplicate_rule : str
        A repeated reward of an event is ignored, or added to the event's reward in the
        training replay (whose validation then holds the reward range per received
        reward); online, only the first is ever applied to a head. A reward sent again
        with its ``idempotency_key`` is not a repeat: it is answered as the first, once.
    missing_reward : str
        What the training replay does with a decision without a reward in its window:
        ``default`` gives it ``default_reward`` (a client that reports clicks only),
        ``drop`` leaves it out.
    default_reward : float
        The reward of a decision without one in its window, under ``missing_reward =
        default`` (the replay, the monitor and the rollout's outcomes read it so).
    runs_dir : Path or None
        Where each retrain run keeps its folder ``<runs_dir>/<run key>/`` and the monitor
        its reports; default ``<workspace>/runs``.
    model_max_dim : int
        Largest dimension a model version's configuration may declare (the service
        refuses to load a larger one; the retrain refuses to register it, or to compare
        with it as production).
    model_max_bytes : int
        Largest total (uncompressed) size of a model version's arrays (the same three
        places).
    """

    # a ValidationError's text repeats no value (pydantic's ``input_value``): a token's,
    # a URL's password, a webhook's path would be (each check's message shows what it may)
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", hide_input_in_errors=True
    )
    #: This class's table in the workspace file.
    section: ClassVar[str] = "core"

    workspace: Annotated[Path, DIRECTORY] = Path("workspace")
    database_url: str | None = None
    sqlite_synchronous: SqliteSynchronous = "FULL"
    mlflow_tracking_uri: str | None = None
    mlflow_registry_uri: str | None = None
    model_name: str = Field("banditops-policy", min_length=1, max_length=MODEL_NAME_LENGTH)
    production_alias: str = "production"
    candidate_alias: str = "staging"
    registered_alias: str = "candidate"
    reward_min: float = Field(0.0, ge=-MAX_ABS_INPUT, le=MAX_ABS_INPUT)
    reward_max: float = Field(1.0, ge=-MAX_ABS_INPUT, le=MAX_ABS_INPUT)
    reward_window_s: float = Field(86_400.0, gt=0.0)
    duplicate_rule: DuplicateRule = "first_wins"
    missing_reward: MissingReward = "default"
    default_reward: float = Field(0.0, ge=-MAX_ABS_INPUT, le=MAX_ABS_INPUT)
    runs_dir: Annotated[Path | None, DIRECTORY] = None
    model_max_dim: int = Field(4096, ge=1)
    model_max_bytes: int = Field(512 << 20, ge=1 << 10)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except (ArgumentError, ValueError) as exc:
            raise ValueError(
                "database_url must be a SQLAlchemy URL, e.g. sqlite:///path/events.db or "
                f"postgresql+psycopg2://user@host:5432/db; got {redact_credentials(value)!r}."
            ) from exc
        try:
            url.get_dialect().import_dbapi()
        except Exception as exc:  # NoSuchModuleError, or the driver's ModuleNotFoundError
            raise ValueError(
                f"database_url names the driver {url.drivername!r}, which is not installed "
                f"({type(exc).__name__}: {exc}); PostgreSQL: postgresql+psycopg2://…"
            ) from exc
        return value

    @field_validator("mlflow_tracking_uri", "mlflow_registry_uri")
    @classmethod
    def _mlflow_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split(":", 1)[0].split("+", 1)[0].lower() if ":" in value else ""
        if scheme not in MLFLOW_SCHEMES or any(c.isspace() for c in value):
            raise ValueError(
                f"must be an MLflow tracking or registry URI ({', '.join(MLFLOW_SCHEMES)}"
                f"; the file store is disabled: use sqlite:///path/mlflow.db); got "
                f"{redact_credentials(value)!r}."
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_blanks(cls, data: Any) -> Any:
        check_blanks(cls, data)
        return data

    @model_validator(mode="after")
    def _check_values(self) -> Self:
        check_values(type(self), self)
        return self

    @model_validator(mode="after")
    def _check_aliases(self) -> Self:
        names = ("registered_alias", "candidate_alias", "production_alias")
        for name in names:
            value = getattr(self, name)
            if (
                not _ALIAS.fullmatch(value)
                or value.lower() == "latest"
                or _VERSION.fullmatch(value)
            ):
                raise SettingError(
                    name,
                    f"{name} must be a registry alias: 1–255 letters, digits, '_' or '-', "
                    f"neither 'latest' nor like a version ('v3'); got {value!r}.",
                )
        values = [getattr(self, n) for n in names]
        if len(set(values)) < len(values):
            raise ValueError(
                f"{', '.join(names)} must differ (a version's stage is its alias); got {values}."
            )
        return self

    @model_validator(mode="after")
    def _check_reward_range(self) -> Self:
        if not self.reward_min < self.reward_max:
            raise ValueError(
                f"reward_min must be below reward_max; got {self.reward_min} and {self.reward_max}."
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments > ``BANDITOPS_*`` > ``<workspace>/banditops.toml`` > defaults."""
        init_kwargs: dict[str, Any] = {}
        if isinstance(init_settings, InitSettingsSource):
            init_kwargs = init_settings.init_kwargs
        return init_settings, env_settings, WorkspaceFileSource(settings_cls, init_kwargs)

    @classmethod
    def origins(cls, **init_kwargs: Any) -> dict[str, Origin]:
        """Where each field's value comes from when the class is built with ``init_kwargs``."""
        env = EnvSettingsSource(cls)()
        workspace = workspace_of(init_kwargs)
        in_file = read_workspace_file(cls, workspace_file(workspace))
        out: dict[str, Origin] = {}
        for name in cls.model_fields:
            if name in init_kwargs:
                out[name] = "argument"
            elif name in env:
                out[name] = "env"
            elif name in in_file:
                out[name] = "file"
            else:
                out[name] = "default"
        return out

    # ------------------------------------------------------------------ derived
    @property
    def workspace_file(self) -> Path:
        """The workspace configuration file (it need not exist)."""
        return workspace_file(self.workspace)

    @property
    def store_url(self) -> str:
        """The event-store URL (the configured one or the workspace SQLite file)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.workspace / 'banditops.db').resolve()}"

    @property
    def tracking_uri(self) -> str:
        """The MLflow registry: the configured URI or ``<workspace>/mlflow.db``."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.workspace / 'mlflow.db').resolve()}"

    @property
    def registry_uri(self) -> str:
        """The MLflow model registry: the configured URI or the tracking URI."""
        return self.mlflow_registry_uri or self.tracking_uri

    @property
    def runs_path(self) -> Path:
        """The runs folder (absolute)."""
        return (self.runs_dir or self.workspace / "runs").resolve()


#: Every core setting's declared default: where a function's default stands for a
#: setting (a reward rule, the reward range), it is read here, never written again.
CORE_DEFAULTS: dict[str, Any] = {name: f.default for name, f in CoreSettings.model_fields.items()}
