"""Off-policy evaluation: estimators on arrays, bootstrap intervals, reward models, reports.

Modules, one job each:

``inputs``         the input contract and its single checker (:func:`check_feedback`)
``estimators``     replay, IPS, SNIPS, DM, DR, SNDR, Switch-DR, DRos as pure functions
``spec``           the estimator spec table (options, properties) every list derives from
``bootstrap``      vectorised, seeded bootstrap; event-adjusted and percentile intervals
``tuning``         λ for Switch-DR / DRos by estimated MSE
``estimate``       one estimator end to end (:class:`Estimate`)
``reward_models``  cross-fitted, pluggable reward models
``evaluate``       :class:`LoggedBatch` and :func:`evaluate_policy` for ``bandit_core`` policies
``report``         :class:`OPEReport`: JSON, MLflow metrics, plot
"""

from validation.ope.bootstrap import bootstrap_estimates, bootstrap_interval, percentile_interval
from validation.ope.estimate import Estimate, effective_sample_size, estimate, round_terms
from validation.ope.estimators import RoundTerms
from validation.ope.evaluate import (
    DEFAULT_ESTIMATORS,
    LoggedBatch,
    default_reward_model,
    evaluate_policy,
    policy_action_dist,
    slate_policy_action_dist,
)
from validation.ope.inputs import BanditFeedback, check_feedback
from validation.ope.report import OPEReport, plot_report
from validation.ope.reward_models import (
    ConstantModel,
    CrossFitRewardModel,
    RewardRegressor,
    RidgeModel,
    fold_ids,
)
from validation.ope.spec import (
    DECOMPOSABLE,
    ESTIMATORS,
    MODEL_BASED,
    SPECS,
    UNBIASED,
    EstimatorOption,
    EstimatorSpec,
)
from validation.ope.tuning import LAMBDA_GRID, LambdaChoice, select_lambda

__all__ = [
    "DECOMPOSABLE",
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "LAMBDA_GRID",
    "MODEL_BASED",
    "SPECS",
    "UNBIASED",
    "BanditFeedback",
    "ConstantModel",
    "CrossFitRewardModel",
    "Estimate",
    "EstimatorOption",
    "EstimatorSpec",
    "LambdaChoice",
    "LoggedBatch",
    "OPEReport",
    "RewardRegressor",
    "RidgeModel",
    "RoundTerms",
    "bootstrap_estimates",
    "bootstrap_interval",
    "check_feedback",
    "default_reward_model",
    "effective_sample_size",
    "estimate",
    "evaluate_policy",
    "fold_ids",
    "percentile_interval",
    "plot_report",
    "policy_action_dist",
    "round_terms",
    "select_lambda",
    "slate_policy_action_dist",
]
