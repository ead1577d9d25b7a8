"""The Great Expectations suite for replay data: one crafted failure per expectation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from validation.expectations import (
    DataValidationError,
    ReplaySuiteConfig,
    drift_score,
    feature_frame,
    is_kind,
    is_sum_in_range,
    reference_histograms,
    validate_replay,
)

UTC = dt.UTC
START = dt.datetime(2024, 5, 1, tzinfo=UTC)
END = dt.datetime(2024, 5, 2, tzinfo=UTC)
IDS = ["a", "b", "c"]
N = 60


def config(**changes: object) -> ReplaySuiteConfig:
    base = {
        "dim_context": 2,
        "dim_arm": 2,
        "window_start": START,
        "window_end": END,
        "min_rows": 10,
    }
    return ReplaySuiteConfig(**{**base, **changes})  # type: ignore[arg-type]


def good(n: int = N, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "event_id": [f"e{seed}-{i}" for i in range(n)],
            "timestamp": pd.Timestamp(START)
            + pd.to_timedelta(rng.integers(0, 86_399, n), unit="s"),
            "context": [list(rng.standard_normal(2) + shift) for _ in range(n)],
            "candidate_ids": [list(IDS) for _ in range(n)],
            "candidate_features": [
                (np.arange(6.0).reshape(3, 2) + shift).tolist() for _ in range(n)
            ],
            "arm_id": rng.choice(IDS, n),
            "propensity": np.full(n, 1 / 3),
            "reward": rng.integers(0, 2, n).astype(float),
        }
    )


def failures(df: pd.DataFrame, **kwargs: object) -> dict[tuple[str, str], object]:
    out = validate_replay(df, kwargs.pop("cfg", config()), raise_on_failure=False, **kwargs)  # type: ignore[arg-type]
    return {(f.expectation, f.target): f for f in out.failures}


def set_cells(df: pd.DataFrame, column: str, rows: list[int], value: object) -> pd.DataFrame:
    out = df.copy()
    if out[column].dtype != object:
        out[column] = out[column].astype(object)
    for r in rows:
        out.at[r, column] = value
    return out


def test_good_data_passes_every_expectation(tmp_path: Path) -> None:
    df = good(n=500)
    before = df.copy(deep=True)
    docs = tmp_path / "docs"
    result = validate_replay(
        df, config(), reference=good(n=500, seed=1), drift_threshold=0.2, docs_dir=docs
    )
    assert result.success and not result.failures
    assert (
        result.evaluated == 1 + 8 + 8 + 6 + 2 + 2 + 2 + 2 + 4
    )  # rows, exist, null, kind, ranges, arrays, pairs, unique+window, drift
    assert result.docs_index == (tmp_path / "docs" / "index.html").resolve()
    assert result.docs_index.is_file()
    assert any((tmp_path / "docs" / "validations").rglob("*.html"))
    pd.testing.assert_frame_equal(df, before)
    assert result.to_metrics()["gx.success"] == 1.0


def test_the_data_docs_keep_the_pages_and_only_the_assets_they_link(tmp_path: Path) -> None:
    """GX copied its whole static folder (4.1 MB of fonts and tutorial GIFs its pages
    never show) into the site of every validation: the retrain stored and logged it
    again every night. The site keeps its pages and the one asset they name."""
    docs = tmp_path / "docs"
    validate_replay(good(n=200), config(), docs_dir=docs)
    files = {
        p.relative_to(docs).as_posix(): p.stat().st_size for p in docs.rglob("*") if p.is_file()
    }
    assert sum(files.values()) < 500_000, files
    assert {f for f in files if f.startswith("static/")} == {"static/images/favicon.ico"}
    index = (docs / "index.html").read_text()
    (page,) = (f for f in files if f.startswith("validations/") and f.endswith(".html"))
    assert page in index  # the index still links the night's validation page
    assert "Evaluated Expectations" in (docs / page).read_text()


def test_too_few_rows() -> None:
    found = failures(good(n=5))
    assert set(found) == {("expect_table_row_count_to_be_between", "table")}
    assert found[("expect_table_row_count_to_be_between", "table")].observed_value == 5


def test_too_few_rows_names_the_window_and_what_to_check() -> None:
    """An empty window said "observed 0" and nothing else: not which window was read,
    nor why it could be empty (README helper, stop 46: the demo's data all came after the
    scheduled run's window)."""
    with pytest.raises(DataValidationError) as raised:
        validate_replay(good(n=0), config())
    message = str(raised.value)
    assert "(0 rows in the window [2024-05-01T00:00:00+00:00, 2024-05-02T00:00:00+00:00))" in (
        message
    )
    assert "fewer than min_rows = 10: check the window (window_days" in message


def test_missing_column() -> None:
    found = failures(good().drop(columns=["reward"]))
    assert ("expect_column_to_exist", "column=reward") in found
    # every other failure concerns the missing column too
    assert all("reward" in target for _, target in found)


@pytest.mark.parametrize(
    "column",
    [
        "event_id",
        "timestamp",
        "context",
        "candidate_ids",
        "candidate_features",
        "arm_id",
        "propensity",
        "reward",
    ],
)
def test_nulls(column: str) -> None:
    found = failures(set_cells(good(), column, [3, 17], None))
    hit = found[("expect_column_values_to_not_be_null", f"column={column}")]
    assert hit.unexpected_count == 2 and hit.element_count == N
    # row-wise checks skip nulls; only the pair checks see a missing partner
    others = {k for k in found if k[0] != "expect_column_values_to_not_be_null"}
    assert all(k[0].startswith("expect_column_pair") or "among_candidates" in k[0] for k in others)


@pytest.mark.parametrize(
    ("column", "value", "kind_count"),
    [
        ("event_id", 17, 2),
        ("arm_id", 1, 2),
        ("propensity", "0.3", 2),
        ("reward", "1", 2),
        ("candidate_ids", [1, 2, 3], 2),
    ],
)
def test_wrong_kinds(column: str, value: object, kind_count: int) -> None:
    found = failures(set_cells(good(), column, [4, 9], value))
    hit = found[("expect_column_values_to_be_of_kind", f"column={column}")]
    assert hit.unexpected_count == kind_count
    assert list(hit.examples) == [value, value]


def test_naive_timestamps_are_the_wrong_kind() -> None:
    df = good()
    df["timestamp"] = df["timestamp"].dt.tz_localize(None)
    found = failures(df)
    assert found[("expect_column_values_to_be_of_kind", "column=timestamp")].unexpected_count == N


def test_propensity_outside_zero_one() -> None:
    df = good()
    df.loc[[2, 5], "propensity"] = [0.0, 1.5]
    found = failures(df)
    assert set(found) == {("expect_column_values_to_be_between", "column=propensity")}
    hit = found[("expect_column_values_to_be_between", "column=propensity")]
    assert hit.unexpected_count == 2 and sorted(hit.examples) == [0.0, 1.5]


def test_propensity_one_is_allowed() -> None:
    df = good()
    df.loc[[2, 5], "propensity"] = 1.0
    assert failures(df) == {}


def test_reward_outside_the_configured_range() -> None:
    df = good()
    df.loc[[1, 8, 9], "reward"] = [2.0, -1.0, 5.0]
    found = failures(df)
    assert set(found) == {("expect_column_values_to_be_between", "column=reward")}
    assert found[("expect_column_values_to_be_between", "column=reward")].unexpected_count == 3
    assert failures(df, cfg=config(reward_min=-1.0, reward_max=5.0)) == {}


def test_summed_rewards_are_checked_per_received_reward() -> None:
    """Under the sum rule a reward sums ``n_rewards`` received ones: 1.75 from three
    rewards in [0, 1] passes, a row without a reward carries one default reward, and a
    sum no ``n`` rewards in range can make fails, as does a count that is not a whole
    number ≥ 0 or a missing count column."""
    df = good()
    df["n_rewards"] = 1
    df.loc[[1, 2, 3, 4], "reward"] = [1.75, 2.0, 0.0, 1.0]
    df.loc[[1, 2, 3, 4], "n_rewards"] = [3, 2, 0, 1]
    summed = config(summed_rewards=True)
    assert failures(df, cfg=summed) == {}
    assert ("expect_column_values_to_be_between", "column=reward") in failures(df)
    bad = df.copy()
    bad["n_rewards"] = bad["n_rewards"].astype(float)
    bad.loc[[5, 6, 7, 8, 9], "reward"] = [2.5, -0.5, 1.5, 0.5, 0.5]
    bad.loc[[5, 6, 7, 8, 9], "n_rewards"] = [2, 2, 0, -1, 1.5]
    found = failures(bad, cfg=summed)
    key = (
        "expect_column_values_to_be_a_sum_of_rewards_in_range",
        "column_A=reward, column_B=n_rewards",
    )
    assert set(found) == {key}, found
    assert found[key].unexpected_count == 5
    missing = failures(df.drop(columns="n_rewards"), cfg=summed)
    assert ("expect_column_to_exist", "column=n_rewards") in missing


def test_is_sum_in_range_allows_the_rounding_of_a_float_sum() -> None:
    tenths = sum([0.1] * 10)  # 0.9999999999999999; a sum of 30 can round above 30 × 0.1
    assert is_sum_in_range(tenths, 10, 0.0, 0.1)
    thirty = sum([0.1] * 30)
    assert thirty > 30 * 0.1 and is_sum_in_range(thirty, 30, 0.0, 0.1)
    assert not is_sum_in_range(3.0 + 1e-9, 30, 0.0, 0.1)
    assert not is_sum_in_range(float("nan"), 1, 0.0, 1.0)
    assert not is_sum_in_range(0.5, True, 0.0, 1.0)


@pytest.mark.parametrize(
    "bad", [[1.0], [1.0, float("nan")], [1.0, float("inf")], "x", [[1.0, 2.0]]]
)
def test_context_vectors_of_the_wrong_dimension_or_not_finite(bad: object) -> None:
    found = failures(set_cells(good(), "context", [0, 30], bad))
    assert set(found) == {("expect_column_values_to_be_finite_arrays", "column=context")}
    assert (
        found[("expect_column_values_to_be_finite_arrays", "column=context")].unexpected_count == 2
    )


def test_candidate_features_of_the_wrong_dimension_or_not_finite() -> None:
    df = set_cells(good(), "candidate_features", [6], [[0.0, 1.0, 2.0]] * 3)
    df = set_cells(df, "candidate_features", [7], [[0.0, np.nan]] * 3)
    found = failures(df)
    assert set(found) == {("expect_column_values_to_be_finite_arrays", "column=candidate_features")}
    assert (
        found[
            ("expect_column_values_to_be_finite_arrays", "column=candidate_features")
        ].unexpected_count
        == 2
    )


def test_candidate_features_need_one_row_per_candidate() -> None:
    found = failures(set_cells(good(), "candidate_features", [11, 12], [[0.0, 1.0]] * 2))
    key = (
        "expect_column_pair_values_to_have_equal_lengths",
        "column_A=candidate_ids, column_B=candidate_features",
    )
    assert set(found) == {key}
    assert found[key].unexpected_count == 2


def test_arm_must_be_among_its_own_candidates() -> None:
    df = good()
    df.loc[[3, 4], "arm_id"] = "zz"
    df = set_cells(df, "candidate_ids", [5], ["b", "c", "d"])
    df.loc[5, "arm_id"] = "a"
    found = failures(df)
    key = ("expect_column_values_to_be_among_candidates", "column_A=arm_id, column_B=candidate_ids")
    assert set(found) == {key}
    assert found[key].unexpected_count == 3


def test_duplicate_event_ids() -> None:
    df = good()
    df.loc[[10, 20], "event_id"] = "dup"
    found = failures(df)
    assert set(found) == {("expect_column_values_to_be_unique", "column=event_id")}
    assert found[("expect_column_values_to_be_unique", "column=event_id")].unexpected_count == 2


def test_timestamps_outside_the_window() -> None:
    df = good()
    df.loc[[0, 1, 2], "timestamp"] = [
        pd.Timestamp(END),
        pd.Timestamp(START) - pd.Timedelta(seconds=1),
        pd.Timestamp(END) + pd.Timedelta(days=3),
    ]
    found = failures(df)
    assert set(found) == {("expect_column_values_to_be_between", "column=timestamp")}
    assert found[("expect_column_values_to_be_between", "column=timestamp")].unexpected_count == 3


def test_drift_threshold_is_a_run_time_parameter() -> None:
    shifted = good(n=400, seed=2, shift=0.8)
    reference = good(n=400, seed=3)
    found = failures(shifted, reference=reference, drift_threshold=0.1)
    drifted = {t for (e, t) in found if e == "expect_column_drift_to_be_below"}
    # both context components and both chosen-arm feature components moved
    assert drifted == {
        "column=context_0",
        "column=context_1",
        "column=arm_feature_0",
        "column=arm_feature_1",
    }
    observed = found[("expect_column_drift_to_be_below", "column=context_0")].observed_value
    assert observed > 0.1
    assert failures(shifted, reference=reference, drift_threshold=observed + 100.0) == {}


def test_drift_warning_level_is_recorded_and_the_failing_level_stops() -> None:
    """The retrain's two levels: between them a drift is a GX warning (severity
    "warning", recorded, the validation succeeds); beyond the failing level it fails with
    a message naming each feature and its score. The reference comes as histograms, the
    form a registered version logs."""
    shifted, reference = good(n=400, seed=2, shift=0.8), good(n=400, seed=3)
    histograms = reference_histograms(reference, config())
    scores = {
        (e, t): f.observed_value
        for (e, t), f in failures(shifted, histograms=histograms, drift_threshold=1e-6).items()
    }
    worst = max(s for s in scores.values() if isinstance(s, float))
    assert worst > 0.1

    warned = validate_replay(
        shifted, config(), histograms=histograms, drift_threshold=worst + 1, drift_warning=0.1
    )
    assert warned.success and warned.failures == ()
    assert {w.target for w in warned.warnings} == {
        "column=context_0",
        "column=context_1",
        "column=arm_feature_0",
        "column=arm_feature_1",
    }
    assert all(w.expectation == "expect_column_drift_to_be_below" for w in warned.warnings)
    assert warned.to_metrics()["gx.warnings"] == 4.0

    with pytest.raises(DataValidationError) as caught:
        validate_replay(
            shifted, config(), histograms=histograms, drift_threshold=0.1, drift_warning=0.05
        )
    message = str(caught.value)
    assert "features drifted beyond the failing level from the reference window" in message
    assert "context_0" in message and "> 0.1" in message
    assert {f.target for f in caught.value.failures} >= {"column=context_0"}
    # the same distribution: neither level is reached
    same = validate_replay(
        good(n=400, seed=4), config(), histograms=histograms, drift_threshold=1.0, drift_warning=0.2
    )
    assert same.success and same.warnings == ()
    with pytest.raises(ValueError, match=r"drift_warning must be in \(0, drift_threshold"):
        validate_replay(
            shifted, config(), histograms=histograms, drift_threshold=1.0, drift_warning=5.0
        )
    with pytest.raises(ValueError, match="drift_threshold is required with a reference"):
        validate_replay(shifted, config(), histograms=histograms)
    with pytest.raises(ValueError, match="as a DataFrame or as histograms, not both"):
        validate_replay(
            shifted, config(), reference=reference, histograms=histograms, drift_threshold=1.0
        )


def test_no_drift_against_the_same_distribution() -> None:
    assert failures(good(n=400, seed=4), reference=good(n=400, seed=5), drift_threshold=0.2) == {}


def test_kl_divergence_can_replace_psi() -> None:
    shifted, reference = good(n=400, seed=2, shift=0.8), good(n=400, seed=3)
    found = failures(
        shifted, reference=reference, drift_threshold=0.1, cfg=config(drift_metric="kl")
    )
    hit = found[("expect_column_drift_to_be_below", "column=context_0")]
    assert hit.details == {"threshold": 0.1, "metric": "kl"}


def test_failure_raises_with_every_failing_expectation_listed(tmp_path: Path) -> None:
    df = good()
    df.loc[[2, 5], "propensity"] = [0.0, 1.5]
    df.loc[[10, 20], "event_id"] = "dup"
    with pytest.raises(DataValidationError) as info:
        validate_replay(df, config(), docs_dir=tmp_path)
    err = info.value
    assert len(err.failures) == 2
    text = str(err)
    assert "failed 2 of" in text
    assert (
        "expect_column_values_to_be_between(column=propensity): 2 unexpected of 60 rows; "
        "examples: [0.0, 1.5]" in text
    )
    assert "expect_column_values_to_be_unique(column=event_id): 2 unexpected of 60 rows" in text
    assert f"data docs: {(tmp_path / 'index.html').resolve()}" in text
    assert (tmp_path / "index.html").is_file()


def test_drift_score_hand_computed() -> None:
    # edges (0,): bins (-inf, 0], (0, inf); current p = [0.25, 0.75], reference q = [0.5, 0.5]
    values = np.array([-1.0, 1.0, 2.0, 3.0, np.nan])
    psi = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5)
    kl = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
    assert drift_score(values, [0.0], [0.5, 0.5], "psi") == pytest.approx(psi, rel=1e-12)
    assert drift_score(values, [0.0], [0.5, 0.5], "kl") == pytest.approx(kl, rel=1e-12)


def test_reference_bins_are_quantiles_of_the_reference() -> None:
    ref = good(n=1000, seed=6)
    hist = reference_histograms(ref, config(drift_bins=4))
    edges, props = hist["context_0"]
    assert len(edges) == 3 and props == pytest.approx([0.25] * 4, abs=0.002)
    # arm features take 3 values: deduplicated edges, one bin per value at most
    assert len(hist["arm_feature_0"][0]) <= 3


def test_feature_frame_expands_context_and_chosen_arm_features() -> None:
    df = good(n=3)
    out = feature_frame(df, config())
    row = out.iloc[1]
    j = IDS.index(row["arm_id"])
    assert row["context_1"] == df["context"][1][1]
    assert row["arm_feature_0"] == df["candidate_features"][1][j][0]


def test_is_kind() -> None:
    assert is_kind("x", "string") and not is_kind(b"x", "string")
    assert is_kind(3, "number") and is_kind(np.float32(1), "number") and not is_kind(True, "number")
    assert is_kind(pd.Timestamp(START), "utc_datetime") and not is_kind(
        dt.datetime(2024, 1, 1), "utc_datetime"
    )
    assert is_kind(("a", "b"), "string_sequence") and not is_kind([], "string_sequence")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dim_context": -1}, r"'dim_context' parameter of ReplaySuiteConfig must be an int"),
        (
            {"drift_metric": "js"},
            r"'drift_metric' parameter of ReplaySuiteConfig must be one of 'psi', 'kl'",
        ),
        (
            {"window_start": dt.datetime(2024, 5, 1)},
            "window_start must be a timezone-aware datetime",
        ),
        ({"window_end": START}, "window_start must be before window_end"),
        ({"reward_min": 2.0}, "reward_min must not exceed reward_max"),
    ],
)
def test_bad_configuration_is_rejected(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**changes)
