"""The core settings shared by the service, the pipelines and the monitor (``BANDITOPS_*``).

Where the workspace, the event store and the MLflow registry are, the model's name and
aliases, and the reward rules: one definition, extended by :class:`serving.settings.Settings`
(the service), :class:`training.settings.PipelineSettings` (the retrain and promote
pipelines) and :class:`monitoring.settings.MonitorSettings` (the monitor), so each of these
variables means the same thing everywhere. Cheap to import (pydantic only): the DAG files
read settings at parse time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CoreSettings(BaseSettings):
    """Settings every component reads.

    Attributes
    ----------
    workspace : Path
        Directory for local state: the default SQLite database and the generated user-id
        salt when none is configured.
    database_url : str or None
        SQLAlchemy URL of the event store; default ``sqlite:///<workspace>/banditops.db``.
        PostgreSQL: ``postgresql+psycopg2://user@host:5432/db``.
    sqlite_synchronous : {"FULL", "NORMAL"}
        SQLite ``PRAGMA synchronous`` in WAL mode. ``FULL`` fsyncs the log on every
        commit, so an acknowledged event survives a power loss; ``NORMAL`` survives a
        process crash only.
    mlflow_tracking_uri, mlflow_registry_uri : str or None
        MLflow server (or ``sqlite:///...``) to poll; enables the registry source.
    model_name, production_alias, candidate_alias : str
        The registry model is ``models:/<model_name>@<production_alias>``; the rollout
        candidate (if ``candidate_share > 0``) is ``@<candidate_alias>``, the alias the
        retrain's gate moves to a version that passed it.
    registered_alias : str
        The alias every newly registered version gets (before its gate).
    reward_min, reward_max : float
        Accepted reward range (422 outside it).
    reward_window_s : float
        A reward later than this after its decision is stored but not applied ("late").
    duplicate_rule : {"first_wins", "sum"}
        A repeated reward of an event is ignored, or added to the event's reward in the
        training replay; online, only the first is ever applied to a head.
    missing_reward, default_reward
        What the training replay does with a decision without a reward in its window.
    runs_dir : Path or None
        Where each retrain run keeps its folder ``<runs_dir>/<run key>/`` and the monitor
        its reports; default ``<workspace>/runs``.
    """

    model_config = SettingsConfigDict(env_prefix="BANDITOPS_", extra="ignore")

    workspace: Path = Path("workspace")
    database_url: str | None = None
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    mlflow_tracking_uri: str | None = None
    mlflow_registry_uri: str | None = None
    model_name: str = "banditops-policy"
    production_alias: str = "production"
    candidate_alias: str = "staging"
    registered_alias: str = "candidate"
    reward_min: float = 0.0
    reward_max: float = 1.0
    reward_window_s: float = Field(86_400.0, gt=0.0)
    duplicate_rule: Literal["first_wins", "sum"] = "first_wins"
    missing_reward: Literal["default", "drop"] = "default"
    default_reward: float = 0.0
    runs_dir: Path | None = None

    @model_validator(mode="after")
    def _check_reward_range(self) -> Self:
        if not self.reward_min < self.reward_max:
            raise ValueError(
                f"reward_min must be below reward_max; got {self.reward_min} and {self.reward_max}."
            )
        return self

    # ------------------------------------------------------------------ derived
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
