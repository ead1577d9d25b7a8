"""Service settings come from ``BANDITOPS_*`` variables and are validated at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bandit_core import MAX_ABS_INPUT
from serving.durations import parse_duration
from serving.settings import Settings


def test_environment_is_read_with_the_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANDITOPS_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("BANDITOPS_CONTEXT_FEATURES", "age, tenure,visits")
    monkeypatch.setenv("BANDITOPS_CANDIDATE_SHARE", "0.05")
    monkeypatch.setenv("BANDITOPS_API_TOKEN", "secret")
    monkeypatch.delenv("BANDITOPS_DATABASE_URL", raising=False)
    settings = Settings()
    assert settings.context_features == ["age", "tenure", "visits"]
    assert settings.candidate_share == 0.05
    assert settings.api_token is not None and settings.api_token.get_secret_value() == "secret"
    assert "secret" not in repr(settings)
    assert settings.store_url == f"sqlite:///{tmp_path.resolve() / 'banditops.db'}"
    monkeypatch.setenv("BANDITOPS_DATABASE_URL", "postgresql+psycopg2://u@h/db")
    assert Settings().store_url == "postgresql+psycopg2://u@h/db"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("candidate_share", 1.5),
        ("poll_interval_s", 0),
        ("duplicate_rule", "last_wins"),
        ("sqlite_synchronous", "OFF"),
        ("reward_max", -1.0),
        ("context_features", ["a", "a"]),
        # past the library's bound a head would refuse what the service accepted
        ("max_abs_feature", 1e308),
        ("reward_max", 2e6),
        ("reward_min", -2e6),
        ("default_reward", 1e300),
    ],
)
def test_bad_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field.split("_")[0]):
        Settings(**{field: value})  # type: ignore[arg-type]


def test_the_numeric_bounds_reach_the_library_bound_and_stop_there() -> None:
    at = Settings(
        max_abs_feature=MAX_ABS_INPUT, reward_min=-MAX_ABS_INPUT, reward_max=MAX_ABS_INPUT
    )
    assert (at.max_abs_feature, at.reward_min, at.reward_max) == (
        MAX_ABS_INPUT,
        -MAX_ABS_INPUT,
        MAX_ABS_INPUT,
    )
    assert Settings().max_abs_feature == MAX_ABS_INPUT  # the default is the bound itself
    with pytest.raises(ValidationError, match=r"max_abs_feature\n.*less than or equal to 1000000"):
        Settings(max_abs_feature=MAX_ABS_INPUT * (1 + 1e-12))


def test_generated_salt_is_kept_in_the_workspace(tmp_path: Path) -> None:
    first = Settings(workspace=tmp_path).resolve_salt()
    assert Settings(workspace=tmp_path).resolve_salt() == first
    assert len(first) == 64
    assert (tmp_path / "user_salt").stat().st_mode & 0o777 == 0o600
    assert Settings(workspace=tmp_path, user_salt="given").resolve_salt() == b"given"


def test_durations() -> None:
    assert parse_duration("90d").days == 90
    assert parse_duration("12h").total_seconds() == 12 * 3600
    assert parse_duration("1.5w").days == 10
    for bad in ("90", "d90", "0d", "-1d", "90 days"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
