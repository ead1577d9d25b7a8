"""Data contracts shared by every layer.

Shapes used throughout (one vocabulary, as in Open Bandit Pipeline):

``n_rounds``
    number of logged decisions (rows of a replay batch).
``n_candidates`` (``K``)
    number of candidate arms offered in one decision.
``dim_user`` / ``dim_arm``
    length of the user-context vector and of each candidate's feature vector.
``action_dist``
    ``(n_rounds, n_actions, len_list)`` probabilities of the evaluation policy.
``pscore``
    ``(n_rounds,)`` propensity of the logged action under the logging policy.
``reward``, ``position``
    ``(n_rounds,)`` observed reward and slot index of the logged action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core._validation import FloatArray, arm_id_text, as_float_matrix

SCHEMA_VERSION = 1

#: The marginal propensities' defaults where a slate is logged or evaluated (the service's
#: ``slate_marginal_draws`` / ``slate_max_states``, the offline evaluation's slate
#: ``action_dist``): Monte-Carlo prefixes past the exact part, and prefix sets kept exactly
#: (here, cheap to import: the service's settings read them).
MARGINAL_DRAWS = 200
MARGINAL_MAX_STATES = 64


@dataclass(frozen=True)
class Candidates:
    """The candidate set of one decision.

    :meth:`from_any` checks its input (distinct ids, finite features at most
    ``MAX_ABS_INPUT`` in magnitude); the constructor trusts it, for callers (the service,
    :meth:`subset`) whose features were checked once already.

    Parameters
    ----------
    ids : tuple of str, length K
        Distinct arm identifiers.
    features : ndarray of shape (K, dim_arm)
        One feature row per candidate (``dim_arm`` may be 0).
    """

    ids: tuple[str, ...]
    features: FloatArray

    def __post_init__(self) -> None:
        # the one check cheap enough for every construction (O(1)): a row per id, else a
        # policy scores rows and reports ids that do not belong together
        shape = getattr(self.features, "shape", None)
        if shape is None or len(shape) != 2 or shape[0] != len(self.ids):
            raise ValueError(
                f"candidates.features must have one row per id, shape ({len(self.ids)}, "
                f"dim_arm); got shape {shape}. Build candidates with Candidates.from_any "
                "to have them checked."
            )

    @classmethod
    def from_any(cls, ids: Sequence[Any], features: Any = None) -> Candidates:
        """Validate and build a candidate set.

        ``ids`` may hold strings or integers (stored as strings); ``features`` is a
        ``(K, dim_arm)`` array or ``None`` for candidates without features.
        """
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
            raise ValueError(
                f"candidates.ids must be a sequence of arm ids; got {type(ids).__name__}."
            )
        id_tuple = tuple(arm_id_text(i, "candidates.ids") for i in ids)
        if len(id_tuple) == 0:
            raise ValueError("candidates must hold at least one arm; got an empty candidate set.")
        if len(set(id_tuple)) != len(id_tuple):
            seen: set[str] = set()
            dup = next(i for i in id_tuple if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ValueError(f"candidates.ids must be distinct; arm id {dup!r} appears twice.")
        if features is None:
            feats = np.zeros((len(id_tuple), 0))
        else:
            feats = as_float_matrix("candidates.features", features, n_rows=len(id_tuple))
        return cls(id_tuple, feats)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def subset(self, index: NDArray[np.intp]) -> Candidates:
        return Candidates(tuple(self.ids[i] for i in index), self.features[index])


@dataclass(frozen=True)
class Decision:
    """What a policy chose for one request.

    Attributes
    ----------
    arm : int
        Index of the chosen candidate in the candidate set.
    arm_id : str
        Its identifier.
    propensity : float
        Probability, in (0, 1], that the policy picks this arm given this context and
        candidate set (exact, or a Monte-Carlo estimate for sampling policies).
    probabilities : ndarray of shape (K,)
        The same probability for every candidate; sums to 1.
    scores : ndarray of shape (K,)
        The scores the policy ranked by (UCB, sampled value, posterior mean...).
    policy : str
        Policy name; ``model_version`` the version that made the decision, if known.
    explored : bool
        True when the chosen arm is not the arm with the highest posterior mean.
    propensity_se : float or None
        Standard error of ``propensity`` when it is a Monte-Carlo estimate; None when the
        propensity is exact.
    """

    arm: int
    arm_id: str
    propensity: float
    probabilities: FloatArray
    scores: FloatArray
    policy: str
    explored: bool
    model_version: str | None = None
    propensity_se: float | None = None


@dataclass(frozen=True)
class DecisionBatch:
    """Decisions for ``n_rounds`` contexts that share one candidate set.

    ``arms`` (n_rounds,), ``propensities`` (n_rounds,), ``probabilities`` (n_rounds, K),
    ``scores`` (n_rounds, K); ``propensity_se`` (n_rounds,) the standard errors of
    Monte-Carlo propensities (None when they are exact).
    """

    arms: NDArray[np.intp]
    propensities: FloatArray
    probabilities: FloatArray
    scores: FloatArray
    policy: str
    propensity_se: FloatArray | None = None

    @classmethod
    def empty(cls, n_candidates: int, policy: str) -> DecisionBatch:
        """The decisions for zero contexts."""
        grid = np.zeros((0, n_candidates))
        return cls(np.zeros(0, dtype=np.intp), np.zeros(0), grid, grid.copy(), policy)


@dataclass
class PolicyState:
    """A policy's full state: JSON-able config plus named numpy arrays (never pickle)."""

    policy: str
    config: dict[str, Any]
    arrays: dict[str, NDArray[Any]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
