"""The monitor on weeks of few decisions: a figure beyond its limit is an alert only when
chance alone would rarely put it there (``monitor_alpha``); with fewer decisions the check
is skipped as too few to tell, and with enough of the same figures it alerts. Before, one
model decision that did not explore raised "the policy stopped learning", a week of 30
rows drawn from the reference histogram itself raised feature drift (and queued a
retrain), and three rewards a week raised reward drift."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from monitoring import evidence, monitor
from monitoring.settings import MonitorSettings
from validation.expectations import reference_histograms

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _settings(tmp_path: Path, **extra: Any) -> MonitorSettings:
    return MonitorSettings(workspace=tmp_path / "ws", runs_dir=tmp_path / "runs", **extra)


def _decisions(n: int, *, explored: bool, fallback: bool, arms: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "candidate_ids": [["a", "b", "c"]] * n,
            "fallback": [fallback] * n,
            "explored": [explored] * n,
            "propensity": [0.9] * n,
            "arm_id": [arms[i % len(arms)] for i in range(n)],
        }
    )


def test_a_share_beyond_its_limit_alerts_only_with_enough_decisions(tmp_path: Path) -> None:
    settings = _settings(tmp_path)  # explored ≥ 1 %, fallback ≤ 5 %, alpha 0.01
    one = monitor._explored_section(
        _decisions(1, explored=False, fallback=False, arms=["a"]), settings
    )
    assert one["share"] == 0.0 and one["check"]["status"] == "skipped", one["check"]
    assert "Too few decisions to tell" in one["check"]["message"]
    # 0.99 ** 500 = 0.0066: a policy exploring 1 % rarely shows none in 500 decisions
    many = monitor._explored_section(
        _decisions(500, explored=False, fallback=False, arms=["a"]), settings
    )
    assert many["check"]["status"] == "alert" and "stopped learning" in many["check"]["message"]
    # 0.99 ** 400 = 0.018: not yet
    fewer = _decisions(400, explored=False, fallback=False, arms=["a"])
    assert monitor._explored_section(fewer, settings)["check"]["status"] == "skipped"

    # the fallback share: 1 of 1 happens with probability 0.05 at the limit; 4 of 4 with 6e-6
    assert (
        monitor._fallback_section(
            _decisions(1, explored=False, fallback=True, arms=["a"]), settings
        )["check"]["status"]
        == "skipped"
    )
    four = monitor._fallback_section(
        _decisions(4, explored=False, fallback=True, arms=["a"]), settings
    )
    assert four["check"]["status"] == "alert" and four["rate"] == 1.0


def test_share_p_values_are_binomial_tails() -> None:
    # P(X ≥ 1 | 1, 0.05) = 0.05; P(X ≤ 0 | 500, 0.01) = 0.99^500
    assert evidence.share_p_value(1, 1, 0.05, above=True) == pytest.approx(0.05)
    assert evidence.share_p_value(0, 500, 0.01, above=False) == pytest.approx(0.99**500)
    # a limit of 0 tolerates nothing: any count above it is certain evidence
    assert evidence.share_p_value(1, 10, 0.0, above=True) == 0.0


def test_expected_entropy_of_uniform_choices_matches_simulation() -> None:
    rng = np.random.default_rng(11)
    shares = np.array([5.0, 3.0, 1.0, 1.0])
    for n in (2, 7, 40):
        draws = rng.multinomial(n, shares / shares.sum(), size=20_000) / n
        with np.errstate(divide="ignore", invalid="ignore"):
            plug_in = -np.nansum(np.where(draws > 0, draws * np.log(draws), 0.0), axis=1)
        se = plug_in.std() / np.sqrt(plug_in.size)
        assert evidence.expected_entropy(shares, n) == pytest.approx(plug_in.mean(), abs=4 * se)
    assert evidence.expected_entropy(shares, 1) == 0.0


def test_selection_entropy_compares_a_small_week_with_a_small_uniform_week(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)  # ratio ≥ 0.5
    ids = [f"arm{j}" for j in range(34)]
    # five decisions, five different arms out of 34: as spread as five choices can be;
    # against ln 34 (the bound before) the ratio was ln 5 / ln 34 = 0.46: an alert
    five = monitor._entropy_section(ids[:5], [ids] * 5, settings)
    assert five["ratio"] > 0.9 and five["check"]["status"] == "ok", five["check"]
    assert five["max"] == pytest.approx(np.log(34))
    assert monitor._entropy_section(["arm0"], [ids], settings)["check"]["status"] == "skipped"
    # a week that always picks one arm is in alert however many decisions it has
    stuck = monitor._entropy_section(["arm0"] * 200, [ids] * 200, settings)
    assert stuck["check"]["status"] == "alert"


def reference_of(rows: pd.DataFrame, dim_user: int, dim_arm: int) -> dict[str, Any]:
    """The feature reference a production version logs, of these replay rows."""
    config = monitor.ReplaySuiteConfig(
        dim_context=dim_user,
        dim_arm=dim_arm,
        window_start=datetime(2000, 1, 1, tzinfo=UTC),
        window_end=datetime(2100, 1, 1, tzinfo=UTC),
        columns=monitor.STORE_COLUMNS,
    )
    histograms = reference_histograms(rows, config)
    return {
        "rows": len(rows),
        "dim_user": dim_user,
        "dim_arm": dim_arm,
        "features": {
            name: {"edges": edges, "proportions": props}
            for name, (edges, props) in histograms.items()
        },
    }


def _reference(rng: np.random.Generator, rows: int) -> tuple[dict[str, Any], Any]:
    def frame(n: int, shift: float) -> pd.DataFrame:
        ids = [[f"a{j}", f"b{j}"] for j in range(n)]
        return pd.DataFrame(
            {
                "event_id": [f"e{shift}-{j}-{rng.integers(1 << 40)}" for j in range(n)],
                "context": list(rng.normal(shift, 1.0, size=(n, 2))),
                "candidate_ids": ids,
                "candidate_features": [list(rng.normal(size=(2, 1))) for _ in range(n)],
                "arm_id": [pair[0] for pair in ids],
            }
        )

    return reference_of(frame(rows, 0.0), 2, 1), frame


def test_feature_drift_at_few_rows_is_chance_and_queues_no_retrain(tmp_path: Path) -> None:
    """Weeks of 30 rows drawn from the very distribution of the reference window score a
    PSI above the 0.25 limit most of the time (about bins / rows): before, those weeks
    alerted and queued a retrain; now at most a few in a hundred do (3 features at ``alpha`` = 0.01). A real shift of the
    same 30 rows still alerts."""
    rng = np.random.default_rng(5)
    settings = _settings(tmp_path)
    reference, frame = _reference(rng, 2000)
    over_limit = alerts = 0
    for _ in range(100):
        section = monitor._drift_section(frame(30, 0.0), NOW, settings, reference, "m/1")
        over_limit += max(section["scores"].values()) > settings.feature_drift_max
        alerts += section["check"]["status"] == "alert"
    assert over_limit >= 50  # the old rule's false alerts
    # 3 features at alpha 0.01 each: about 3 weeks in 100 (4 s.e. above that at most)
    assert alerts <= 3 + 4 * np.sqrt(3 * 0.99), alerts

    report = {"window": {"end": NOW.isoformat()}, "production_version": "1"}
    report["feature_drift"] = monitor._drift_section(
        frame(30, 0.0), NOW, settings, reference, "m/1"
    )
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    if report["feature_drift"]["check"]["status"] != "alert":
        assert monitor.drift_trigger(path, settings, NOW)["emit"] is False

    shifted = monitor._drift_section(frame(30, 3.0), NOW, settings, reference, "m/1")
    assert shifted["check"]["status"] == "alert", shifted["check"]
    report["feature_drift"] = shifted
    path.write_text(json.dumps(report))
    assert monitor.drift_trigger(path, settings, NOW)["emit"] is True


def test_reward_drift_needs_a_difference_the_weeks_can_show(tmp_path: Path) -> None:
    settings = _settings(tmp_path)  # 20 %
    rng = np.random.default_rng(3)

    def week(values: Any) -> pd.DataFrame:
        return pd.DataFrame({"outcome": np.asarray(values, dtype=float)})

    few = monitor._reward_section(week([0, 0, 1]), week([1, 0, 1]), settings)
    assert few["change"]["mean"] == pytest.approx(0.5)
    assert few["check"]["status"] == "skipped", few["check"]
    assert "Too few rewarded decisions to tell" in few["check"]["message"]
    many = monitor._reward_section(
        week(rng.random(3000) < 0.3), week(rng.random(3000) < 0.6), settings
    )
    assert many["check"]["status"] == "alert" and many["significant"]["mean"]
    same = monitor._reward_section(
        week(rng.random(3000) < 0.5), week(rng.random(3000) < 0.5), settings
    )
    assert same["check"]["status"] == "ok"


def test_quantile_intervals_cover_at_their_level() -> None:
    """The order-statistic interval of the 5th percentile covers the true one in at least
    95 % of samples (exact, distribution-free); counted over 2,000 normal samples of 60."""
    rng = np.random.default_rng(9)
    true = -1.6448536269514722
    covered = sum(
        lo <= true <= hi
        for lo, hi in (
            evidence.quantile_interval(rng.standard_normal(60), 0.05, 0.05) for _ in range(2000)
        )
    )
    assert covered / 2000 >= 0.95 - 4 * np.sqrt(0.95 * 0.05 / 2000)
    lo, _ = evidence.quantile_interval(np.arange(5.0), 0.05, 0.05)
    assert lo == -np.inf  # five values cannot bound the 5th percentile from below


def test_uniform_choice_in_tiny_weeks_is_chance_not_an_alert(tmp_path: Path) -> None:
    """Two uniform choices between two arms agree half the time (entropy 0): the check
    alerted on 48 % of such weeks, 24 % at three (audit, stop 54). The entropy must also
    lie below what uniform choice reaches with probability ``monitor_alpha``; a policy
    stuck on one arm over enough decisions still alerts."""
    settings = _settings(tmp_path)
    rng = np.random.default_rng(0)
    for k, n in [(2, 2), (2, 3), (2, 4), (3, 3), (5, 4)]:
        ids = [f"a{j}" for j in range(k)]
        alerts = sum(
            monitor._entropy_section(
                [ids[j] for j in rng.integers(k, size=n)], [ids] * n, settings
            )["check"]["status"]
            == "alert"
            for _ in range(300)
        )
        assert alerts / 300 <= settings.monitor_alpha + 4 * np.sqrt(0.01 * 0.99 / 300), (k, n)
    ids = [f"a{j}" for j in range(5)]
    stuck = monitor._entropy_section(["a0"] * 30, [ids] * 30, settings)
    assert stuck["check"]["status"] == "alert" and "0.000 nats is 0%" in stuck["check"]["message"]


def test_two_constant_weeks_that_differ_are_not_a_certain_change() -> None:
    """Two weeks of two clicks each, [0, 0] and [1, 1]: the z test's p was 0 (both
    variances 0) and 12 % of equal weeks of two alerted (audit, stop 54). Both weeks'
    values taken as one sample give the variance; Welch's t gives small weeks their
    tails; many rows still show a real change."""
    assert evidence.mean_p_value(np.array([0.0, 0.0]), np.array([1.0, 1.0])) > 0.2
    assert evidence.mean_p_value(np.array([0.0, 1.0, 0.0]), np.array([1.0, 1.0, 1.0])) > 0.01
    rng = np.random.default_rng(1)
    a, b = (rng.random(3000) < 0.3).astype(float), (rng.random(3000) < 0.4).astype(float)
    assert evidence.mean_p_value(a, b) < 1e-6
    assert evidence.mean_p_value(np.zeros(200), np.ones(200)) < 1e-30


def test_segments_without_users_or_with_a_week_too_small_are_not_an_alert(
    tmp_path: Path,
) -> None:
    """Every week of anonymous traffic alerted "8 of 8 segments got fewer than 20", and
    a week of one decision left every other group short (audit, stop 54): without a user
    id there is no group to judge, and a group's shortfall must be one chance (Binomial
    of the week's decisions at 1 / groups) rarely gives; a starved group of a big week
    still alerts."""
    settings = _settings(tmp_path)  # 8 groups, 20 decisions each

    def week(hashes: list[str | None]) -> pd.DataFrame:
        n = len(hashes)
        return pd.DataFrame(
            {
                "user_hash": hashes,
                "explored": [False] * n,
                "fallback": [False] * n,
                "arm_id": ["a"] * n,
                "context": [np.zeros(2)] * n,
            }
        )

    anonymous = monitor._segment_section(week([None] * 1000), week([]), settings)
    assert anonymous["check"]["status"] == "skipped"
    assert "no decision carries a user id" in anonymous["check"]["message"]
    one = monitor._segment_section(week(["ab" * 32]), week([]), settings)
    assert one["check"]["status"] == "skipped", one["check"]
    rng = np.random.default_rng(2)
    users = [rng.bytes(32).hex() for _ in range(4000)]
    grouped = [monitor.user_group_key(u, 8) for u in users]
    starved = [u for u, g in zip(users, grouped, strict=True) if g != grouped[0]]
    big = monitor._segment_section(week(starved), week([]), settings)
    assert big["check"]["status"] == "alert", big["check"]
