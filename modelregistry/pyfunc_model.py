"""The MLflow pyfunc wrapper of a banditops policy, logged as *models from code*.

MLflow stores this file itself (not a pickle of an object) next to the policy state
``artifacts/policy_state.npz``; loading it imports this module and reads the state with
``allow_pickle=False``, so a model loads with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``.

``predict`` scores a *candidate table*: one row per (request, candidate) with columns
``request_id``, ``arm_id``, ``ctx_0 … ctx_{du−1}`` (the user context, repeated on every row
of a request) and ``feat_0 … feat_{da−1}`` (the candidate's features). It returns, per row,
the probability that the policy picks that candidate for its request (exact or Monte
Carlo, seeded by the ``seed`` parameter) and the policy's score.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from bandit_core import Candidates, load_policy
from bandit_core.policies.arm_features import candidates_for


def split_table(table: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Column names of the context and arm blocks, in order, and the two blocks."""
    ctx_cols = sorted((c for c in table.columns if c.startswith("ctx_")), key=lambda c: int(c[4:]))
    arm_cols = sorted((c for c in table.columns if c.startswith("feat_")), key=lambda c: int(c[5:]))
    missing = {"request_id", "arm_id"} - set(table.columns)
    if missing:
        raise ValueError(
            f"candidate table needs the columns {sorted(missing)}; got {list(table.columns)}."
        )
    return (
        ctx_cols + arm_cols,
        table[ctx_cols].to_numpy(np.float64),
        table[arm_cols].to_numpy(np.float64),
    )


class PolicyModel(PythonModel):
    """Scores candidate tables with the policy stored in the ``policy_state`` artifact."""

    def load_context(self, context: Any) -> None:
        self.policy = load_policy(context.artifacts["policy_state"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        seed = int((params or {}).get("seed", 0))
        rng = np.random.default_rng(seed)
        _, ctx, arms = split_table(model_input)
        out = np.empty(len(model_input))
        scores = np.empty(len(model_input))
        for _, rows in model_input.groupby("request_id", sort=False).indices.items():
            cands = Candidates.from_any(
                model_input["arm_id"].iloc[rows].astype(str).tolist(), arms[rows]
            )
            decision = self.policy.select(ctx[rows[0]], candidates_for(self.policy, cands), rng)
            out[rows] = decision.probabilities
            scores[rows] = decision.scores
        return pd.DataFrame(
            {
                "request_id": model_input["request_id"].to_numpy(),
                "arm_id": model_input["arm_id"].astype(str).to_numpy(),
                "probability": out,
                "score": scores,
            }
        )


mlflow.models.set_model(PolicyModel())


def example_table(contexts: Any, candidate_ids: Any, candidate_features: Any) -> pd.DataFrame:
    """A candidate table (the ``predict`` input) for the given requests: an input example.

    ``contexts`` (n, dim_user); ``candidate_ids`` n lists of ids; ``candidate_features``
    n arrays of shape (K_i, dim_arm).
    """
    rows: list[dict[str, Any]] = []
    for r, (ctx, ids, feats) in enumerate(
        zip(contexts, candidate_ids, candidate_features, strict=True)
    ):
        for arm, feat in zip(ids, feats, strict=True):
            row: dict[str, Any] = {"request_id": f"r{r}", "arm_id": str(arm)}
            row.update({f"ctx_{j}": float(v) for j, v in enumerate(ctx)})
            row.update({f"feat_{j}": float(v) for j, v in enumerate(feat)})
            rows.append(row)
    return pd.DataFrame(rows)
