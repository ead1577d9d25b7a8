"""The MLflow pyfunc wrapper of a banditops policy, logged as *models from code*.

MLflow stores this file itself (not a pickle of an object) next to the policy state
``artifacts/policy_state.npz``; loading it imports this module and reads the state with
``allow_pickle=False``, so a model loads with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``.

``predict`` scores a *candidate table*: one row per (request, candidate) with columns
``request_id``, ``arm_id``, ``ctx_0 … ctx_{du−1}`` (the user context, repeated on every row
of a request) and ``feat_0 … feat_{da−1}`` (the candidate's features), and optionally
``user_hash``: the request's user as the service logs it (the decisions' ``user_hash``),
so that a policy with floors per hashed user group decides for that user's group as the
service does (empty or missing: no user, the global floor). It returns, per row, the
probability that the policy picks that candidate for its request (exact or Monte Carlo,
seeded by the ``seed`` parameter) and the policy's score.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema

from bandit_core import Candidates, load_policy
from bandit_core.policies.arm_features import candidates_for
from bandit_core.policies.overlap import for_users
from bandit_core.user_groups import check_user_hash

#: The optional column naming each request's user (an optional string in the signature).
USER_COLUMN = "user_hash"


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
        users = model_input[USER_COLUMN] if USER_COLUMN in model_input.columns else None
        out = np.empty(len(model_input))
        scores = np.empty(len(model_input))
        for request, rows in model_input.groupby("request_id", sort=False).indices.items():
            cands = Candidates.from_any(
                model_input["arm_id"].iloc[rows].astype(str).tolist(), arms[rows]
            )
            policy = self.policy
            if users is not None:
                user = check_user_hash(f"{USER_COLUMN} of request {request!r}", users.iloc[rows[0]])
                policy = for_users(self.policy, [user])
            decision = policy.select(ctx[rows[0]], candidates_for(policy, cands), rng)
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


def example_table(
    contexts: Any,
    candidate_ids: Any,
    candidate_features: Any,
    user_hashes: Any = None,
) -> pd.DataFrame:
    """A candidate table (the ``predict`` input) for the given requests: an input example.

    ``contexts`` (n, dim_user); ``candidate_ids`` n lists of ids; ``candidate_features``
    n arrays of shape (K_i, dim_arm); ``user_hashes`` n user hashes (None: no user), or
    None for a table without the user column.
    """
    users = [None] * len(contexts) if user_hashes is None else list(user_hashes)
    rows: list[dict[str, Any]] = []
    for r, (ctx, ids, feats, user) in enumerate(
        zip(contexts, candidate_ids, candidate_features, users, strict=True)
    ):
        for arm, feat in zip(ids, feats, strict=True):
            row: dict[str, Any] = {"request_id": f"r{r}", "arm_id": str(arm)}
            row.update({f"ctx_{j}": float(v) for j, v in enumerate(ctx)})
            row.update({f"feat_{j}": float(v) for j, v in enumerate(feat)})
            if user_hashes is not None:
                row[USER_COLUMN] = user
            rows.append(row)
    return pd.DataFrame(rows)


def table_signature(example: pd.DataFrame) -> ModelSignature:
    """The signature of a candidate table like ``example``: its columns as inferred, with
    ``user_hash`` an optional string (a request may have no user, a caller may leave the
    column out; MLflow drops a column the signature does not name)."""
    inferred = infer_signature(example.drop(columns=[USER_COLUMN], errors="ignore"))
    if inferred.inputs is None:
        raise ValueError("the input example has no columns to infer a signature from.")
    specs = [*inferred.inputs.inputs, ColSpec(DataType.string, USER_COLUMN, required=False)]
    return ModelSignature(inputs=Schema(specs))
