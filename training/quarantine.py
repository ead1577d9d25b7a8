"""Replay quarantine: rows that break the replay schema are set aside, not the window.

One row of another width (a decision logged while no model served, before the width
caps existed) used to fail the whole Great Expectations window, so the nightly retrain —
the way out of the fallback — never registered again until the row aged out. Now the
extraction sets rows of another width aside however many there are (the service takes
any width while no model serves: a client must not be able to keep every retrain
failing), and other broken rows when they are at most ``max_share`` of the window:

* the window's dimensions are the most common context width and candidate-feature width
  (not the first row's, which may be the broken one);
* a row breaks the schema when its context or any candidate's features have another
  width, hold a non-finite value or exceed ``max_abs`` in magnitude, or its propensity is
  not in (0, 1], or its reward is not a reward the window may hold (``rewards``: within
  ``[reward_min, reward_max]``, a sum of ``n_rewards`` such rewards under the sum
  rule — what the suite checks; one NaN or out-of-range reward an edited store or another
  tool wrote failed every retrain while it stayed in the window);
* a row's logged choice must hold together (:func:`inconsistent`): ``chosen`` indexes
  its ``arm_id`` among the candidates, a propensity's standard error (where logged) is
  finite and not negative, and the choice probabilities (where logged) are
  non-negative, sum to 1 and give the chosen arm the logged propensity. The support
  check reads the probabilities and the importance weights the propensity: a row where
  they disagree (an edited or corrupt store) moved the gate's production estimate to
  −3.7 on a [0, 1] reward with three such rows in 300, and a worse model passed.
  Above ``max_share`` such rows fail the extraction, naming the first.

The set-aside rows go to ``quarantine.parquet`` (``event_id`` and ``reason``) beside the
replay file, their count to the manifest, and their ids to the data-docs folder of the
validation (``quarantine.json``). Above ``max_share`` the other broken rows stay and the
GX suite fails the run on them as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from bandit_core import MAX_ABS_INPUT
from eventstore.replay import REWARD, REWARD_COUNT, dimensions
from validation.expectations import is_sum_in_range

#: Default largest share of a window that may be quarantined.
MAX_SHARE = 0.01
#: Default largest feature magnitude a replay row may hold (the most a policy accepts).
MAX_ABS = MAX_ABS_INPUT
#: Largest relative difference between a row's propensity and its logged probability of
#: the chosen arm, and between its probabilities' sum and 1 (both are one float64 number
#: as the service logs them).
CONSISTENCY = 1e-6


def off_width(row: Any, dim_user: int, dim_arm: int) -> str | None:
    """Why ``row``'s context or a candidate's features are not of the window's widths,
    or None."""
    if _absent(row.context):  # every row without one made -1 the window's width
        return "it has no context"
    width = len(row.context)
    if width != dim_user:
        return f"context has {width} features; the window has {dim_user}"
    if any(len(f) != dim_arm for f in row.candidate_features):
        return f"a candidate's features are not {dim_arm} wide"
    return None


def inconsistent(row: Any) -> str | None:
    """Why ``row``'s logged choice does not hold together, or None (module docstring)."""
    ids = list(row.candidate_ids) if row.candidate_ids is not None else []
    chosen = row.chosen
    if isinstance(chosen, bool) or not isinstance(chosen, int | np.integer):
        return f"chosen {chosen!r} is not an index"
    if not 0 <= int(chosen) < len(ids):
        return f"chosen {int(chosen)} is not the index of one of its {len(ids)} candidates"
    if ids[int(chosen)] != row.arm_id:
        return (
            f"chosen {int(chosen)} names candidate {str(ids[int(chosen)])[:64]!r}, not the "
            f"logged arm {str(row.arm_id)[:64]!r}"
        )
    slate = _unordered_slate(row, int(chosen), len(ids))
    if slate is not None:
        return slate
    se = getattr(row, "propensity_se", None)
    if se is not None and not isinstance(se, int | float | np.integer | np.floating):
        return f"propensity_se {_shown(se)} is not a number"
    if se is not None and not math.isnan(se) and not 0.0 <= se < math.inf:
        # the evaluation's propensity flags refused the run on it, naming no event
        return f"propensity_se {se!r} is not a standard error (finite, at least 0)"
    probs = np.asarray(row.probabilities if row.probabilities is not None else [], float)
    if probs.shape != (len(ids),):
        return f"{probs.size} choice probabilities for {len(ids)} candidates"
    if np.isnan(probs).all():
        return None  # not logged with them (an import of another system's logs)
    if not bool(np.all(np.isfinite(probs))) or bool((probs < 0.0).any()):
        return "a choice probability is negative or not finite"
    total = float(probs.sum())
    if abs(total - 1.0) > CONSISTENCY:
        return f"its choice probabilities sum to {total:.9g}, not 1"
    logged, chosen_p = float(row.propensity), float(probs[int(chosen)])
    if abs(logged - chosen_p) > CONSISTENCY * max(logged, chosen_p):
        return (
            f"propensity {logged:.9g} is not its logged probability {chosen_p:.9g} of the "
            "chosen arm"
        )
    return None


def _absent(value: Any) -> bool:
    """A frame cell that holds nothing (None, or pandas' NaN for a missing list)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _unordered_slate(row: Any, chosen: int, n_candidates: int) -> str | None:
    """Why a slate row's ranking does not hold together, or None (no ranking: no slate).
    The ranking lists distinct candidate indices, the chosen one first, with a reward
    per position (and a marginal propensity per position, where logged): an edited or
    imported file's ranking past its candidates raised an IndexError in the evaluation."""
    ranking = getattr(row, "ranking", None)
    if ranking is None or _absent(ranking):
        return None
    order = list(ranking)
    if (
        not order
        or any(isinstance(i, bool) or not isinstance(i, int | np.integer) for i in order)
        or not all(0 <= int(i) < n_candidates for i in order)
        or len(set(order)) != len(order)
    ):
        shown = repr([int(i) if isinstance(i, int | np.integer) else i for i in order])[:64]
        return f"ranking {shown} is not distinct indices of its {n_candidates} candidates"
    if int(order[0]) != chosen:
        return f"ranking starts with candidate {int(order[0])}, not the chosen {chosen}"
    for name in ("position_rewards", "position_propensities"):
        values = getattr(row, name, None)
        if name == "position_propensities" and _absent(values):
            continue  # logged before the column existed
        count = 0 if values is None or _absent(values) else len(values)
        if count != len(order):
            return f"{count} {name.replace('_', ' ')} for a ranking of {len(order)}"
    return None


def _shown(value: Any) -> str:
    """A stored number as a message shows it (a whole count without its decimals)."""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        number = float(value)  # 1e200 as itself, not its 201 digits
        return str(int(number)) if number.is_integer() and abs(number) < 1e16 else repr(number)
    return repr(value)[:64]


@dataclass(frozen=True)
class Rewards:
    """The rewards a window may hold: each in ``[low, high]``; with ``summed`` (the sum
    duplicate rule) a row's reward is the sum of its ``n_rewards`` received rewards, each
    in that range (:func:`validation.expectations.is_sum_in_range`)."""

    low: float
    high: float
    summed: bool = False

    def why_not(self, row: Any) -> str | None:
        """Why ``row``'s reward is not one the window may hold, or None."""
        value = getattr(row, REWARD)
        if self.summed:
            count = getattr(row, REWARD_COUNT)
            if is_sum_in_range(value, count, self.low, self.high):
                return None
            return (
                f"reward {_shown(value)} is not a sum of {_shown(count)} rewards each in "
                f"[{self.low:g}, {self.high:g}]"
            )
        if isinstance(value, int | float | np.integer | np.floating) and (
            self.low <= float(value) <= self.high
        ):
            return None
        return f"reward {_shown(value)} is not in [{self.low:g}, {self.high:g}]"


def why_broken(
    row: Any, dim_user: int, dim_arm: int, max_abs: float, rewards: Rewards | None = None
) -> str | None:
    """Why ``row`` breaks the replay schema or its logged choice does not hold together,
    or None."""
    return off_schema(row, dim_user, dim_arm, max_abs, rewards) or inconsistent(row)


def off_schema(
    row: Any, dim_user: int, dim_arm: int, max_abs: float, rewards: Rewards | None = None
) -> str | None:
    """Why ``row`` breaks the replay schema (what the suite checks), or None."""
    wrong = off_width(row, dim_user, dim_arm)
    if wrong is not None:
        return wrong
    context = np.asarray(row.context, dtype=np.float64)
    features = [np.asarray(f, dtype=np.float64) for f in row.candidate_features]
    values = np.concatenate([context, *features]) if features else context
    if not bool(np.all(np.isfinite(values))):
        return "a feature is not finite"
    if values.size and float(np.max(np.abs(values))) > max_abs:
        return f"a feature exceeds {max_abs:g} in magnitude"
    propensity = float(row.propensity)
    if not 0.0 < propensity <= 1.0:
        return f"propensity {propensity!r} is not in (0, 1]"
    return rewards.why_not(row) if rewards is not None else None


def _widths(row: Any) -> tuple[int, int]:
    context = 0 if _absent(row.context) else len(row.context)
    arm = len(row.candidate_features[0]) if len(row.candidate_features) else 0
    return context, arm


def _refuse_a_changed_width(
    rows: list[Any], wide: NDArray[np.bool_], dims: tuple[int, int], max_share: float
) -> None:
    """Raise ``ValueError`` when the window's newest decisions, more than ``max_share`` of
    it and nothing else among them, all have one other width: the clients changed what
    they send (a context feature added), and a model of the window's majority width
    could not decide their requests. Set aside as stray rows, they left a version of the
    old width registered, silently, its head missing every decision since the change
    (audit, stop 54). A few rows of another width among the others are still set aside:
    a client cannot fail the run with them."""
    n = len(rows)
    if n == 0 or not wide[-1]:
        return
    newest = _widths(rows[-1])
    tail = 0
    while tail < n and wide[n - 1 - tail] and _widths(rows[n - 1 - tail]) == newest:
        tail += 1
    if tail == n or tail <= max(1.0, max_share * n):  # all of it: the checks that follow
        return
    first = rows[n - tail]
    since = getattr(first, "created_at", None)
    raise ValueError(
        f"the window's newest {tail} of {n} decisions (from {since}, event "
        f"{str(first.event_id)[:64]!r}) have {newest[0]} context and {newest[1]} candidate "
        f"features, the rest of the window {dims[0]} and {dims[1]}: the clients changed what "
        "they send, and a model of the older widths could not decide their requests. "
        "Train on a window that starts after the change (window_start), or once most of "
        "the window has the new widths."
    )


def split(
    frame: pd.DataFrame,
    max_share: float = MAX_SHARE,
    max_abs: float = MAX_ABS,
    rewards: Rewards | None = None,
    *,
    strict: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, tuple[int, int]]:
    """``(kept rows, quarantined rows with a reason, (dim_user, dim_arm))``.

    Rows of other widths than the window's most common ones are always set aside: the
    service takes any width while no model serves, so a client could otherwise keep every
    retrain — the way out of the fallback — failing with a few rows of another width.
    The other broken rows are set aside only when they are at most ``max_share`` of the
    window (otherwise the suite fails the run on them; with ``strict``, for a file no
    suite checks after, this raises ``ValueError`` naming the first).
    """
    dims = dimensions(frame)
    rows = list(frame.itertuples(index=False))
    reasons = [why_broken(row, *dims, max_abs, rewards) for row in rows]
    broken = np.array([r is not None for r in reasons], dtype=bool)
    wide = np.array([off_width(row, *dims) is not None for row in rows], dtype=bool)
    _refuse_a_changed_width(rows, wide, dims, max_share)
    other = broken & ~wide
    if other.any() and other.mean() > max_share:
        # the suite fails the run on the schema's rows; it cannot see a choice that does
        # not hold together, which would be evaluated as logged
        mixed = [
            i for i in np.flatnonzero(other) if off_schema(rows[i], *dims, max_abs, rewards) is None
        ]
        if mixed:
            first = rows[mixed[0]]
            raise ValueError(
                f"{len(mixed)} of the window's {len(rows)} decisions log a choice that does "
                f"not hold together, more than quarantine_max_share ({max_share:g}) of it; "
                f"the first, event {str(first.event_id)[:64]!r}: {inconsistent(first)}. "
                "The window cannot be evaluated."
            )
        if strict:  # no suite after it: refused here, from the reasons already found
            at = int(np.flatnonzero(other)[0])
            raise ValueError(
                f"{int((other | wide).sum())} of the replay's {len(rows)} decisions break "
                f"the replay schema, more than {max_share:g} of them; the first kept, event "
                f"{str(rows[at].event_id)[:64]!r}: {reasons[at]}."
            )
        broken = wide
    empty = pd.DataFrame({"event_id": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
    if not broken.any():
        return frame, empty, dims
    quarantined = pd.DataFrame(
        {
            "event_id": frame["event_id"][broken].to_numpy(),
            "reason": [r for r, out in zip(reasons, broken, strict=True) if out],
        }
    )
    return frame[~broken].reset_index(drop=True), quarantined, dims
