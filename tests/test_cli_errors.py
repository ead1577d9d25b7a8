"""The ``banditops`` CLI ends a careless call with a message naming what is wrong and an
exit code, never a traceback: a store without tables, text no store can hold (a lone
surrogate, as Python makes from undecodable bytes in an argument, or a NUL character);
and its command listings keep each summary on one line."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bandit_core import make_policy, save_policy
from eventstore.migrate import StoreSchemaError
from eventstore.text import check_text, text_problem

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
)

SURROGATE = "a\udcffb"


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace: its SQLite event store has no tables yet."""
    for name in ("BANDITOPS_DATABASE_URL", "BANDITOPS_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BANDITOPS_WORKSPACE", str(tmp_path))
    return tmp_path


def _run(*args: str) -> tuple[int, str]:
    from ops.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: {result.exception!r}"
    )
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(
    "args",
    [
        ("train", "--run-key", "k"),
        ("rollout", "status"),
        ("rollout", "step"),
        ("catalog", "load"),
        ("store", "prune", "--older-than", "90d"),  # was a raw "no such column" (stop 45)
    ],
)
def test_a_store_without_tables_is_named_with_the_fix(
    workspace: Path, args: tuple[str, ...]
) -> None:
    # an empty SQLite file: a store without tables (a store file that does not exist is
    # refused by the commands that only read: test_a_read_only_command_creates_nothing)
    (workspace / "banditops.db").touch()
    if args[0] == "catalog":
        table = workspace / "items.csv"
        table.write_text("id,f_a\nx,1.0\n")
        args = (*args, str(table))
    code, output = _run(*args)
    assert code == 2 and output.startswith("error: "), output
    assert "has no banditops tables" in output and "banditops db upgrade" in output, output


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("rollout", "status"), {"BANDITOPS_ROLLOUT_MARGIN": "-1"}, "rollout_margin"),
        (
            ("rollout", "step"),
            {"BANDITOPS_REWARD_WINDOW_S": "86400", "BANDITOPS_ROLLOUT_MAX_DURATION_S": "1e5"},
            "rollout_max_duration_s must exceed 345600 s",
        ),
        (("train", "--run-key", "k"), {"BANDITOPS_DEFAULT_REWARD": "1e400"}, "default_reward"),
        (("rollout", "status"), {"BANDITOPS_ROLLOUT_STAGES": "[0.5, 0.2]"}, "rollout_stages"),
        (  # everyone on the candidate, no production outcome: it could only expire
            ("rollout", "step"),
            {"BANDITOPS_ROLLOUT_STAGES": "[1.0]"},
            "(BANDITOPS_ROLLOUT_STAGES): must be increasing shares in (0, 1), at least one, then 1.0",
        ),
        (  # its version labels would not fit the store (PostgreSQL refused every decision)
            ("rollout", "status"),
            {"BANDITOPS_MODEL_NAME": "m" * 236},
            "model_name (BANDITOPS_MODEL_NAME): String should have at most 235 characters",
        ),
    ],
)
def test_a_bad_setting_is_named_by_any_command_without_a_traceback(
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    env: dict[str, str],
    named: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, output = _run(*args)
    assert code == 2 and output.startswith("error:") and named in output, output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"BANDITOPS_MONITOR_ALPHA": "2"},
            "error: monitor_alpha (BANDITOPS_MONITOR_ALPHA): Input should be less than 0.5",
        ),
        (  # a check of the whole settings (no field of pydantic's) names it too
            {"BANDITOPS_REWARD_WINDOW_S": "inf"},
            "error: reward_window_s (BANDITOPS_REWARD_WINDOW_S): must be a finite number; got inf.",
        ),
        (  # lower case is the same variable; the secret's value is not repeated
            {"banditops_api_token": " "},
            "error: api_token (BANDITOPS_API_TOKEN): is set but empty; unset "
            "BANDITOPS_API_TOKEN (or remove it from the workspace file) for its default.",
        ),
    ],
)
def test_a_bad_setting_names_the_variable_that_set_it(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], line: str
) -> None:
    """The operator set an environment variable; the error line says which, once, in
    front (it said ``settings: Value error, reward_window_s must be …``)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, output = _run("config", "show")
    assert code == 2 and output == line, output


def test_a_bad_setting_from_the_workspace_file_is_named_by_its_key(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BANDITOPS_MONITOR_ALPHA", raising=False)
    (workspace / "banditops.toml").write_text("[monitor]\nmonitor_alpha = 2\n")
    code, output = _run("config", "show")
    where = workspace / "banditops.toml"
    assert code == 2, output
    assert output == f"error: monitor_alpha ({where} [monitor]): Input should be less than 0.5"


def test_the_replay_read_checks_the_schema(workspace: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from eventstore.engine import make_engine
    from eventstore.replay import read_replay

    engine = make_engine(f"sqlite:///{workspace / 'empty.db'}")
    end = datetime.now(UTC)
    try:
        with pytest.raises(StoreSchemaError, match="has no banditops tables"):
            read_replay(engine, end - timedelta(days=1), end, reward_window=timedelta(hours=1))
    finally:
        engine.dispose()


def test_unstorable_text_is_refused_naming_the_field(workspace: Path) -> None:
    from modelregistry.registry import ModelRegistry

    registry = ModelRegistry(f"sqlite:///{(workspace / 'mlflow.db').resolve()}")
    policy = make_policy("linucb", dim_user=2)
    policy.update(np.ones(2), "a", 1.0)
    for key in ("r1", "r2"):
        registry.register_candidate(
            state_path=save_policy(policy, workspace / "s.npz"), run_key=key
        )
    assert _run("promote", "1")[0] == 0
    cases = [
        (("promote", "2", "--reason", SURROGATE), "reason must be valid Unicode"),
        (("promote", "2", "--by", "x\x00y"), "by must not contain a NUL character"),
        (("rollback", "--reason", SURROGATE), "reason must be valid Unicode"),
        (("train", "--run-key", SURROGATE), "run_key must be valid Unicode"),
    ]
    for args, message in cases:
        code, output = _run(*args)
        assert code == 2 and message in output, (args, output)
    assert registry.by_alias("production").version == "1"  # nothing was moved
    assert "promoted_by" not in registry.get("2").tags  # nor tagged


def test_text_checks() -> None:
    assert text_problem("plain é ✓") is None
    assert text_problem("a\x00") == "must not contain a NUL character"
    assert text_problem(SURROGATE) == "must be valid Unicode (a lone surrogate is not)"
    assert check_text("reason", "ok") == "ok"
    with pytest.raises(ValueError, match=r"^reason must not contain a NUL character; got"):
        check_text("reason", "\x00")


def test_every_command_lists_its_summary_on_one_line() -> None:
    """Typer's listing keeps a docstring's line breaks; every command's listing help is
    the first paragraph of its docstring on one line, without reStructuredText's ``x``."""
    from ops.cli import app

    seen = 0
    apps = [app]
    while apps:
        current = apps.pop()
        apps += [g.typer_instance for g in current.registered_groups if g.typer_instance]
        for info in current.registered_commands:
            doc = inspect.cleandoc(info.callback.__doc__ or "") if info.callback else ""
            assert info.short_help is not None and "\n" not in info.short_help, info.name
            assert "``" not in info.short_help, info.short_help
            first = doc.split("\n\n")[0]
            assert re.sub(r"\s+", " ", first).replace("``", "`") == info.short_help
            seen += 1
    assert seen >= 20


def test_evaluate_gates_by_every_retrain_gate_setting(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``banditops evaluate`` builds the retrain's gate rule from the settings, support
    check included (one builder: ``PipelineSettings.gate_rule``)."""
    from benchmarks.scale import synthetic_replay
    from training.settings import PipelineSettings
    from training.train import TrainConfig, train

    replay = synthetic_replay(workspace / "replay.parquet", 400, seed=2, rare=0.03)
    trained = train(replay, TrainConfig(algorithm="linucb"), workspace / "train")
    # five of six offered items logged at 0.03: unsupported under a threshold of 0.05,
    # and the candidate mostly plays them
    monkeypatch.setenv("BANDITOPS_RETRAIN_SUPPORT_THRESHOLD", "0.05")
    monkeypatch.setenv("BANDITOPS_RETRAIN_MAX_UNSUPPORTED", "0.5")
    monkeypatch.setenv("BANDITOPS_RETRAIN_MIN_ESS", "7")
    rule = PipelineSettings().gate_rule()
    assert (rule.support_threshold, rule.max_unsupported, rule.min_ess) == (0.05, 0.5, 7.0)
    code, out = _run("evaluate", trained.state_path, str(replay), "--resamples", "50")
    text = " ".join(out.split())
    assert code == 0 and "gate: reject" in text, out
    assert "propensity below 0.05 (> the limit 50%)" in text and "minimum 7" in text
    # a file no retrain wrote (the retrain's suite checks it): repeated decisions were
    # each weighted as a round of their own, and the estimates moved without a word
    frame = pd.read_parquet(replay)
    repeated = workspace / "repeated.parquet"
    pd.concat([frame, frame.iloc[:30]]).to_parquet(repeated)
    code, out = _run("evaluate", trained.state_path, str(repeated), "--resamples", "50")
    assert code == 2 and out.startswith("error: the replay holds 30 repeated decisions"), out


def _broken(frame: pd.DataFrame, rows: list[int], column: str, value: Any) -> pd.DataFrame:
    out = frame.copy()
    cells = list(out[column]) if column in out else [None] * len(out)
    for i in rows:
        cells[i] = value
    out[column] = cells
    return out


def test_evaluate_holds_a_replay_file_to_the_extraction_s_rules(workspace: Path) -> None:
    """A file no retrain wrote skipped the quarantine: a missing column or a ``chosen``
    past its candidates raised a traceback, ``chosen = -1`` picked the last candidate and
    moved the estimates, a propensity of 1 against probabilities of 1/6 reported IPS
    0.07 for 0.40, a reward of 1e308 printed NaN intervals (offline helper, stop 53).
    Now: broken rows up to the quarantine's share are set aside, named; more refuse the
    file, naming the first; a missing column is named."""
    from benchmarks.scale import synthetic_replay
    from training.train import TrainConfig, train

    replay = synthetic_replay(workspace / "replay.parquet", 400, seed=2)
    trained = train(replay, TrainConfig(algorithm="linucb"), workspace / "train")
    frame = pd.read_parquet(replay)
    clean_code, clean = _run("evaluate", trained.state_path, str(replay), "--resamples", "50")
    assert clean_code == 0 and "set aside" not in clean, clean
    n = len(frame)
    last = frame.index[-1]  # a held-out row: it moved the estimates
    cases: list[tuple[pd.DataFrame, int, str]] = [
        (frame.drop(columns=["chosen"]), 2, "lacks the column(s) chosen"),
        (_broken(frame, [last], "chosen", -1), 0, "chosen -1 is not the index of one of"),
        (_broken(frame, [last], "chosen", 99), 0, "chosen 99 is not the index of one of"),
        (_broken(frame, [last], "reward", 1e308), 0, "reward 1e+308 is not in [0, 1]"),
        (_broken(frame, [last], "propensity", float("nan")), 0, "propensity nan is not in"),
        (_broken(frame, [last], "propensity_se", "x"), 0, "propensity_se 'x' is not a number"),
        (_broken(frame, list(range(n)), "propensity", 1.0), 2, "propensity 1 is not its logged"),
        (_broken(frame, list(range(n)), "reward", 1e200), 2, "reward 1e+200 is not in [0, 1]"),
        (_broken(frame, list(range(n)), "context", None), 2, "every one of the replay's"),
    ]
    for i, (bad, code, message) in enumerate(cases):
        path = workspace / f"bad-{i}.parquet"
        bad.to_parquet(path)
        got, out = _run("evaluate", trained.state_path, str(path), "--resamples", "50")
        assert got == code and message in out, (i, message, out[:600])
        if code == 0:
            assert f"1 of the replay's {n} decisions set aside" in out, out[:300]
            assert f"the first, event '{frame['event_id'].iloc[-1]}'" in out, out[:300]


def test_evaluate_names_a_state_file_that_is_not_one(workspace: Path) -> None:
    """An empty candidate file ended in click's bare "Aborted." (an EOFError); a text
    file got numpy's advice to load it unsafely with pickle, naming no path; a named
    production file that does not load was replaced by the uniform policy."""
    from benchmarks.scale import synthetic_replay
    from training.train import TrainConfig, train

    replay = synthetic_replay(workspace / "replay.parquet", 200, seed=2)
    trained = train(replay, TrainConfig(algorithm="linucb"), workspace / "train")
    empty, text = workspace / "empty.npz", workspace / "text.npz"
    empty.write_bytes(b"")
    text.write_text("not a state")
    for args, why in [
        (
            (str(empty), str(replay)),
            f"{empty} is not a banditops policy state (an .npz archive): it is empty",
        ),
        (
            (str(text), str(replay)),
            f"{text} is not a banditops policy state (an .npz archive): it is neither",
        ),
        (
            (trained.state_path, str(replay), "--production", str(text)),
            f"{text} is not a banditops policy state",
        ),
    ]:
        code, out = _run("evaluate", *args, "--resamples", "50")
        assert code == 2 and why in out and "pickle" not in out, out
    code, out = _run("evaluate", trained.state_path, str(replay), "--resamples", "100000001")
    assert code == 2 and "100000" in out, out
    missing = workspace / "nope.parquet"  # was "error: <path>", saying nothing of why
    code, out = _run("evaluate", trained.state_path, str(missing), "--resamples", "50")
    out = " ".join(out.replace("│", " ").split())  # click's usage error comes in a box
    assert code == 2 and "'replay': file" in out and "does not exist" in out, out
    code, out = _run("evaluate", trained.state_path, str(workspace), "--resamples", "50")
    out = " ".join(out.replace("│", " ").split())
    assert code == 2 and "is a directory" in out, out


def test_a_file_error_that_holds_only_its_path_says_what_went_wrong() -> None:
    """pyarrow's ``FileNotFoundError('/x.parquet')`` printed as ``error: /x.parquet``."""
    from training.commands import _said

    assert _said(FileNotFoundError("/x.parquet")) == "/x.parquet: FileNotFoundError"
    assert _said(FileNotFoundError(2, "No such file or directory", "/y")) == (
        "[Errno 2] No such file or directory: '/y'"
    )
    assert _said(ValueError("bad")) == "bad"


def test_an_unreachable_store_is_named_without_its_password(workspace: Path) -> None:
    """``db upgrade`` (and ``serve``, which runs it first) printed a 500-line traceback."""
    url = "postgresql+psycopg2://user:pw-secret@127.0.0.1:1/db"  # nothing listens on port 1
    code, output = _run("db", "upgrade", "--url", url)
    assert code == 1 and "could not be migrated" in output and "OperationalError" in output
    assert "pw-secret" not in output and "user:***@" in output


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # accepted before: every reward a 500 (timedelta overflow), a dead loader thread
        (
            {"BANDITOPS_REWARD_WINDOW_S": "inf"},
            "reward_window_s (BANDITOPS_REWARD_WINDOW_S): must be a finite number",
        ),
        (
            {"BANDITOPS_REWARD_WINDOW_S": "1e18"},
            "reward_window_s (BANDITOPS_REWARD_WINDOW_S): must be at most 1e+09",
        ),
        (
            {"BANDITOPS_POLL_INTERVAL_S": "inf"},
            "poll_interval_s (BANDITOPS_POLL_INTERVAL_S): must be a finite number",
        ),
        (
            {"BANDITOPS_RETENTION_DAYS": "1e6"},
            "retention_days (BANDITOPS_RETENTION_DAYS): must be at most 11574.1",
        ),
        (
            {"BANDITOPS_RUNS_RETENTION_DAYS": "0"},
            "runs_retention_days (BANDITOPS_RUNS_RETENTION_DAYS): Input should be greater than 0",
        ),
        # a busy loop at 1e-300
        (
            {"BANDITOPS_SNAPSHOT_EVERY_S": "1e-300"},
            "snapshot_every_s (BANDITOPS_SNAPSHOT_EVERY_S): paces a loop",
        ),
        # empty values meant the local SQLite file, the current directory, no salt
        ({"BANDITOPS_DATABASE_URL": ""}, "database_url (BANDITOPS_DATABASE_URL): is set but empty"),
        ({"BANDITOPS_USER_SALT": " "}, "user_salt (BANDITOPS_USER_SALT): is set but empty"),
        ({"BANDITOPS_MODEL_NAME": ""}, "model_name (BANDITOPS_MODEL_NAME): is set but empty"),
        # a token no client can send
        (
            {"BANDITOPS_API_TOKEN": "tok "},
            "api_token (BANDITOPS_API_TOKEN): must be a bearer token",
        ),
        ({"BANDITOPS_API_TOKEN": "tök"}, "api_token (BANDITOPS_API_TOKEN): must be a bearer token"),
        # docker/.env.example's placeholders (accepted before, and served)
        (
            {"BANDITOPS_API_TOKEN": "change-me-api-token"},
            "api_token (BANDITOPS_API_TOKEN): is a placeholder of docker/.env.example",
        ),
        (
            {"BANDITOPS_USER_SALT": "Change-Me-user-salt"},
            "user_salt (BANDITOPS_USER_SALT): is a placeholder of docker/.env.example",
        ),
        # URLs that failed later, with a traceback
        (
            {"BANDITOPS_DATABASE_URL": "not a url"},
            "database_url (BANDITOPS_DATABASE_URL): must be a SQLAlchemy URL",
        ),
        ({"BANDITOPS_DATABASE_URL": "foo://x"}, "names the driver 'foo', which is not installed"),
        ({"BANDITOPS_DATABASE_URL": "postgresql://x/y"}, "postgresql+psycopg2://"),
        ({"BANDITOPS_MLFLOW_TRACKING_URI": "foo://x"}, "must be an MLflow tracking"),
        ({"BANDITOPS_RETRAIN_SCHEDULE": "99 99 99 99 99"}, "five-field cron expression"),
        # a registry the service never reads (it served the fallback without an error)
        ({"BANDITOPS_MLFLOW_REGISTRY_URI": "sqlite:////tmp/r.db"}, "without mlflow_tracking"),
        # a model file the service never reads (the registry wins)
        (
            {
                "BANDITOPS_MODEL_PATH": "/tmp/p.npz",
                "BANDITOPS_MLFLOW_TRACKING_URI": "sqlite:///m.db",
            },
            "model_path (BANDITOPS_MODEL_PATH): is set with mlflow_tracking_uri",
        ),
        # values that crashed the start (numpy's seed, the listen backlog)
        (
            {"BANDITOPS_SEED": "-1"},
            "seed (BANDITOPS_SEED): Input should be greater than or equal to 0",
        ),
        (
            {"BANDITOPS_HTTP_BACKLOG": "2147483648"},
            "http_backlog (BANDITOPS_HTTP_BACKLOG): Input should be less",
        ),
        ({"BANDITOPS_SERVICE_URL": "http://a b"}, "must be an http(s) URL with a host"),
        # a folder that is a file failed at start (FileExistsError)
        (
            {"BANDITOPS_JOURNAL_DIR": "/etc/passwd"},
            "journal_dir (BANDITOPS_JOURNAL_DIR): must be a directory",
        ),
        (
            {"BANDITOPS_RUNS_DIR": "/etc/passwd"},
            "runs_dir (BANDITOPS_RUNS_DIR): must be a directory",
        ),
        ({"BANDITOPS_SERVICE_URL": "http://"}, "must be an http(s) URL with a host"),
        # a lock wait would have been answered 503 before it turned to the journal
        (
            {"BANDITOPS_STORE_DEADLINE_S": "2", "BANDITOPS_STORE_LOCK_TIMEOUT_S": "2"},
            "store_deadline_s (BANDITOPS_STORE_DEADLINE_S): must be more than "
            "store_lock_timeout_s (2 s); got 2 s",
        ),
    ],
)
def test_a_setting_that_would_misbehave_is_refused_by_name(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    """Values the settings took and the service then misbehaved on (a 500 on every
    reward, a busy loop, unsalted user hashes, the wrong store, a token nobody can send):
    every command refuses them at once, naming the setting (``config show`` reads the
    service's, the pipelines' and the monitor's)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, output = _run("config", "show")  # reads every settings class
    assert code == 2 and output.startswith(("error:", "warning:")), output
    assert named in output and "Traceback" not in output, output


def test_operator_errors_of_any_command_are_one_line(workspace: Path) -> None:
    """A workspace file that is not TOML, a migration revision that does not exist: one
    line and exit 2 from every command (the root group's handler), not a traceback."""
    (workspace / "banditops.toml").write_text("x ===")
    code, output = _run("models")
    assert code == 2 and "is not a valid TOML file" in output, output
    (workspace / "banditops.toml").write_text("[servce]\npoll_interval_s = 1\n")
    code, output = _run("rollout", "status")
    assert code == 2 and "'servce' is not a settings table" in output, output
    assert "[core], [service]" in output  # the section names are text, not Rich markup
    (workspace / "banditops.toml").unlink()
    (workspace / "banditops.toml").mkdir()  # read as no file: every setting its default
    code, output = _run("config", "show")
    assert code == 2 and "banditops.toml is not a file" in output, output
    (workspace / "banditops.toml").rmdir()
    code, output = _run("db", "upgrade", "--revision", "nosuch")
    assert code == 2 and output.startswith("error:") and "nosuch" in output, output


def test_promote_moves_only_a_configured_alias(workspace: Path) -> None:
    """``--to ""`` moved production; ``--to nosuch`` created an alias nothing reads."""
    for alias in ("", "nosuch", "v3"):
        code, output = _run("promote", "1", "--to", alias, "--force")
        assert code == 2 and "must be one of the configured aliases" in output, output


def test_config_init_writes_nothing_it_refuses(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file was written, then checked: a refused value stayed on disk (and every
    later command failed), and a value the environment masked was never checked."""
    monkeypatch.setenv("BANDITOPS_API_TOKEN", "t")
    for value in ("poll_interval_s=-1", 'api_token=""', "reward_window_s=1e18"):
        code, output = _run("config", "init", "--set", value)
        assert code == 2 and "Invalid value for --set" in output, (value, output)
        assert not (workspace / "banditops.toml").exists()
    assert _run("config", "init", "--set", "poll_interval_s=5")[0] == 0


def test_a_variable_no_setting_reads_is_warned_about(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANDITOPS_DATABSE_URL", "postgresql+psycopg2://x/y")
    code, output = _run("policies")
    assert code == 0
    assert "BANDITOPS_DATABSE_URL is not a setting and is ignored" in output
    assert "did you mean BANDITOPS_DATABASE_URL?" in output


def test_warnings_and_errors_go_to_stderr_so_json_output_stays_json(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``config show --json | jq`` broke on the warning about a stray variable, which went
    to stdout with the JSON (README helper, stop 46); errors go to stderr too."""
    monkeypatch.setenv("BANDITOPS_POLL_INTERVAL", "3")
    shown = CliRunner().invoke(_app(), ["config", "show", "--json"])
    assert shown.exit_code == 0
    assert "BANDITOPS_POLL_INTERVAL is not a setting" in shown.stderr
    assert json.loads(shown.stdout)
    monkeypatch.setenv("BANDITOPS_MONITOR_ALPHA", "0.7")
    refused = CliRunner().invoke(_app(), ["config", "show", "--json"])
    assert refused.exit_code == 2 and refused.stdout == ""
    assert "error: monitor_alpha (BANDITOPS_MONITOR_ALPHA)" in refused.stderr


def test_config_show_says_when_the_workspace_it_reads_is_not_there(
    workspace: Path,
) -> None:
    """A mistyped ``--workspace`` printed every setting at its default as if that workspace
    set none of them (audit, stop 53): the missing folder is named on stderr, and the
    title says the file is absent."""
    missing = workspace / "no-such-folder"
    shown = CliRunner().invoke(_app(), ["config", "show", "--workspace", str(missing)])
    assert shown.exit_code == 0
    assert f"the workspace folder {missing} does not exist" in shown.stderr
    assert "(absent)" in " ".join(shown.stdout.split())
    as_json = CliRunner().invoke(_app(), ["config", "show", "--json", "--workspace", str(missing)])
    assert json.loads(as_json.stdout) and "does not exist" in as_json.stderr
    (workspace / "banditops.toml").write_text("[service]\n", encoding="utf-8")
    present = CliRunner().invoke(_app(), ["config", "show"])
    assert present.stderr == "" and "(absent)" not in present.stdout


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (("models", "--json"), "mlflow.db"),
        (("models",), "mlflow.db"),
        (("rollout", "status"), "banditops.db"),
    ],
)
def test_a_read_only_command_creates_nothing(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], missing: str
) -> None:
    """``models --json`` on a mistyped ``--workspace`` created the folder and an empty
    ``mlflow.db``, then printed ``[]`` with exit 0: a script could not tell "no versions"
    from "wrong path"; ``rollout status`` left an empty ``banditops.db`` before it failed
    (operations audit). A SQLite file a read-only command needs and that does not exist
    is an error on stderr (exit 2) naming it, and nothing is created."""
    typo = workspace / "wrokspace"
    got = CliRunner().invoke(_app(), ["--workspace", str(typo), *args])
    assert got.exit_code == 2 and got.stdout == "", got.output
    said = " ".join(got.stderr.split())
    assert said.startswith(f"error: the {'event store' if missing == 'banditops.db' else 'MLflow'}")
    assert f"{typo / missing} does not exist" in said, said
    assert f"the workspace folder {typo} does not exist" in said, said
    assert not typo.exists()
    # a file named by its URL, in a workspace that exists
    variable = (
        "BANDITOPS_DATABASE_URL" if missing == "banditops.db" else ("BANDITOPS_MLFLOW_TRACKING_URI")
    )
    monkeypatch.setenv(variable, f"sqlite:///{workspace / 'nosuch.db'}")
    got = CliRunner().invoke(_app(), ["--workspace", str(workspace), *args])
    said = " ".join(got.stderr.split())
    assert got.exit_code == 2 and f"({variable})" in said and "nosuch.db does not exist" in said
    assert sorted(p.name for p in workspace.iterdir()) == []


def _app() -> Any:
    from ops.cli import app

    return app


@pytest.mark.parametrize(
    ("variable", "value"),
    [("BANDITOPS_API_TOKEN", "x"), ("BANDITOPS_USER_SALT", "salt")],
)
def test_serve_refuses_a_guessable_secret(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A token of one character, or a salt of four (which makes every stored user hash
    reversible by guessing), started a service before."""
    monkeypatch.setenv("BANDITOPS_API_TOKEN", "a-token-of-sixteen-chars")
    monkeypatch.setenv(variable, value)
    code, output = _run("serve", "--port", "0")
    name = variable.removeprefix("BANDITOPS_").lower()
    assert code == 2, output
    assert f"error: {name} ({variable}) must have at least 16 characters; got {len(value)}" in (
        " ".join(output.split())
    )
    # following the advice for a salt moves every user: said (upgrade helper, stop 45)
    assert ("A new salt gives every user a new hash" in output) == (name == "user_salt")


def test_serve_names_an_unknown_log_level(workspace: Path) -> None:
    code, output = _run("serve", "--log-level", "bogus")
    assert code == 2 and "--log-level" in output and "must be one of" in output, output


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("table", "args"),
    [
        ("rollouts", ("rollout", "status")),
        ("decisions", ("store", "prune", "--older-than", "90d")),
    ],
)
def test_a_command_behind_a_locked_table_gives_up_in_one_line(
    workspace: Path,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    table: str,
    args: tuple[str, ...],
) -> None:
    """A PostgreSQL session holding a table (ACCESS EXCLUSIVE) kept every command that
    reads it waiting for ever, silent, and its server session kept waiting after the
    client was killed (stalled-store helper, stop 49): a statement waits for another's
    lock at most ``SQLITE_BUSY_TIMEOUT_MS``, as on SQLite."""
    import time

    import sqlalchemy as sa

    from eventstore.engine import SQLITE_BUSY_TIMEOUT_MS, make_engine
    from eventstore.migrate import upgrade
    from eventstore.scratch import scratch_postgres_database

    with scratch_postgres_database(postgres_url, prefix="banditops_cli") as url:
        engine = make_engine(url)
        upgrade(engine)
        monkeypatch.setenv("BANDITOPS_DATABASE_URL", url)
        holder = sa.create_engine(url)
        with holder.connect() as conn, conn.begin():
            conn.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            code, out = _run(*args)
            took = time.monotonic() - started
        holder.dispose()
        engine.dispose()
    assert code in (1, 2) and out.startswith("error:") and "lock timeout" in out, out
    assert SQLITE_BUSY_TIMEOUT_MS / 1000 <= took < 60


def test_a_registry_that_cannot_answer_is_named_not_taken_for_an_empty_one(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rollback`` against a registry that did not answer said "nothing to roll back:
    'banditops-policy' has no @production version" (the alias read returned None for
    any error: stalled-store helper, stop 49). Only a missing model or alias is none."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on: refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("BANDITOPS_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code, out = _run("rollback")
    assert code == 2 and "nothing to roll back" not in out, out
    assert out.startswith("error: the registry could not say which version of"), out
    assert "@production" in out


@pytest.mark.parametrize(
    ("text", "shown", "secret"),
    [
        ("http://svc:p@ssw0rd@127.0.0.1:42307/x", "http://svc:***@127.0.0.1:42307/x", "ssw0rd"),
        ("http://ghp_T0KEN1234567890@127.0.0.1:42307", "http://***@127.0.0.1:42307", "T0KEN"),
        ("http://h/x?password=s3cret&a=1", "http://h/x?password=***&a=1", "s3cret"),
        ("http://h/x?a=1&Token=s3cret#f", "http://h/x?a=1&Token=***#f", "s3cret"),
        (
            "postgresql://u:pa/ss@db:5432/x failed for user@example.com",
            "postgresql://u:***@db:5432/x failed for user@example.com",
            "pa/ss",
        ),
        # a socket path, IPv6, several hosts, a port alone, a URL in brackets or followed
        # by a comma, a password holding both @ and / (review, stop 55)
        (
            "postgresql://u:S3cret@/db?host=/cloudsql/p:eu:db",
            "postgresql://u:***@/db?host=/cloudsql/p:eu:db",
            "S3cret",
        ),
        ("postgresql://u:S3cret@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db", "S3cret"),
        ("postgresql://u:S3cret@db1,db2:5432/x", "postgresql://u:***@db1,db2:5432/x", "S3cret"),
        ("postgresql://u:S3cret@:5432/db", "postgresql://u:***@:5432/db", "S3cret"),
        ("<mysql://u:S3cret@db>, then", "<mysql://u:***@db>, then", "S3cret"),
        ("http://u:p@ss/word@db/x", "http://u:***@db/x", "ss/word"),
        (
            "postgresql://postgres@127.0.0.1:5432/db",
            "postgresql://postgres@127.0.0.1:5432/db",
            "\0",
        ),
    ],
)
def test_every_credential_of_a_url_is_redacted(text: str, shown: str, secret: str) -> None:
    """``GET /v1/model`` (no token) showed the registry URL as redacted: a password with an
    ``@`` in it showed its end, a token as the userinfo or in the query showed whole
    (security helper, stop 55); the logs were redacted the same way."""
    from eventstore.text import redact_credentials, with_password

    assert redact_credentials(text) == shown and secret not in redact_credentials(text)
    # a run spec keeps the redacted form; the configured URL brings the credential back
    assert with_password(shown, lambda: text, "tracking_uri") == text
