"""Every ``BANDITOPS_*`` setting, set once through the workspace file and once through the
environment, reaches every component that reads it: the service's, the pipelines' and the
monitor's settings, the retrain run spec (``training.runspec.plan``), the DAG form's
defaults and ``banditops config show``.

:func:`samples` holds one non-default value per setting; a setting without one fails
:func:`test_every_setting_has_a_non_default_sample`, so a new field cannot skip this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bandit_core.policies.overlap import OVERLAP_OPTIONS
from eventstore.settings import SECTIONS, WORKSPACE_ENV, CoreSettings, section_fields
from eventstore.text import webhook_shown
from ops import config_file
from ops.config_reference import SETTINGS_CLASSES, all_fields
from serving.settings import Settings
from training.form import RETRAIN_FORM, form_defaults
from training.runspec import plan
from training.settings import PipelineSettings

BANDITOPS = Path(sys.executable).with_name("banditops")
#: The checkout the tests run from: the CLI's process imports its code (not the code the
#: virtualenv installed, which may be another checkout's).
ROOT = Path(__file__).resolve().parents[1]
END = datetime(2026, 3, 2, tzinfo=UTC)
MASK = "**********"


#: Settings that exclude each other: the service reads model files only without a
#: registry (both set is refused), so the model files have a sample set of their own.
MODEL_FILES = ("model_path", "candidate_model_path")
REGISTRY = ("mlflow_tracking_uri", "mlflow_registry_uri")


def samples(root: Path, models: str = "registry") -> dict[str, Any]:
    """One valid non-default value per setting (``workspace`` aside: it locates the file),
    with the registry's settings (``models="registry"``) or the model files' (``"files"``)."""
    values = {
        # core
        "database_url": f"sqlite:///{root / 'elsewhere.db'}",
        "sqlite_synchronous": "NORMAL",
        "mlflow_tracking_uri": f"sqlite:///{root / 'registry.db'}",
        "mlflow_registry_uri": f"sqlite:///{root / 'models.db'}",
        "model_name": "ranker",
        "production_alias": "champion",
        "candidate_alias": "challenger",
        "registered_alias": "fresh",
        "reward_min": -1.0,
        "reward_max": 5.0,
        "reward_window_s": 2.0,
        "duplicate_rule": "sum",
        "missing_reward": "drop",
        "default_reward": 0.25,
        "runs_dir": root / "my-runs",
        # service
        "model_path": root / "model.npz",
        "candidate_model_path": root / "candidate.npz",
        "candidate_share": 0.1,
        "poll_interval_s": 1.5,
        "fallback_policy": "epsilon_greedy",
        "fallback_epsilon": 0.2,
        "api_token": SecretStr("token-123"),
        "auth_disabled": True,
        "public_decisions": True,
        "decision_deadline_s": 0.5,
        "costly_work_nice": 10,
        "sqlite_checkpoint_s": 0.25,
        "http_backlog": 512,
        "http_body_timeout_s": 10.0,
        "http_large_body_bytes": 32768,
        "http_large_body_concurrency": 2,
        "http_limit_concurrency": 300,
        "http_max_incomplete_event_bytes": 8192,
        "http_timeout_keep_alive_s": 2.0,
        "http_head_timeout_s": 4.0,
        "inline_work_units": 100_000,
        "max_abs_feature": 1e4,
        "max_arm_features": 256,
        "max_context_features": 512,
        "max_work_units": 10_000_000,
        "model_max_bytes": 1 << 20,
        "model_max_dim": 1000,
        "max_body_bytes": 4096,
        "max_candidates": 50,
        "max_slate": 5,
        "context_features": ["age", "tenure", "visits", "spend", "region", "device"],
        "user_salt": SecretStr("salt-456"),
        "snapshot_every_rewards": 10,
        "snapshot_every_s": 12.0,
        "snapshot_part_bytes": 4096,
        "snapshot_keep": 3,
        "writer_max_batch": 64,
        "decision_cache_size": 99,
        "decision_cache_bytes": 1 << 20,
        "journal": False,
        "journal_dir": root / "journal-here",
        "journal_max_bytes": 2 << 20,
        "store_probe_s": 0.5,
        "store_connect_timeout_s": 2.5,
        "store_lock_timeout_s": 0.7,
        "store_deadline_s": 4.5,
        "model_dim_user": 6,
        "model_dim_arm": 4,
        "seed": 7,
        "workers": 2,
        "replica_id": "replica-a",
        "replica_sync_s": 3.0,
        "replica_sync_horizon_s": 30.0,
        "lease_s": 12.0,
        "catalog_index": "hnsw",
        "catalog_exact_max": 10,
        "catalog_hnsw_m": 8,
        "catalog_hnsw_ef_construction": 40,
        "catalog_hnsw_ef_search": 64,
        "catalog_rebuild_fraction": 0.5,
        "catalog_poll_s": 2.0,
        "max_retrieve": 100,
        "max_groups": 10,
        "max_arms": 500,
        "new_item_impressions": 5,
        "new_item_p_min": 0.05,
        "new_item_max_share": 0.3,
        "new_item_slots": 1,
        "slate_marginal_draws": 0,
        "slate_max_states": 16,
        # pipelines
        "retrain_schedule": "30 3 * * *",
        "monitor_schedule": "@daily",
        "retrain_window_days": 2.5,
        "retrain_min_rows": 500,
        "retrain_algorithm": "dropout",
        "retrain_policy_options": {"hidden": [8], "n_sim": 50},
        "retrain_epochs": 3,
        "retrain_seed": 11,
        "retrain_tolerance": 0.1,
        "retrain_min_ess": 30.0,
        "retrain_n_resamples": 200,
        "retrain_auto_promote": True,
        "retrain_shards": 3,
        "retrain_neural_min_rows": 2000,
        "retrain_floor": 0.03,
        "retrain_deterministic_floor": 0.05,
        "retrain_segment_floors": {"feature": 1, "floors": {"1": 0.1}},
        "retrain_cold_start_floor": 0.04,
        "retrain_exposure_cap": 0.6,
        "retrain_support_threshold": 0.02,
        "retrain_max_unsupported": 0.3,
        "retrain_queue": "gpu",
        "retries": 0,
        "retry_delay_s": 5.0,
        "task_timeout_s": 600.0,
        "owner": "ml-team",
        "approval_timeout_h": 1.0,
        "promote_approvers": ["ann", "bob"],
        "promote_four_eyes": True,
        "rollout_schedule": "*/5 * * * *",
        "rollout_stages": [0.1, 0.5, 1.0],
        "rollout_min_stage_s": 60.0,
        "rollout_min_samples": 50,
        "rollout_max_duration_s": 3600.0,
        "rollout_margin": 0.02,
        "rollout_alpha": 0.1,
        "rollout_design_n": 300,
        "rollout_auto_start": False,
        "validation_drift_warning": 0.2,
        "validation_drift_failing": 2.0,
        "retention_schedule": "15 4 * * *",
        "retention_days": 30.0,
        "runs_retention_days": 7.0,
        # monitor
        "alert_webhook_url": "http://127.0.0.1:9/alerts",
        "monitor_lookback_days": 3.0,
        "reward_drift_max": 0.3,
        "feature_drift_metric": "kl",
        "feature_drift_max": 0.5,
        "entropy_min_ratio": 0.4,
        "coverage_min_ratio": 0.02,
        "propensity_floor": 0.02,
        "propensity_violation_max": 0.05,
        "fallback_rate_max": 0.1,
        "service_url": "http://127.0.0.1:9",
        "latency_p99_max_s": 0.2,
        "retrain_drift_min": 0.4,
        "retrain_drift_cooldown_h": 6.0,
        "explored_share_min": 0.05,
        "model_error_share_max": 0.02,
        "segment_feature": "context_1",
        "segment_user_groups": 4,
        "segment_min_decisions": 10,
        "monitor_alpha": 0.05,
    }
    left_out = MODEL_FILES if models == "registry" else REGISTRY
    return {k: v for k, v in values.items() if k not in left_out}


def _spec_checks() -> dict[str, Callable[[dict[str, Any]], Any]]:
    """``{setting: what the run spec holds for it}`` for the settings a retrain run reads."""
    return {
        "database_url": lambda s: s["store_url"],
        "mlflow_tracking_uri": lambda s: s["tracking_uri"],
        "model_name": lambda s: s["model_name"],
        "reward_min": lambda s: s["reward_min"],
        "reward_max": lambda s: s["reward_max"],
        "reward_window_s": lambda s: s["reward_window_s"],
        "missing_reward": lambda s: s["missing_reward"],
        "default_reward": lambda s: s["default_reward"],
        "runs_dir": lambda s: Path(s["run_dir"]).parent,
        "retrain_window_days": lambda s: (
            (
                datetime.fromisoformat(s["window_end"]) - datetime.fromisoformat(s["window_start"])
            ).total_seconds()
            / 86_400
        ),
        "retrain_min_rows": lambda s: s["min_rows"],
        "retrain_algorithm": lambda s: s["train"]["algorithm"],
        "retrain_policy_options": lambda s: {
            k: v
            for k, v in s["train"]["options"].items()
            if k != "epochs" and k not in OVERLAP_OPTIONS
        },
        "retrain_epochs": lambda s: s["train"]["options"]["epochs"],
        "retrain_seed": lambda s: s["train"]["seed"],
        "retrain_tolerance": lambda s: s["tolerance"],
        "retrain_min_ess": lambda s: s["min_ess"],
        "retrain_n_resamples": lambda s: s["n_resamples"],
        "retrain_auto_promote": lambda s: s["auto_promote"],
        "retrain_shards": lambda s: s["shards"],
        "retrain_floor": lambda s: s["overlap"]["floor"],
        "retrain_deterministic_floor": lambda s: s["overlap"]["deterministic_floor"],
        "retrain_segment_floors": lambda s: s["overlap"]["segment_floors"],
        "retrain_cold_start_floor": lambda s: s["train"]["options"]["cold_start_floor"],
        "retrain_exposure_cap": lambda s: s["train"]["options"]["exposure_cap"],
        "retrain_support_threshold": lambda s: s["support_threshold"],
        "retrain_max_unsupported": lambda s: s["max_unsupported"],
        "duplicate_rule": lambda s: s["duplicate_rule"],
        "production_alias": lambda s: s["production_alias"],
        "candidate_alias": lambda s: s["staging_alias"],
        "registered_alias": lambda s: s["registered_alias"],
        "mlflow_registry_uri": lambda s: s["registry_uri"],
        "validation_drift_warning": lambda s: s["drift_warning"],
        "validation_drift_failing": lambda s: s["drift_failing"],
        "model_max_bytes": lambda s: s["model_max_bytes"],
        "model_max_dim": lambda s: s["model_max_dim"],
    }


def _env_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _shown(value: Any, name: str = "") -> Any:
    """``value`` of setting ``name`` as ``config show --json`` prints it."""
    if isinstance(value, SecretStr):
        return MASK
    if name == "alert_webhook_url":  # a webhook's secret is its path
        return webhook_shown(value)
    if isinstance(value, Path):
        return str(value)
    return value


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for key in list(os.environ):
        if key.startswith("BANDITOPS_"):
            monkeypatch.delenv(key)
    yield monkeypatch


def test_every_setting_has_a_non_default_sample(tmp_path: Path) -> None:
    values = {**samples(tmp_path, "registry"), **samples(tmp_path, "files")}
    assert set(values) == all_fields() - {"workspace"}
    with pytest.raises(ValueError, match="model_path is set with mlflow_tracking_uri"):
        Settings(workspace=tmp_path, **values)
    for name, value in values.items():
        cls = next(c for c, _ in SETTINGS_CLASSES if name in c.model_fields)
        declared = cls.model_construct().model_dump()[name]
        assert _plain(value) != declared, f"the sample of {name} is its default"
    # the file's tables are the settings classes' sections, each class one table
    assert [c.section for c, _ in SETTINGS_CLASSES] == list(SECTIONS)  # type: ignore[attr-defined]


def test_the_settings_backed_form_fields_are_the_settings_retrain_fields() -> None:
    """Every form field with a setting default names a ``retrain_*`` setting, and every
    field of ``PipelineSettings.RETRAIN_FORM`` is such a form field."""
    backed = {f.name: f.setting for f in RETRAIN_FORM if f.setting}
    assert backed == {name: f"retrain_{name}" for name in PipelineSettings.RETRAIN_FORM}


@pytest.mark.parametrize("models", ["registry", "files"])
@pytest.mark.parametrize("source", ["file", "env"])
def test_each_setting_reaches_every_component(
    source: str, models: str, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    values = samples(tmp_path, models)
    clean_env.setenv(WORKSPACE_ENV, str(ws))
    if source == "file":
        config_file.write(ws, values)
    else:
        ws.mkdir()
        for name, value in values.items():
            clean_env.setenv(f"BANDITOPS_{name.upper()}", _env_text(value))

    # the settings of the service, the pipelines and the monitor
    built = {cls: cls() for cls, _ in SETTINGS_CLASSES}
    for name, value in values.items():
        readers = [cls for cls in built if name in cls.model_fields]
        assert readers, name
        for cls in readers:
            got = getattr(built[cls], name)
            assert _plain(got) == _plain(value), (cls.__name__, name, source)
            assert cls.origins()[name] == source, (cls.__name__, name)
    for cls in built:
        assert built[cls].workspace == ws

    # the run spec of a retrain started with an empty form (as the UI's trigger button)
    pipelines = built[PipelineSettings]
    assert isinstance(pipelines, PipelineSettings)
    spec = plan({}, run_key="manual__1", interval_end=END, settings=pipelines).to_dict()
    for name, read in _spec_checks().items():
        if name not in values:
            continue  # the other sample set's
        expected = values[name]
        if isinstance(expected, float):
            expected = pytest.approx(expected)
        assert read(spec) == expected, (name, source)
    # and the DAG form's defaults (Param defaults are the settings' retrain_* values)
    form = form_defaults(pipelines)
    assert pipelines.retrain_defaults().items() <= form.items()
    for field in PipelineSettings.RETRAIN_FORM:
        assert form[field] == values[f"retrain_{field}"]

    # the CLI, in a process of its own
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shown = subprocess.run(
        [str(BANDITOPS), "config", "show", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    table = json.loads(shown.stdout)
    for name, value in values.items():
        row = table[f"BANDITOPS_{name.upper()}"]
        assert row == {"value": _shown(value, name), "source": source}, name
    assert table["BANDITOPS_WORKSPACE"] == {"value": str(ws), "source": "env"}


def test_env_overrides_the_file_and_arguments_override_both(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    config_file.write(tmp_path, {"reward_window_s": 2.0, "retrain_min_ess": 30.0})
    clean_env.setenv(WORKSPACE_ENV, str(tmp_path))
    assert PipelineSettings().reward_window_s == 2.0
    clean_env.setenv("BANDITOPS_REWARD_WINDOW_S", "5")
    settings = PipelineSettings()
    assert (settings.reward_window_s, settings.retrain_min_ess) == (5.0, 30.0)
    assert PipelineSettings(reward_window_s=9.0).reward_window_s == 9.0
    assert PipelineSettings.origins(reward_window_s=9.0)["reward_window_s"] == "argument"
    # an explicit workspace reads its own file, whatever BANDITOPS_WORKSPACE says
    other = tmp_path / "other"
    config_file.write(other, {"retrain_min_ess": 12.0})
    assert PipelineSettings(workspace=other).retrain_min_ess == 12.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[core]\nreward_windw_s = 2\n", r"unknown setting 'reward_windw_s' in \[core\]"),
        ("[service]\nreward_window_s = 2\n", r"'reward_window_s' in \[service\] \(it belongs in"),
        ("reward_window_s = 2\n", r"'reward_window_s' is not a settings table"),
        ("[serving]\nseed = 1\n", r"'serving' is not a settings table"),
        ("[core]\nworkspace = 'x'\n", r"'workspace' cannot be set in the workspace file"),
        ("[core\n", r"is not a valid TOML file"),
    ],
)
def test_a_bad_workspace_file_is_an_error_naming_the_key_and_the_file(
    text: str, message: str, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    (tmp_path / "banditops.toml").write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        Settings(workspace=tmp_path)
    assert str(tmp_path / "banditops.toml") in str(caught.value)


@pytest.mark.parametrize(
    ("text", "reader", "home"),
    [
        ('[service]\nretrain_schedule = "@daily"\n', "pipelines", "pipelines"),
        ("[monitor]\nreward_window_s = 2.0\n", "pipelines", "core"),
        ("[pipelines]\nmonitor_alpha = 0.2\n", "monitor", "monitor"),
        ("[monitor]\njournal_dir = 'j'\n", "service", "service"),
    ],
)
def test_a_setting_in_another_component_s_table_is_refused_by_the_one_that_owns_it(
    text: str, reader: str, home: str, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """``retrain_schedule`` under ``[service]`` was read by nothing: the service does not
    know it there, and the DAG files (reading ``[core]`` and ``[pipelines]`` only) parsed
    with the default schedule, saying nothing (audit, stop 54). The component that owns
    the setting refuses the file, naming the key, the table and where it belongs."""
    from monitoring.settings import MonitorSettings

    (tmp_path / "banditops.toml").write_text(text)
    classes = {"pipelines": PipelineSettings, "monitor": MonitorSettings, "service": Settings}
    key = text.splitlines()[1].split(" =")[0]
    with pytest.raises(ValueError, match=rf"'{key}' is set in \[\w+\] but belongs in \[{home}\]"):
        classes[reader](workspace=tmp_path)


def test_a_setting_name_belongs_to_one_table() -> None:
    """A name in two tables would make a table's reader misjudge another's key."""
    seen: dict[str, str] = {}
    for cls, _ in SETTINGS_CLASSES:
        for section, names in section_fields(cls).items():
            for name in names:
                assert seen.setdefault(name, section) == section, (name, section, seen[name])


def test_relative_paths_in_the_file_are_relative_to_the_workspace(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    config_file.write(tmp_path, {"runs_dir": "runs-here", "journal_dir": "j"})
    settings = Settings(workspace=tmp_path)
    assert settings.runs_path == (tmp_path / "runs-here").resolve()
    assert settings.journal_path == tmp_path / "j"


def test_config_init_writes_a_file_every_settings_class_reads(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ops.cli import app

    runner = CliRunner()
    done = runner.invoke(
        app,
        [
            "config",
            "init",
            "--workspace",
            str(tmp_path),
            "--set",
            "reward_window_s=2",
            "--set",
            "retrain_algorithm=lints",
        ],
    )
    assert done.exit_code == 0, done.output
    text = (tmp_path / "banditops.toml").read_text()
    assert "# retrain_min_ess = 50.0" in text  # the others, commented out with their default
    for cls, _ in SETTINGS_CLASSES:
        settings = cls(workspace=tmp_path)
        assert settings.reward_window_s == 2.0
        assert cls.origins(workspace=tmp_path)["reward_window_s"] == "file"
    assert PipelineSettings(workspace=tmp_path).retrain_algorithm == "lints"
    again = runner.invoke(app, ["config", "init", "--workspace", str(tmp_path)])
    assert again.exit_code != 0 and "--force" in again.output
    bad = runner.invoke(
        app, ["config", "init", "--workspace", str(tmp_path / "x"), "--set", "nope=1"]
    )
    assert bad.exit_code != 0 and "unknown setting 'nope'" in bad.output
    # every section lists every field its class adds
    for cls, _ in SETTINGS_CLASSES:
        for section, names in section_fields(cls).items():
            for name in names:
                if name != "workspace":
                    assert f"{name} = " in text, (section, name)


def test_core_settings_docstring_states_the_rule() -> None:
    doc = CoreSettings.__doc__ or ""
    for phrase in ("BANDITOPS_WORKSPACE", "banditops.toml", "config show"):
        assert phrase in doc


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"candidate_alias": "production"}, "must differ"),
        ({"registered_alias": "staging"}, "must differ"),
        ({"production_alias": "prod live"}, "production_alias must be a registry alias"),
        ({"candidate_alias": "Latest"}, "candidate_alias must be a registry alias"),
        ({"production_alias": "v2"}, "like a version"),
        ({"registered_alias": ""}, "registered_alias is set but empty"),
    ],
)
def test_aliases_are_distinct_registry_aliases(
    tmp_path: Path, values: dict[str, str], message: str
) -> None:
    """Each alias is a stage of the loop: two stages with one alias, or a name the
    registry refuses, are refused when the settings are read — not at the first promotion."""
    from pydantic import ValidationError

    from eventstore.settings import CoreSettings

    with pytest.raises(ValidationError, match=message):
        CoreSettings(workspace=tmp_path, **values)
    assert CoreSettings(workspace=tmp_path, production_alias="live").production_alias == "live"


@pytest.mark.parametrize("where", ["env", "file"])
def test_config_show_names_the_alert_webhook_s_host_only(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, where: str
) -> None:
    """A Slack or Teams webhook's secret is its path: whoever reads it may post as the
    monitor, whose task log therefore names the host only. ``banditops config show``
    printed the URL whole, in the table and in ``--json``, while it masked the API token
    and URL passwords (security audit)."""
    secret = "T000/B000/SECRETXYZ"
    url = f"https://hooks.slack.com/services/{secret}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), WORKSPACE_ENV: str(tmp_path)}
    if where == "env":
        env["BANDITOPS_ALERT_WEBHOOK_URL"] = url
    else:
        (tmp_path / "banditops.toml").write_text(f'[monitor]\nalert_webhook_url = "{url}"\n')
    for extra in ([], ["--json"]):
        shown = subprocess.run(
            [str(BANDITOPS), "config", "show", *extra],
            env={**env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        assert "SECRETXYZ" not in shown.stdout + shown.stderr, extra
        assert "services" not in shown.stdout, extra
        if extra:
            row = json.loads(shown.stdout)["BANDITOPS_ALERT_WEBHOOK_URL"]
            assert row == {"value": "https://hooks.slack.com/…", "source": where}
        else:
            (line,) = [x for x in shown.stdout.splitlines() if "ALERT_WEBHOOK_URL" in x]
            assert "https://hooks.slack.com/…" in line


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("alert_webhook_url", "ftp://hooks.slack.com/services/T0/B0/SECRETXYZ", "hooks.slack.com"),
        ("alert_webhook_url", "hooks.slack.com/services/T0/B0/SECRETXYZ", "http(s) URL"),
        ("service_url", "ftp://monitor:SECRETXYZ@svc:8000/", "ftp://monitor:***@svc"),
        ("api_token", "two words SECRETXYZ", "bearer token"),
        ("database_url", "postgresql+nodriver://u:SECRETXYZ@db/events", "not installed"),
        ("mlflow_tracking_uri", "ftp://u:SECRETXYZ@mlflow:5000", "ftp://u:***@mlflow"),
    ],
)
def test_a_refused_secret_bearing_setting_is_not_echoed(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, name: str, value: str, shown: str
) -> None:
    """A refused webhook URL was echoed whole (its path is the secret), and so, in the
    ``ValidationError``'s own text (pydantic's ``input_value``), were a refused token and
    a database URL's password, wherever a component printed it (a task's traceback). The
    error names the setting and what it expects, and shows the host at most."""
    from pydantic import ValidationError

    from monitoring.settings import MonitorSettings

    owner = MonitorSettings if name in MonitorSettings.model_fields else Settings
    with pytest.raises(ValidationError) as refused:
        owner(workspace=tmp_path, **{name: value})
    assert "SECRETXYZ" not in str(refused.value) and shown in str(refused.value)
    assert "services/T0" not in str(refused.value)
    env = {**os.environ, "PYTHONPATH": str(ROOT), WORKSPACE_ENV: str(tmp_path)}
    env[f"BANDITOPS_{name.upper()}"] = value
    done = subprocess.run(
        [str(BANDITOPS), "config", "show"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert f"{name} (BANDITOPS_{name.upper()})" in done.stderr, done.stderr
    assert shown in done.stderr and "SECRETXYZ" not in done.stdout + done.stderr, done.stderr
