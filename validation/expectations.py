"""The Great Expectations suite for replay data, and the error a failing batch raises.

One row of the replay DataFrame is one logged decision and its reward (column names in
:class:`ReplayColumns`): ``event_id``; ``timestamp`` (timezone-aware); ``context`` (the
user vector, ``dim_context`` floats); ``candidate_ids`` (the candidate set's arm ids) and
``candidate_features`` (one ``dim_arm`` row per candidate); ``arm_id`` (the chosen arm);
``propensity``; ``reward``.

The suite (:func:`suite_expectations`) checks, each as its own expectation:

* every required column exists, and its values are of the right kind;
* no nulls in any required column (event id, arm, propensity and reward among them);
* propensity in (0, 1]; reward in ``[reward_min, reward_max]``;
* every context a finite ``(dim_context,)`` vector, every candidate-feature block a finite
  ``(n_candidates, dim_arm)`` matrix with one row per candidate id;
* the chosen arm among the candidate ids of its own decision;
* event ids unique; timestamps inside the partition window ``[window_start, window_end)``;
* at least ``min_rows`` rows;
* with a reference window (a DataFrame, or the histograms of one as the retrain logs them
  with each version): the drift (PSI, or KL) of every numeric feature — each context
  component ``context_j`` and each component ``arm_feature_j`` of the chosen arm's
  features — below a threshold passed at run time (``$PARAMETER`` ``drift_threshold``);
  with a warning level as well (``drift_warning``), a second expectation per feature at
  that level with GX's ``severity="warning"``: its failure is recorded
  (:attr:`ReplayValidation.warnings`), not raised.

:func:`validate_replay` runs it (GX imported lazily: importing this module stays cheap
for DAG parsing), writes the data-docs HTML to a given folder and raises
:class:`DataValidationError` listing each failing expectation with its unexpected count
and examples.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from bandit_core._validation import Interval, OneOf, validate_params
from eventstore.replay import REWARD, REWARD_COUNT
from eventstore.schema import decisions
from eventstore.settings import CORE_DEFAULTS, DriftMetric

#: Value kinds checked by ``ExpectColumnValuesToBeOfKind``.
Kind = Literal["string", "number", "utc_datetime", "string_sequence"]

#: Name of the run-time parameter holding the drift threshold (the failing level).
DRIFT_PARAMETER = "drift_threshold"
#: Name of the run-time parameter holding the drift warning level.
DRIFT_WARNING_PARAMETER = "drift_warning"
#: GX name of the drift expectation (``gx_expectations.ExpectColumnDriftToBeBelow``).
DRIFT_EXPECTATION = "expect_column_drift_to_be_below"
#: Examples of unexpected values kept per failing expectation.
N_EXAMPLES = 5


@dataclass(frozen=True)
class ReplayColumns:
    """Column names of the replay DataFrame."""

    event_id: str = "event_id"
    timestamp: str = "timestamp"
    context: str = "context"
    candidate_ids: str = "candidate_ids"
    candidate_features: str = "candidate_features"
    arm_id: str = "arm_id"
    propensity: str = "propensity"
    reward: str = "reward"
    #: How many received rewards ``reward`` sums (read under the sum rule only).
    reward_count: str = REWARD_COUNT

    def required(self) -> tuple[str, ...]:
        return (
            self.event_id,
            self.timestamp,
            self.context,
            self.candidate_ids,
            self.candidate_features,
            self.arm_id,
            self.propensity,
            self.reward,
        )


_stored = decisions.c
#: The names of the event store's replay frame (:data:`eventstore.replay.COLUMNS`): the
#: ``decisions`` columns of the ORM (the decision time is ``created_at``) and the replay's
#: computed reward column.
STORE_COLUMNS = ReplayColumns(
    event_id=_stored.event_id.name,
    timestamp=_stored.created_at.name,
    context=_stored.context.name,
    candidate_ids=_stored.candidate_ids.name,
    candidate_features=_stored.candidate_features.name,
    arm_id=_stored.arm_id.name,
    propensity=_stored.propensity.name,
    reward=REWARD,
    reward_count=REWARD_COUNT,
)


@dataclass(frozen=True)
class ReplaySuiteConfig:
    """What the replay data of one partition must satisfy.

    Parameters
    ----------
    dim_context, dim_arm : int
        Declared lengths of the user context and of each candidate's feature row.
    window_start, window_end : datetime.datetime
        The partition window ``[start, end)``; timezone-aware.
    reward_min, reward_max : float
        Allowed reward range (inclusive).
    summed_rewards : bool
        Whether a row's reward is the sum of its ``columns.reward_count`` received rewards
        (the sum duplicate rule): it must then lie in ``[n·reward_min, n·reward_max]``
        (``n`` at least 1) instead.
    min_rows : int
        Minimum number of rows.
    drift_metric : {"psi", "kl"}
        Drift score of the numeric features against the reference window.
    drift_bins : int
        Number of reference-quantile bins of the drift histograms (≥ 2).
    columns : ReplayColumns
    """

    dim_context: int
    dim_arm: int
    window_start: dt.datetime
    window_end: dt.datetime
    reward_min: float = CORE_DEFAULTS["reward_min"]
    reward_max: float = CORE_DEFAULTS["reward_max"]
    summed_rewards: bool = False
    min_rows: int = 1
    drift_metric: DriftMetric = "psi"
    drift_bins: int = 10
    columns: ReplayColumns = field(default_factory=ReplayColumns)

    def __post_init__(self) -> None:
        validate_params(
            "ReplaySuiteConfig",
            {
                "dim_context": self.dim_context,
                "dim_arm": self.dim_arm,
                "reward_min": self.reward_min,
                "reward_max": self.reward_max,
                "min_rows": self.min_rows,
                "drift_metric": self.drift_metric,
                "drift_bins": self.drift_bins,
            },
            {
                "dim_context": Interval(int, 0, None),
                "dim_arm": Interval(int, 0, None),
                "reward_min": Interval(float, None, None),
                "reward_max": Interval(float, None, None),
                "min_rows": Interval(int, 0, None),
                "drift_metric": OneOf(get_args(DriftMetric)),
                "drift_bins": Interval(int, 2, None),
            },
        )
        if self.reward_min > self.reward_max:
            raise ValueError(
                f"reward_min must not exceed reward_max; got {self.reward_min} > {self.reward_max}."
            )
        for name in ("window_start", "window_end"):
            value = getattr(self, name)
            if not isinstance(value, dt.datetime) or value.tzinfo is None:
                raise ValueError(f"{name} must be a timezone-aware datetime; got {value!r}.")
        if self.window_start >= self.window_end:
            raise ValueError(
                "window_start must be before window_end; "
                f"got {self.window_start} ≥ {self.window_end}."
            )

    def feature_columns(self) -> tuple[str, ...]:
        """Names of the derived numeric feature columns checked for drift."""
        return tuple(f"context_{j}" for j in range(self.dim_context)) + tuple(
            f"arm_feature_{j}" for j in range(self.dim_arm)
        )


@dataclass(frozen=True)
class ExpectationFailure:
    """One failing expectation.

    ``unexpected_count`` and ``examples`` are set for row-wise expectations,
    ``observed_value`` for aggregate ones, ``error`` when the check itself raised.
    """

    expectation: str
    target: str
    unexpected_count: int | None = None
    element_count: int | None = None
    examples: tuple[Any, ...] = ()
    observed_value: Any = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def describe(self) -> str:
        head = f"{self.expectation}({self.target})"
        if self.error is not None:
            return f"{head}: could not be evaluated: {self.error}"
        if self.unexpected_count is not None:
            shown = ", ".join(repr(e) for e in self.examples)
            return (
                f"{head}: {self.unexpected_count} unexpected of {self.element_count} rows; "
                f"examples: [{shown}]"
            )
        extra = ", ".join(f"{k} {v!r}" for k, v in self.details.items())
        return f"{head}: observed {self.observed_value!r}" + (f" ({extra})" if extra else "")


@dataclass(frozen=True)
class ReplayValidation:
    """Outcome of :func:`validate_replay` (also carried by :class:`DataValidationError`)."""

    success: bool
    evaluated: int
    failures: tuple[ExpectationFailure, ...]
    docs_index: Path | None
    row_count: int
    #: Failed expectations of severity "warning" (the drift warning level): recorded only.
    warnings: tuple[ExpectationFailure, ...] = ()

    def to_metrics(self, prefix: str = "gx") -> dict[str, float]:
        """Flat metrics for MLflow: success, evaluated and failed expectation counts, and
        the warnings."""
        return {
            f"{prefix}.success": float(self.success),
            f"{prefix}.evaluated_expectations": float(self.evaluated),
            f"{prefix}.failed_expectations": float(len(self.failures)),
            f"{prefix}.warnings": float(len(self.warnings)),
            f"{prefix}.row_count": float(self.row_count),
        }


class DataValidationError(ValueError):
    """The replay data failed its expectations; ``validation.failures`` lists them."""

    def __init__(
        self, validation: ReplayValidation, config: ReplaySuiteConfig | None = None
    ) -> None:
        self.validation = validation
        window = (
            ""
            if config is None
            else f" in the window [{config.window_start.isoformat()}, "
            f"{config.window_end.isoformat()})"
        )
        lines = [
            f"replay data failed {len(validation.failures)} of {validation.evaluated} expectations "
            f"({validation.row_count} rows{window}):"
        ]
        lines += [f"  - {f.describe()}" for f in validation.failures]
        if config is not None and validation.row_count < config.min_rows:
            # an empty window read as "observed 0", with nothing to say where or why
            # (README helper, stop 46: the demo's data all came after the nightly window)
            lines.append(
                f"the window holds {validation.row_count} decisions whose reward window had "
                f"closed by its end, fewer than min_rows = {config.min_rows}: check the "
                "window (window_days, or window_start and window_end) and that the service "
                "logs to this event store."
            )
        drifted = [
            f"{f.target.removeprefix('column=')} {f.observed_value:.3g} > "
            f"{f.details.get('threshold', float('nan')):g}"
            for f in validation.failures
            if f.expectation == DRIFT_EXPECTATION and isinstance(f.observed_value, float)
        ]
        if drifted:
            lines.append(
                f"features drifted beyond the failing level from the reference window "
                f"({', '.join(drifted)}): the data no longer looks like what the production "
                "model was trained on; check the feature pipeline before retraining on it."
            )
        if validation.docs_index is not None:
            lines.append(f"data docs: {validation.docs_index}")
        super().__init__("\n".join(lines))

    @property
    def failures(self) -> tuple[ExpectationFailure, ...]:
        return self.validation.failures


#: Smallest bin proportion in the drift metrics (empty bins would make them infinite).
DRIFT_FLOOR = 1e-4


# ---------------------------------------------------------------------- pure checks
def is_kind(value: Any, kind: str) -> bool:
    """Whether ``value`` is of ``kind`` (see the module docstring)."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, (bool, np.bool_)
        )
    if kind == "utc_datetime":
        return isinstance(value, dt.datetime) and value.tzinfo is not None
    if kind == "string_sequence":
        return (
            isinstance(value, (list, tuple, np.ndarray))
            and len(value) > 0
            and all(isinstance(v, str) for v in value)
        )
    raise ValueError(
        f"kind must be one of string, number, utc_datetime, string_sequence; got {kind!r}."
    )


def is_sum_in_range(value: Any, count: Any, low: float, high: float) -> bool:
    """Whether ``value`` can be the sum of ``count`` rewards each in ``[low, high]``:
    ``n·low ≤ value ≤ n·high`` with ``n = max(count, 1)`` (a row without a reward carries
    one default reward), allowing the rounding of a sum of ``n`` floats; ``count`` must
    be a whole number ≥ 0."""
    if not is_kind(value, "number") or not is_kind(count, "number"):
        return False
    if not (math.isfinite(count) and count >= 0 and float(count).is_integer()):
        return False
    n = max(float(count), 1.0)
    slack = n * n * np.finfo(np.float64).eps * max(abs(low), abs(high))
    return bool(n * low - slack <= value <= n * high + slack)


def as_finite_array(value: Any, dim: int, ndim: int) -> np.ndarray | None:
    """``value`` as a float array of the declared shape and finite, else None.

    Nested sequences read back from Parquet arrive as object arrays of arrays; they are
    stacked row by row (rows of unequal length are not a matrix: None).
    """
    try:
        if ndim == 2 and isinstance(value, np.ndarray) and value.dtype == object:
            value = np.stack([np.asarray(row, dtype=np.float64) for row in value])
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if ndim == 2 and arr.ndim == 2 and arr.shape[0] >= 1 and arr.shape[1] == dim:
        return arr if np.isfinite(arr).all() else None
    if ndim == 1 and arr.ndim == 1 and arr.shape[0] == dim:
        return arr if np.isfinite(arr).all() else None
    return None


def bin_index(values: np.ndarray, inner_edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """Bin of each value for bins ``(-inf, e_0], (e_0, e_1], …, (e_last, inf)``."""
    return np.searchsorted(np.asarray(inner_edges, dtype=np.float64), values, side="left")


def drift_score(
    values: np.ndarray,
    inner_edges: Sequence[float],
    reference_proportions: Sequence[float],
    metric: str,
) -> float:
    """PSI ``Σ (p − q) ln(p / q)`` or KL ``Σ p ln(p / q)`` of the histogram ``p`` of
    ``values`` against the reference proportions ``q`` (both floored at
    :data:`DRIFT_FLOOR`); NaNs are ignored, an empty column scores 0."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    q = np.asarray(reference_proportions, dtype=np.float64)
    counts = np.bincount(bin_index(x, inner_edges), minlength=q.shape[0])
    return float(histogram_divergence(counts, q, metric))


def histogram_divergence(counts: np.ndarray, reference_proportions: Any, metric: str) -> Any:
    """:func:`drift_score` of histograms given as bin counts: ``counts`` (..., bins), one
    score per histogram (0 for an empty one); ``reference_proportions`` (bins,) or
    broadcastable to ``counts``."""
    if metric not in get_args(DriftMetric):
        raise ValueError(f"metric must be one of {get_args(DriftMetric)}; got {metric!r}.")
    c = np.asarray(counts, dtype=np.float64)
    q = np.maximum(np.asarray(reference_proportions, dtype=np.float64), DRIFT_FLOOR)
    total = c.sum(axis=-1, keepdims=True)
    p = np.maximum(c / np.where(total > 0, total, 1.0), DRIFT_FLOOR)
    terms = (p - q) * np.log(p / q) if metric == "psi" else p * np.log(p / q)
    return np.where(total[..., 0] > 0, terms.sum(axis=-1), 0.0)


# ---------------------------------------------------------------------- features
def _vectors(values: pd.Series, dim: int) -> np.ndarray:
    """(n, dim) float matrix of the vector cells; NaN rows where a cell is not a finite vector."""
    out = np.full((len(values), dim), np.nan)
    for i, v in enumerate(values.tolist()):
        arr = None if v is None else as_finite_array(v, dim, 1)
        if arr is not None:
            out[i] = arr
    return out


def _chosen_arm_features(frame: pd.DataFrame, cols: ReplayColumns, dim: int) -> np.ndarray:
    """(n, dim) features of each row's chosen arm (NaN where they cannot be found)."""
    out = np.full((len(frame), dim), np.nan)
    rows = zip(
        frame[cols.arm_id].tolist(),
        frame[cols.candidate_ids].tolist(),
        frame[cols.candidate_features].tolist(),
        strict=True,
    )
    for i, (arm, ids, feats) in enumerate(rows):
        if not isinstance(ids, (list, tuple, np.ndarray)):
            continue
        matrix = None if feats is None else as_finite_array(feats, dim, 2)
        hits = [j for j, c in enumerate(ids) if c == arm]
        if matrix is not None and hits and hits[0] < matrix.shape[0]:
            out[i] = matrix[hits[0]]
    return out


def feature_frame(df: pd.DataFrame, config: ReplaySuiteConfig) -> pd.DataFrame:
    """``df`` plus the numeric feature columns ``context_j`` and ``arm_feature_j``."""
    cols = config.columns
    clash = [c for c in config.feature_columns() if c in df.columns]
    if clash:
        raise ValueError(
            f"the replay DataFrame already has derived column names {clash}; rename them."
        )
    out = df.copy()
    if cols.context in df.columns:
        ctx = _vectors(df[cols.context], config.dim_context)
        for j in range(config.dim_context):
            out[f"context_{j}"] = ctx[:, j]
    if {cols.arm_id, cols.candidate_ids, cols.candidate_features} <= set(df.columns):
        arm = _chosen_arm_features(df, cols, config.dim_arm)
        for j in range(config.dim_arm):
            out[f"arm_feature_{j}"] = arm[:, j]
    return out


def reference_histograms(
    reference: pd.DataFrame, config: ReplaySuiteConfig
) -> dict[str, tuple[list[float], list[float]]]:
    """Per feature column: inner bin edges (reference quantiles, deduplicated) and the
    reference proportion of every bin."""
    frame = feature_frame(reference, config)
    out: dict[str, tuple[list[float], list[float]]] = {}
    for name in config.feature_columns():
        if name not in frame.columns:
            continue
        x = frame[name].to_numpy(dtype=np.float64)
        x = x[np.isfinite(x)]
        if x.size == 0:
            raise ValueError(f"the reference window has no finite value of feature {name!r}.")
        qs = np.quantile(x, np.linspace(0.0, 1.0, config.drift_bins + 1)[1:-1])
        edges = np.unique(qs)
        props = np.bincount(bin_index(x, edges), minlength=edges.size + 1) / x.size
        out[name] = (edges.tolist(), props.tolist())
    return out


# ---------------------------------------------------------------------- the suite
#: Per feature column: inner bin edges and the reference proportion of every bin.
Histograms = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def suite_expectations(
    config: ReplaySuiteConfig,
    reference: pd.DataFrame | None = None,
    *,
    histograms: Histograms | None = None,
    warning_level: bool = False,
) -> list[Any]:
    """The GX expectation objects of the suite, in evaluation order.

    The drift expectations come from ``reference`` (a DataFrame) or ``histograms`` (its
    :func:`reference_histograms`, as logged with a version), not both; with
    ``warning_level`` each feature gets a second one of severity "warning" at the
    ``drift_warning`` parameter.
    """
    import great_expectations as gx
    from great_expectations.expectations.metadata_types import FailureSeverity

    from validation import gx_expectations as bx

    c = config.columns
    ex = gx.expectations
    items: list[Any] = [ex.ExpectTableRowCountToBeBetween(min_value=config.min_rows)]
    needed = c.required() + ((c.reward_count,) if config.summed_rewards else ())
    items += [ex.ExpectColumnToExist(column=name) for name in needed]
    items += [ex.ExpectColumnValuesToNotBeNull(column=name) for name in needed]
    kinds: dict[str, Kind] = {
        c.event_id: "string",
        c.timestamp: "utc_datetime",
        c.candidate_ids: "string_sequence",
        c.arm_id: "string",
        c.propensity: "number",
        c.reward: "number",
    }
    items += [
        bx.ExpectColumnValuesToBeOfKind(column=name, kind=kind) for name, kind in kinds.items()
    ]
    low, high = config.reward_min, config.reward_max
    reward_range = (
        bx.ExpectColumnValuesToBeASumOfRewardsInRange(
            column_A=c.reward, column_B=c.reward_count, low=low, high=high
        )
        if config.summed_rewards
        else ex.ExpectColumnValuesToBeBetween(column=c.reward, min_value=low, max_value=high)
    )
    items += [
        ex.ExpectColumnValuesToBeBetween(
            column=c.propensity, min_value=0.0, max_value=1.0, strict_min=True
        ),
        reward_range,
        bx.ExpectColumnValuesToBeFiniteArrays(column=c.context, dim=config.dim_context, ndim=1),
        bx.ExpectColumnValuesToBeFiniteArrays(
            column=c.candidate_features, dim=config.dim_arm, ndim=2
        ),
        bx.ExpectColumnPairValuesToHaveEqualLengths(
            column_A=c.candidate_ids, column_B=c.candidate_features
        ),
        bx.ExpectColumnValuesToBeAmongCandidates(column_A=c.arm_id, column_B=c.candidate_ids),
        ex.ExpectColumnValuesToBeUnique(column=c.event_id),
        ex.ExpectColumnValuesToBeBetween(
            column=c.timestamp,
            min_value=pd.Timestamp(config.window_start),
            max_value=pd.Timestamp(config.window_end),
            strict_max=True,
        ),
    ]
    if reference is not None and histograms is not None:
        raise ValueError("give the drift reference as a DataFrame or as histograms, not both.")
    if reference is not None:
        histograms = reference_histograms(reference, config)
    levels = [(DRIFT_PARAMETER, FailureSeverity.CRITICAL)]
    if warning_level:
        levels.append((DRIFT_WARNING_PARAMETER, FailureSeverity.WARNING))
    bins = {} if histograms is None else histograms
    for name in config.feature_columns():
        if name not in bins:
            continue
        edges, props = bins[name]
        for parameter, severity in levels:
            items.append(
                bx.ExpectColumnDriftToBeBelow(
                    column=name,
                    bin_edges=[float(e) for e in edges],
                    reference_proportions=[float(p) for p in props],
                    metric=config.drift_metric,
                    threshold={"$PARAMETER": parameter},
                    severity=severity,
                )
            )
    return items


def _target(kwargs: dict[str, Any]) -> str:
    if "column" in kwargs:
        return f"column={kwargs['column']}"
    if "column_A" in kwargs:
        return f"column_A={kwargs['column_A']}, column_B={kwargs['column_B']}"
    return "table"


def _is_warning(result: Any) -> bool:
    severity = getattr(result.expectation_config, "severity", "critical")
    return str(getattr(severity, "value", severity)) == "warning"


def _failures(results: Sequence[Any]) -> tuple[ExpectationFailure, ...]:
    out = []
    for r in results:
        if r.success:
            continue
        cfg = r.expectation_config
        info = r.exception_info or {}
        error = info.get("exception_message") if info.get("raised_exception") else None
        if error is None and not r.result and isinstance(info, dict):
            nested = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
            error = nested[0].get("exception_message") if nested else None
        result = r.result or {}
        examples = tuple(result.get("partial_unexpected_list") or ())[:N_EXAMPLES]
        out.append(
            ExpectationFailure(
                expectation=cfg.type,
                target=_target(cfg.kwargs),
                unexpected_count=result.get("unexpected_count"),
                element_count=result.get("element_count"),
                examples=examples,
                observed_value=result.get("observed_value"),
                details=dict(result.get("details") or {}),
                error=error,
            )
        )
    return tuple(out)


#: Folder of a data-docs site that GX fills with a copy of its own static assets.
STATIC_FOLDER = "static"


def drop_unlinked_assets(site: Path) -> list[Path]:
    """Delete the files of ``site``'s :data:`STATIC_FOLDER` that none of its HTML pages
    names; the files deleted.

    GX copies its whole static folder into every site it builds (4.1 MB: fonts, and GIFs
    of its tutorials — ``glossary_scroller.gif`` alone 2.6 MB), while the pages it renders
    take their styles and scripts from CDNs and name only the favicon there. The retrain
    builds a site a night and logs it with the version, so each night stored and logged
    the same 4.1 MB again beside its 0.1 MB of pages. A file a page does name (the
    favicon; whatever a later GX links) is kept, so the site reads as GX built it.
    """
    static = site / STATIC_FOLDER
    if not static.is_dir():
        return []
    pages = "\n".join(p.read_text(errors="replace") for p in site.rglob("*.html"))
    dropped = []
    for path in sorted(static.rglob("*")):
        if path.is_file() and path.relative_to(site).as_posix() not in pages:
            path.unlink()
            dropped.append(path)
    for folder in sorted((d for d in static.rglob("*") if d.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    return dropped


def validate_replay(
    df: pd.DataFrame,
    config: ReplaySuiteConfig,
    *,
    reference: pd.DataFrame | None = None,
    histograms: Histograms | None = None,
    drift_threshold: float | None = None,
    drift_warning: float | None = None,
    docs_dir: str | Path | None = None,
    raise_on_failure: bool = True,
) -> ReplayValidation:
    """Validate a replay DataFrame with the suite.

    Parameters
    ----------
    df : pandas.DataFrame
        The partition's replay rows (not modified).
    config : ReplaySuiteConfig
    reference : pandas.DataFrame, optional
        A reference window (same layout) for the drift expectations; none without it.
    histograms : mapping, optional
        The reference window as histograms (``{feature: (inner edges, proportions)}``, e.g. the
        feature reference logged with a registered version); not with ``reference``.
    drift_threshold : float, optional
        Run-time threshold of every drift expectation, the failing level (PSI 0.1 / 0.2 /
        0.25 are the usual "small / moderate / major shift" marks); required with a
        reference (the retrain passes ``validation_drift_failing``; no second default).
    drift_warning : float, optional
        The warning level (below ``drift_threshold``): a feature drifting beyond it is a
        failed expectation of severity "warning", listed in ``warnings``; the
        validation still succeeds.
    docs_dir : str or Path, optional
        Folder that receives the data-docs HTML site (``index.html``), without the static
        assets its pages do not link to (:func:`drop_unlinked_assets`).
    raise_on_failure : bool
        Raise :class:`DataValidationError` when any expectation fails (default).

    Returns
    -------
    ReplayValidation

    Raises
    ------
    DataValidationError
        Listing each failing expectation with its unexpected count and examples.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame; got {type(df).__name__}.")
    if not isinstance(config, ReplaySuiteConfig):
        raise TypeError(f"config must be a ReplaySuiteConfig; got {type(config).__name__}.")
    if drift_threshold is None:
        if reference is not None or histograms is not None:
            raise ValueError(
                "drift_threshold is required with a reference (the failing level of the "
                "drift expectations); got None."
            )
        drift_threshold = 0.0  # no reference: no drift expectation reads it
    validate_params(
        "validate_replay",
        {"drift_threshold": drift_threshold},
        {"drift_threshold": Interval(float, 0.0, None)},
    )
    if drift_warning is not None and not 0.0 < drift_warning <= drift_threshold:
        raise ValueError(
            f"drift_warning must be in (0, drift_threshold = {drift_threshold}]; "
            f"got {drift_warning!r}."
        )
    frame = feature_frame(df, config)
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            progress_bars=ProgressBarsConfig(globally=False),
            analytics_enabled=False,
        ),
    )
    actions: list[Any] = []
    if docs_dir is not None:
        folder = Path(docs_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        context.add_data_docs_site(
            site_name="replay",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(folder),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["replay"]))
    batch = (
        context.data_sources.add_pandas("replay")
        .add_dataframe_asset("events")
        .add_batch_definition_whole_dataframe("partition")
    )
    suite = context.suites.add(
        gx.ExpectationSuite(
            name="replay",
            expectations=suite_expectations(
                config,
                reference,
                histograms=histograms,
                warning_level=drift_warning is not None,
            ),
        )
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="replay", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="replay",
            validation_definitions=[definition],
            actions=actions,
            result_format="SUMMARY",
        )
    )
    parameters = {DRIFT_PARAMETER: float(drift_threshold)}
    if drift_warning is not None:
        parameters[DRIFT_WARNING_PARAMETER] = float(drift_warning)
    try:
        run = checkpoint.run(
            batch_parameters={"dataframe": frame}, expectation_parameters=parameters
        )
    finally:  # a build cut short (a full disk) left MBs of GX's assets in every run folder
        if docs_dir is not None:
            drop_unlinked_assets(Path(docs_dir).resolve())
    result = next(iter(run.run_results.values()))
    failures = _failures([r for r in result.results if not _is_warning(r)])
    outcome = ReplayValidation(
        success=not failures,
        evaluated=len(result.results),
        failures=failures,
        docs_index=(Path(docs_dir).resolve() / "index.html") if docs_dir is not None else None,
        row_count=len(df),
        warnings=_failures([r for r in result.results if _is_warning(r)]),
    )
    if failures and raise_on_failure:
        raise DataValidationError(outcome, config)
    return outcome
