"""Validation of data and models before promotion.

``validation.ope``           off-policy estimators, bootstrap intervals, reward models,
                             :func:`~validation.ope.evaluate_policy` and its report
``validation.gate``          the promotion rule (candidate vs production on one window)
``validation.expectations``  the Great Expectations suite for replay data (GX is imported
                             only when a validation runs)
``validation.gx_expectations`` the custom GX expectations that suite uses
"""

from validation.expectations import (
    DataValidationError,
    ReplayColumns,
    ReplaySuiteConfig,
    ReplayValidation,
    validate_replay,
)
from validation.gate import GateDecision, GateRule, decide
from validation.ope import Estimate, LoggedBatch, OPEReport, evaluate_policy

__all__ = [
    "DataValidationError",
    "Estimate",
    "GateDecision",
    "GateRule",
    "LoggedBatch",
    "OPEReport",
    "ReplayColumns",
    "ReplaySuiteConfig",
    "ReplayValidation",
    "decide",
    "evaluate_policy",
    "validate_replay",
]
