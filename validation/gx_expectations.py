"""Custom Great Expectations 1.x expectations for replay data (imported lazily).

Each expectation is a metric provider (how to compute it on pandas) plus an expectation
class (its parameters and success rule), registered with GX when this module is
imported. Row-wise ("map") expectations report unexpected counts, indices and examples
like GX's own; GX leaves null cells out of map expectations, so nulls are caught by the
not-null expectations of the suite.

* ``ExpectColumnValuesToBeOfKind`` — scalar kind of each value: ``string``, ``number``
  (int or float, not bool), ``utc_datetime`` (timezone-aware) or ``string_sequence``.
  (GX's own type expectations do not recognise pandas 3's string and datetime dtypes.)
* ``ExpectColumnValuesToBeFiniteArrays`` — each value is a finite ``(dim,)`` vector
  (``ndim = 1``) or a finite ``(rows ≥ 1, dim)`` matrix (``ndim = 2``).
* ``ExpectColumnValuesToBeAmongCandidates`` — ``column_A``'s value is in the sequence held
  by ``column_B`` on the same row.
* ``ExpectColumnPairValuesToHaveEqualLengths`` — equal lengths of two sequence cells.
* ``ExpectColumnValuesToBeASumOfRewardsInRange`` — ``column_A`` is the sum of ``column_B``
  rewards, each in ``[low, high]``: ``n·low ≤ A ≤ n·high`` with ``n = max(B, 1)`` (a row
  without a reward carries one default reward), ``B`` a whole number ≥ 0.
* ``ExpectColumnDriftToBeBelow`` — population stability index (or KL divergence) of the
  column's histogram against reference proportions, below a threshold that may be a
  run-time ``{"$PARAMETER": ...}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from great_expectations.core.suite_parameters import SuiteParameterDict
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import (
    ColumnAggregateExpectation,
    ColumnMapExpectation,
    ColumnPairMapExpectation,
)
from great_expectations.expectations.metrics.column_aggregate_metric_provider import (
    ColumnAggregateMetricProvider,
    column_aggregate_value,
)
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    ColumnPairMapMetricProvider,
    column_condition_partial,
    column_pair_condition_partial,
)

from eventstore.settings import DriftMetric
from validation.expectations import (
    Kind,
    as_finite_array,
    drift_score,
    is_kind,
    is_sum_in_range,
)

_PAIR_DOMAIN_KEYS = (
    "batch_id",
    "table",
    "column_A",
    "column_B",
    "row_condition",
    "condition_parser",
    "ignore_row_if",
)


# ---------------------------------------------------------------------- metrics
class ColumnValuesOfKind(ColumnMapMetricProvider):
    condition_metric_name = "column_values.banditops_of_kind"
    condition_value_keys = ("kind",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, kind: str, **kwargs: Any) -> pd.Series:
        return column.map(lambda v: is_kind(v, kind)).astype(bool)


class ColumnValuesFiniteArrays(ColumnMapMetricProvider):
    condition_metric_name = "column_values.banditops_finite_arrays"
    condition_value_keys = ("dim", "ndim")

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, dim: int, ndim: int, **kwargs: Any) -> pd.Series:
        return column.map(lambda v: as_finite_array(v, dim, ndim) is not None).astype(bool)


class ColumnPairValueAmongCandidates(ColumnPairMapMetricProvider):
    condition_metric_name = "column_pair_values.banditops_among_candidates"
    condition_domain_keys = _PAIR_DOMAIN_KEYS
    condition_value_keys = ()

    # GX leaves column_pair_condition_partial unannotated (column_condition_partial is typed)
    @column_pair_condition_partial(engine=PandasExecutionEngine)  # type: ignore[untyped-decorator]
    def _pandas(cls, column_A: pd.Series, column_B: pd.Series, **kwargs: Any) -> pd.Series:
        def among(arm: Any, ids: Any) -> bool:
            return isinstance(ids, (list, tuple, np.ndarray)) and any(arm == c for c in ids)

        return pd.Series(
            [among(a, b) for a, b in zip(column_A, column_B, strict=True)], index=column_A.index
        )


class ColumnPairValuesEqualLengths(ColumnPairMapMetricProvider):
    condition_metric_name = "column_pair_values.banditops_equal_lengths"
    condition_domain_keys = _PAIR_DOMAIN_KEYS
    condition_value_keys = ()

    # GX leaves column_pair_condition_partial unannotated (column_condition_partial is typed)
    @column_pair_condition_partial(engine=PandasExecutionEngine)  # type: ignore[untyped-decorator]
    def _pandas(cls, column_A: pd.Series, column_B: pd.Series, **kwargs: Any) -> pd.Series:
        def same(a: Any, b: Any) -> bool:
            try:
                return len(a) == len(b)
            except TypeError:
                return False

        return pd.Series(
            [same(a, b) for a, b in zip(column_A, column_B, strict=True)], index=column_A.index
        )


class ColumnPairValuesSumInRange(ColumnPairMapMetricProvider):
    condition_metric_name = "column_pair_values.banditops_sum_in_range"
    condition_domain_keys = _PAIR_DOMAIN_KEYS
    condition_value_keys = ("low", "high")

    # GX leaves column_pair_condition_partial unannotated (column_condition_partial is typed)
    @column_pair_condition_partial(engine=PandasExecutionEngine)  # type: ignore[untyped-decorator]
    def _pandas(
        cls, column_A: pd.Series, column_B: pd.Series, low: float, high: float, **kwargs: Any
    ) -> pd.Series:
        return pd.Series(
            [is_sum_in_range(a, b, low, high) for a, b in zip(column_A, column_B, strict=True)],
            index=column_A.index,
        )


class ColumnDriftScore(ColumnAggregateMetricProvider):
    metric_name = "column.banditops_drift_score"
    value_keys = ("bin_edges", "reference_proportions", "metric")

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(
        cls,
        column: pd.Series,
        bin_edges: Sequence[float],
        reference_proportions: Sequence[float],
        metric: str,
        **kwargs: Any,
    ) -> float:
        return drift_score(
            column.to_numpy(dtype=np.float64, na_value=np.nan),
            bin_edges,
            reference_proportions,
            metric,
        )


# ---------------------------------------------------------------------- expectations
class ExpectColumnValuesToBeOfKind(ColumnMapExpectation):
    """Each non-null value of the column is of ``kind``."""

    kind: Kind

    map_metric = "column_values.banditops_of_kind"
    success_keys = ("kind", "mostly")
    args_keys = ("column", "kind")


class ExpectColumnValuesToBeFiniteArrays(ColumnMapExpectation):
    """Each non-null value is a finite vector of length ``dim`` (``ndim = 1``) or a finite
    matrix with ``dim`` columns and at least one row (``ndim = 2``)."""

    dim: int
    ndim: Literal[1, 2] = 1

    map_metric = "column_values.banditops_finite_arrays"
    success_keys = ("dim", "ndim", "mostly")
    args_keys = ("column", "dim", "ndim")


class RowPairExpectation(ColumnPairMapExpectation):
    """A row-wise check of two columns; every row counts (none is skipped as missing)."""

    ignore_row_if: Literal["both_values_are_missing", "either_value_is_missing", "neither"] = (
        "neither"
    )

    success_keys: ClassVar[tuple[str, ...]] = ("ignore_row_if", "mostly")
    args_keys: ClassVar[tuple[str, ...]] = ("column_A", "column_B")


class ExpectColumnValuesToBeAmongCandidates(RowPairExpectation):
    """``column_A`` (the chosen arm) is one of the ids in ``column_B`` on the same row."""

    map_metric = "column_pair_values.banditops_among_candidates"


class ExpectColumnPairValuesToHaveEqualLengths(RowPairExpectation):
    """The sequences in ``column_A`` and ``column_B`` have equal lengths on every row."""

    map_metric = "column_pair_values.banditops_equal_lengths"


class ExpectColumnValuesToBeASumOfRewardsInRange(RowPairExpectation):
    """``column_A`` (a row's reward) is the sum of ``column_B`` (its count of received
    rewards, the sum rule) rewards, each within ``[low, high]``."""

    low: float
    high: float

    map_metric = "column_pair_values.banditops_sum_in_range"
    success_keys = ("low", "high", "ignore_row_if", "mostly")
    args_keys = ("column_A", "column_B", "low", "high")


class ExpectColumnDriftToBeBelow(ColumnAggregateExpectation):
    """The drift score (``metric``: "psi" or "kl") of the column against the reference
    histogram (``bin_edges`` inner edges, ``reference_proportions``) is below
    ``threshold``."""

    bin_edges: list[float]
    reference_proportions: list[float]
    metric: DriftMetric = "psi"
    threshold: float | SuiteParameterDict[str, Any]

    metric_dependencies: ClassVar[tuple[str, ...]] = ("column.banditops_drift_score",)
    success_keys = ("bin_edges", "reference_proportions", "metric", "threshold")
    args_keys = ("column",)

    def _validate(
        self,
        metrics: dict[str, Any],
        runtime_configuration: dict[str, Any] | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        score = float(metrics["column.banditops_drift_score"])
        threshold = float(self._get_success_kwargs()["threshold"])
        return {
            "success": math.isfinite(score) and score < threshold,
            "result": {
                "observed_value": score,
                "details": {"threshold": threshold, "metric": self.metric},
            },
        }
