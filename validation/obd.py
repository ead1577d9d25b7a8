"""The Open Bandit Dataset (ZOZOTOWN) as the Open Bandit Pipeline reads it, and the pieces
of its reference OPE protocol shared by the OBD benchmark (:mod:`benchmarks.obd`) and the
real-data demo (:mod:`ops.demo_obd`): the log reader, the Bernoulli-TS evaluation policy,
the bootstrap resamples, the cross-fitting folds and the logistic reward model. The
protocol itself is described in :mod:`benchmarks.obd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from numpy.typing import NDArray

from bandit_core._validation import FloatArray
from validation.ope import CrossFitRewardModel

IntArray = NDArray[np.intp]

RANDOM_STATE = 12345
LEN_LIST = 3


@dataclass(frozen=True)
class OBDLog:
    """One preprocessed log: arrays of shape (n,) and ``context`` (n, dim_context),
    ``action_context`` (n_actions, dim_action) with row ``a`` describing item ``a``."""

    action: IntArray
    position: IntArray
    reward: FloatArray
    pscore: FloatArray
    context: FloatArray
    action_context: FloatArray

    @property
    def n_rounds(self) -> int:
        return int(self.action.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.action_context.shape[0])

    def take(self, rows: IntArray) -> OBDLog:
        """The log restricted to ``rows`` (a bootstrap resample); items unchanged."""
        return OBDLog(
            self.action[rows],
            self.position[rows],
            self.reward[rows],
            self.pscore[rows],
            self.context[rows],
            self.action_context,
        )


def item_features(path: Path) -> FloatArray:
    """Label-encoded categorical item features then ``item_feature_0``, one row per item id."""
    items = pd.read_csv(path, index_col=0).sort_values("item_id", kind="stable")
    ids = items["item_id"].to_numpy()
    if not np.array_equal(ids, np.arange(ids.shape[0])):
        raise ValueError(
            f"{path}: item_id must be 0 … n_items − 1, one row each; got {ids.tolist()}."
        )
    cats = [c for c in items.columns if c not in ("item_id", "item_feature_0")]
    codes = [np.unique(items[c].to_numpy(dtype=str), return_inverse=True)[1] for c in cats]
    numeric = items["item_feature_0"].to_numpy(dtype=np.float64)
    return np.column_stack([*codes, numeric]).astype(np.float64)


def load_log(log_csv: Path, item_csv: Path) -> OBDLog:
    """Read and preprocess one log (step 1 of the protocol)."""
    data = pd.read_csv(log_csv, index_col=0).sort_values("timestamp", kind="stable")
    user_cols = [c for c in data.columns if "user_feature" in c]
    context = pd.get_dummies(data[user_cols], drop_first=True).to_numpy(dtype=np.float64)
    position = np.unique(data["position"].to_numpy(), return_inverse=True)[1].astype(np.intp)
    return OBDLog(
        action=data["item_id"].to_numpy().astype(np.intp),
        position=position,
        reward=data["click"].to_numpy(dtype=np.float64),
        pscore=data["propensity_score"].to_numpy(dtype=np.float64),
        context=context,
        action_context=item_features(item_csv),
    )


def load_prior(path: Path, campaign: str) -> tuple[FloatArray, FloatArray]:
    """The BTS Beta prior ``(alpha (K,), beta (K,))`` of ``campaign``."""
    with path.open(encoding="utf-8") as fh:
        table = yaml.safe_load(fh)
    if campaign not in table:
        raise ValueError(f"{path} has no prior for campaign {campaign!r}; it has {sorted(table)}.")
    alpha = np.asarray(table[campaign]["alpha"], dtype=np.float64)
    beta = np.asarray(table[campaign]["beta"], dtype=np.float64)
    if alpha.shape != beta.shape or alpha.ndim != 1 or (alpha <= 0).any() or (beta <= 0).any():
        raise ValueError(
            f"{path}: alpha and beta of {campaign!r} must be equal-length positive lists."
        )
    return alpha, beta


def bts_action_dist(
    alpha: FloatArray,
    beta: FloatArray,
    len_list: int,
    n_sim: int,
    random_state: int = RANDOM_STATE,
    block: int = 100_000,
) -> FloatArray:
    """Slot-wise choice frequencies of Bernoulli TS with a fixed Beta prior (step 2).

    Simulation s draws ``θ_s ~ Beta(alpha, beta)`` (one row of the legacy
    ``RandomState(random_state)`` stream per simulation, in order) and ranks items by
    decreasing ``θ_s``; slot k gets the item ranked k. Simulations run in blocks of
    ``block`` rows: the stream, and so the result, does not depend on the block size.

    Returns
    -------
    ndarray of shape (n_items, len_list)
        Column k sums to 1.
    """
    if not 1 <= len_list <= alpha.shape[0]:
        raise ValueError(f"len_list must be in [1, {alpha.shape[0]}]; got {len_list}.")
    if n_sim < 1:
        raise ValueError(f"n_sim must be a positive integer; got {n_sim}.")
    stream = np.random.RandomState(random_state)
    k = alpha.shape[0]
    counts = np.zeros((k, len_list), dtype=np.int64)
    done = 0
    while done < n_sim:
        m = min(block, n_sim - done)
        draws = stream.beta(alpha, beta, size=(m, k))
        ranked = np.argsort(draws, axis=1)[:, ::-1][:, :len_list]
        for slot in range(len_list):
            counts[:, slot] += np.bincount(ranked[:, slot], minlength=k)
        done += m
    out: FloatArray = counts / float(n_sim)
    return out


def bootstrap_rows(n_rounds: int, b: int) -> IntArray:
    """Rows of bootstrap resample ``b``: ``RandomState(b).choice(n, size=n, replace=True)``."""
    rows: IntArray = np.random.RandomState(b).choice(n_rounds, size=n_rounds, replace=True)
    return rows


def kfold_ids(n_rounds: int, n_folds: int = 3, random_state: int = RANDOM_STATE) -> IntArray:
    """Fold of each round as in ``KFold(n_folds, shuffle=True, random_state)``."""
    from sklearn.model_selection import KFold

    folds = np.empty(n_rounds, dtype=np.intp)
    splitter = KFold(n_splits=n_folds, shuffle=True, random_state=random_state)
    for j, (_, test) in enumerate(splitter.split(np.empty((n_rounds, 1)))):
        folds[test] = j
    return folds


def logistic_reward_model(n_folds: int = 3) -> CrossFitRewardModel:
    """The benchmark's reward model (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression

    return CrossFitRewardModel(
        lambda: LogisticRegression(C=100.0, max_iter=10000, random_state=RANDOM_STATE),
        n_folds=n_folds,
        per_position=True,
    )
