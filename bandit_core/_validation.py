"""Boundary checks shared by every public entry point of ``bandit_core``.

Each check raises :class:`ValueError` (or :class:`TypeError` for a wrong kind of object)
with a message that names the field, states the expectation and shows the value received,
in the spirit of scikit-learn's ``_param_validation``. Checks run once, at the boundary;
the numerical code behind them trusts its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def _show(value: Any) -> str:
    # repr of a huge int is slow, or refused past 4,300 digits
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits, beyond every float"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Interval:
    """A numeric constraint ``kind`` in ``[low, high]`` with open/closed ends."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right" or "neither"

    def describe(self) -> str:
        name = "an int" if self.kind is int else "a float"
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        low = "-inf" if self.low is None else self._bound(self.low)
        high = "inf" if self.high is None else self._bound(self.high)
        return f"{name} in the range {left}{low}, {high}{right}"

    def _bound(self, value: float) -> str:
        """An int parameter's bound in full (1000000, not 1e+06)."""
        return str(int(value)) if self.kind is int and float(value).is_integer() else f"{value:g}"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int:
            if not isinstance(value, (int, np.integer)):
                return False
        elif not isinstance(value, (int, float, np.integer, np.floating)):
            return False
        try:
            v = float(value)
        except OverflowError:  # an int beyond every float: no parameter takes one
            return False
        if not math.isfinite(v):
            return False
        left_open = self.closed in ("right", "neither")
        right_open = self.closed in ("left", "neither")
        if self.low is not None and (v < self.low or (v == self.low and left_open)):
            return False
        return not (self.high is not None and (v > self.high or (v == self.high and right_open)))


@dataclass(frozen=True)
class OneOf:
    """A constraint that the value is one of a fixed set of options."""

    options: tuple[Any, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def accepts(self, value: Any) -> bool:
        return any(value == o and type(value) is type(o) for o in self.options)


@dataclass(frozen=True)
class OptionalOf:
    """``None`` or a value satisfying the inner constraint."""

    inner: Interval | OneOf

    def describe(self) -> str:
        return "None or " + self.inner.describe()

    def accepts(self, value: Any) -> bool:
        return value is None or self.inner.accepts(value)


@dataclass(frozen=True)
class IsBool:
    def describe(self) -> str:
        return "a bool"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class StrTuple:
    """A tuple (or list) of distinct strings."""

    def describe(self) -> str:
        return "a sequence of distinct strings"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, str) or not isinstance(value, (tuple, list)):
            return False
        return all(isinstance(v, str) for v in value) and len(set(value)) == len(value)


@dataclass(frozen=True)
class IsStr:
    def describe(self) -> str:
        return "a str"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)


@dataclass(frozen=True)
class LayerWidths:
    """A non-empty sequence of positive ints (hidden layer widths)."""

    def describe(self) -> str:
        return "a non-empty sequence of positive ints (layer widths)"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (tuple, list)) or not value:
            return False
        return all(
            isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h >= 1 for h in value
        )


@dataclass(frozen=True)
class CheckedBy:
    """A config field whose check lives with the component that uses it: ``owner``
    validates it against its own table ``table`` (which holds the field), with messages
    naming ``owner``. The entry itself accepts anything, so each check runs once."""

    owner: str
    table: Mapping[str, Any]

    def describe(self) -> str:
        return f"checked by {self.owner}"

    def accepts(self, value: Any) -> bool:
        return True


@dataclass(frozen=True)
class FloorMap:
    """A mapping of segment names (str) to probabilities in (0, 1] (per-segment floors)."""

    def describe(self) -> str:
        return "a mapping of segment names (str) to floats in the range (0, 1]"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, Mapping):
            return False
        return all(
            isinstance(k, str) and Interval(float, 0.0, 1.0, closed="right").accepts(v)
            for k, v in value.items()
        )


Constraint = (
    Interval | OneOf | OptionalOf | IsBool | StrTuple | IsStr | LayerWidths | CheckedBy | FloorMap
)


#: The prior precision λ of a linear head (and the logistic model's): 1/√λ and λ·I must
#: stay far from float64's limits once inputs at ``MAX_ABS_INPUT`` meet them (5e-324
#: gave NaN propensities, 1e20 an int numpy could not take the root of).
PRIOR_PRECISION = Interval(float, 1e-8, 1e8)


#: The largest exploration scale (a UCB bonus's ``alpha``/``beta``, a Thompson draw's
#: ``v``): times the widest posterior width inputs at ``MAX_ABS_INPUT`` allow (~1e13) it
#: stays far below float64's limit. 1e308 made every score infinite: NaN propensities
#: (LinUCB), an internal "cannot convert float NaN to integer" (LinTS).
EXPLORATION_SCALE_MAX = 1e12
#: A UCB bonus's scale (0: greedy).
BONUS_SCALE = Interval(float, 0.0, EXPLORATION_SCALE_MAX)
#: A Thompson draw's scale (0 excluded: it would be greedy with Monte-Carlo propensities).
DRAW_SCALE = Interval(float, 0.0, EXPLORATION_SCALE_MAX, closed="right")
#: The noise prior's shape a0: at least 1/2, one degree of freedom of the scores' Student-t
#: (a Cauchy). Below, a Gamma(a0) draw underflows to 0 — σ² infinite, the scores of every
#: unseen arm +inf — often enough to break exact propensities (47 % of draws at 1e-3: the
#: first of the infinite arms always won, core helper, stop 53), and the quadrature slows
#: with the tails (17 ms a decision at a0 = 0.01, against 0.17 ms at 1).
NOISE_SHAPE = Interval(float, 0.5, None)


def delegate(
    owner: str, table: Mapping[str, Constraint], keys: Sequence[str]
) -> dict[str, Constraint]:
    """Entries ``key → CheckedBy(owner, table)`` for fields ``owner`` checks itself;
    ``KeyError`` for a key its table does not hold (the delegation would check nothing)."""
    missing = [k for k in keys if k not in table]
    if missing:
        raise KeyError(f"{owner}'s constraint table has no entry for {missing}.")
    return {k: CheckedBy(owner, table) for k in keys}


def validate_params(owner: str, params: Mapping[str, Any], table: Mapping[str, Constraint]) -> None:
    """Check every ``params`` entry against its constraint in ``table``.

    Raises
    ------
    ValueError
        "The 'alpha' parameter of LinUCB must be a float in the range [0, inf). Got -1.0."
    """
    for key, value in params.items():
        constraint = table.get(key)
        if constraint is None:
            continue
        if not constraint.accepts(value):
            raise ValueError(
                f"The {key!r} parameter of {owner} must be {constraint.describe()}. "
                f"Got {_show(value)}."
            )


def check_known_options(owner: str, given: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {', '.join(repr(u) for u in unknown)} for {owner}; "
            f"expected some of: {', '.join(sorted(known))}."
        )


def refuse_complex(name: str, value: Any) -> None:
    """Raise for complex input, which a float conversion would silently make real, and for
    text, which it would silently parse (``"1e3"`` became 1000.0, ``"nan"`` a NaN's
    error far from the cause)."""
    try:
        kind = np.asarray(value).dtype.kind
    except (TypeError, ValueError):  # ragged or odd input: the float conversion says why
        return
    if kind == "c":
        raise ValueError(f"{name} must hold real numbers; got complex values {_show(value)}.")
    if kind in "US":
        raise ValueError(f"{name} must hold numbers, not text; got {_show(value)}.")


def arm_id_text(value: Any, field: str = "arm_id") -> str:
    """An arm id as the text the policy keys it by: a string, or an integer written in
    decimal. ``ValueError`` naming ``field`` for anything else (None, a float, a dict: its
    ``str`` would be a key nobody meant) and for a NUL character (a state stores ids as
    numpy strings, which drop trailing NULs: ``"a\\x00"`` would come back as ``"a"``)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        text = str(int(value))
    else:
        raise ValueError(
            f"{field} must be a string or an integer; got {type(value).__name__} {value!r:.40}."
        )
    if "\x00" in text:
        raise ValueError(f"{field} must not contain a NUL character; got {text!r:.60}.")
    return text


#: The largest magnitude a policy or head accepts in any input it learns from or scores
#: (features, contexts, rewards). ``python -m benchmarks.magnitude``: with the default prior
#: precision λ = 1 the hybrid models refuse updates from 1e8 (an arm's inverse precision
#: is no longer positive definite in float64) and every model fed user × arm interactions
#: overflows at 1e100, so 1e6 keeps a hundredfold margin. Below it a model whose features
#: multiply inputs (interactions, a network) or a much weaker prior can still meet a
#: precision that is singular in float64; that call is then refused whole (``ValueError``,
#: nothing learnt). The service's ``max_abs_feature``, the event store's reward range and
#: the retrain's quarantine are bounded by it.
MAX_ABS_INPUT = 1e6

#: the native float64 dtype (a singleton: ``is`` compares it cheaply)
_FLOAT64 = np.dtype(np.float64)


def _within(arr: FloatArray, bound: float | None) -> bool:
    """Every value finite and ``|x| ≤ bound`` (one comparison: False for NaN and ±inf)."""
    if bound is None:
        return bool(np.isfinite(arr).all())
    return bool((np.abs(arr) <= bound).all())


def _outside(arr: FloatArray, bound: float | None) -> NDArray[np.bool_]:
    """Where ``arr`` is non-finite or beyond ``bound`` (the complement of ``_within``)."""
    bad = ~np.isfinite(arr)
    return bad if bound is None else bad | (np.abs(arr) > bound)


def _out_of_range(name: str, value: float, where: str, bound: float | None) -> ValueError:
    if not math.isfinite(value) or bound is None:
        return ValueError(f"{name} must be finite; got {value!r} at {where}.")
    return ValueError(
        f"{name} must be at most {bound:g} in magnitude (MAX_ABS_INPUT); got {value!r} at {where}."
    )


def as_float_vector(
    name: str, value: Any, dim: int | None = None, bound: float | None = MAX_ABS_INPUT
) -> FloatArray:
    """A finite 1-D float64 array (a copy when the input is not already one) whose values
    are at most ``bound`` in magnitude (``None``: any finite value)."""
    arr = value if type(value) is np.ndarray and value.dtype is _FLOAT64 else None
    if arr is None:  # the request path usually passes float64 arrays: no conversion then
        refuse_complex(name, value)
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: a huge int
            raise ValueError(f"{name} must be a 1-D array of numbers; got {_show(value)}.") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array; got an array of shape {arr.shape}.")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"{name} must have length {dim}; got length {arr.shape[0]}.")
    if not _within(arr, bound):
        bad = int(np.flatnonzero(_outside(arr, bound))[0])
        raise _out_of_range(name, float(arr[bad]), f"index {bad}", bound)
    return arr


def as_float_matrix(
    name: str,
    value: Any,
    n_cols: int | None = None,
    n_rows: int | None = None,
    bound: float | None = MAX_ABS_INPUT,
) -> FloatArray:
    """A finite 2-D float64 array with the given number of columns (and rows) whose values
    are at most ``bound`` in magnitude (``None``: any finite value)."""
    arr = value if type(value) is np.ndarray and value.dtype is _FLOAT64 else None
    if arr is None:
        refuse_complex(name, value)
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: a huge int
            raise ValueError(f"{name} must be a 2-D array of numbers; got {_show(value)}.") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array; got an array of shape {arr.shape}.")
    if n_cols is not None and arr.shape[1] != n_cols:
        raise ValueError(f"{name} must have {n_cols} columns; got an array of shape {arr.shape}.")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise ValueError(f"{name} must have {n_rows} rows; got an array of shape {arr.shape}.")
    if not _within(arr, bound):
        row, col = (int(i[0]) for i in np.nonzero(_outside(arr, bound)))
        raise _out_of_range(name, float(arr[row, col]), f"[{row}, {col}]", bound)
    return arr


def as_finite_float(name: str, value: Any, bound: float | None = MAX_ABS_INPUT) -> float:
    """A finite float at most ``bound`` in magnitude (``None``: any finite value)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"{name} must be a finite number; got {_show(value)}.")
    try:
        v = float(value)
    except OverflowError:  # an int beyond every float
        raise ValueError(f"{name} must be a finite number; got {_show(value)}.") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number; got {v!r}.")
    if bound is not None and abs(v) > bound:
        raise ValueError(
            f"{name} must be at most {bound:g} in magnitude (MAX_ABS_INPUT); got {v!r}."
        )
    return v


def check_generator(value: Any) -> np.random.Generator:
    if not isinstance(value, np.random.Generator):
        raise TypeError(
            "rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed)); "
            f"got {type(value).__name__}."
        )
    return value
