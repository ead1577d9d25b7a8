"""Logged rows whose propensity is too uncertain for importance weighting.

IPS and DR divide by the logged propensity ``p̂``. When it is a Monte-Carlo estimate with
standard error ``se`` (``Decision.propensity_se``), the weight ``1 / p̂`` carries a
relative error of about ``se / p̂`` (delta method), so a row is flagged when that ratio
exceeds ``max_rel_error``. Exact propensities (``se`` missing, NaN or 0) are never flagged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core._validation import as_float_vector

#: The offline evaluation's bound on a logged propensity's relative standard error.
MAX_REL_ERROR = 0.1


def flag_propensity_error(
    pscore: Any, propensity_se: Any, max_rel_error: float = MAX_REL_ERROR
) -> NDArray[np.bool_]:
    """Mask of the rows whose logged propensity's relative standard error is too large.

    Parameters
    ----------
    pscore : array-like of shape (n_rounds,)
        Logged propensities, in (0, 1].
    propensity_se : array-like of shape (n_rounds,)
        Their standard errors; NaN where the propensity is exact (or not measured).
    max_rel_error : float
        Largest acceptable ``se / pscore``, > 0.

    Returns
    -------
    ndarray of bool, shape (n_rounds,)
    """
    p = as_float_vector("pscore", pscore, bound=None)
    se = np.asarray(propensity_se, dtype=np.float64)
    if se.shape != p.shape:
        raise ValueError(
            f"propensity_se must have shape {p.shape} (one per pscore); got {se.shape}."
        )
    if ((p <= 0.0) | (p > 1.0)).any():
        bad = float(p[(p <= 0.0) | (p > 1.0)][0])
        raise ValueError(f"pscore must lie in (0, 1]; got {bad!r}.")
    if (np.nan_to_num(se, nan=0.0) < 0.0).any() or np.isinf(se).any():
        raise ValueError("propensity_se must be finite and >= 0 (NaN for exact propensities).")
    if isinstance(max_rel_error, bool) or not float(max_rel_error) > 0.0:
        raise ValueError(f"max_rel_error must be a float > 0; got {max_rel_error!r}.")
    measured = np.nan_to_num(se, nan=0.0)
    out: NDArray[np.bool_] = measured / p > max_rel_error
    return out
