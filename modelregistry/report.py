"""What a registered version is, in one dict: the one source of ``banditops models
--json``, its table and the demo's per-version summary.

Everything comes from the version's tags, its run's metrics and params
(:class:`modelregistry.registry.VersionInfo`); a fact a version does not record is None.
The retrain writes the row counts (``window_rows``, ``train_rows``, ``eval_rows``,
``head_rows``) and where the window stops (``window_stop``); ``floor`` (the exploration
floor of the trained policy) and ``challengers`` (the champion–challenger comparison, a
JSON value) are read when a version has them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from bandit_core.support import ESTIMATOR
from eventstore.contract import WINDOW_STOP_TAG, gate_reasons, gate_verdict
from modelregistry.registry import VersionInfo, VersionListing

#: The keys of :func:`version_summary`, in the order the table shows them.
SUMMARY_KEYS = (
    "version",
    "aliases",
    "algorithm",
    "window_rows",
    "head_rows",
    "eval_rows",
    "train_rows",
    "window_start",
    "window_stop",
    "floor",
    "dr",
    "gate_passed",
    "gate_reasons",
    "candidates",
    "run_key",
)


#: The largest count a tag may say (rows of a window): more is not a count banditops wrote.
_MAX_COUNT = 2**53


def _int(value: str | None) -> int | None:
    """A count tag; None when absent or not a whole number in ``[0, 2⁵³]`` (a tag anyone
    can set must not end the listing of every version, nor be shown as a count it is not:
    ``-7.9`` was listed as -7 rows, ``1e308`` as a 309-digit one)."""
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() and 0 <= number <= _MAX_COUNT else None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999: JSON's grammar, no double's value
        raise ValueError(f"{text[:40]} overflows a double")
    return number


def _json(value: str | None) -> Any:
    """A JSON tag's value (a tag that is not strict JSON — ``NaN``, a number past a
    double's range, nesting too deep, not JSON at all — as its string); None when absent.
    ``1e999`` was read as infinity and printed as the ``Infinity`` no JSON parser reads."""
    if value in (None, ""):
        return None
    try:
        return json.loads(value, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return value


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


#: What the ``window_rows`` tag was called before the head's rows were told apart (a
#: version registered then has its window's rows under it, and no ``head_rows``).
LEGACY_WINDOW_ROWS_TAG = "rows"


def version_summary(info: VersionInfo) -> dict[str, Any]:
    """The version as a JSON-able dict with the keys of :data:`SUMMARY_KEYS`.

    ``dr`` is ``{"value", "ci_low", "ci_high"}`` of the candidate's DR estimate on the
    held-out window (None without an evaluation); ``gate_passed`` True, False or None
    (not decided); ``candidates`` the ``challengers`` tag parsed (None when absent).
    """
    tags, metrics = info.tags, info.metrics
    dr = None
    if f"ope.candidate.{ESTIMATOR}.value" in metrics:
        keys = ("value", "ci_low", "ci_high")
        dr = {key: _finite(metrics.get(f"ope.candidate.{ESTIMATOR}.{key}")) for key in keys}
    return {
        "version": info.version,
        "aliases": list(info.aliases),
        "algorithm": tags.get("algorithm") or info.params.get("algorithm"),
        # a version registered before the tag was named so: its replay window's ``rows``
        "window_rows": _int(tags.get("window_rows", tags.get(LEGACY_WINDOW_ROWS_TAG))),
        "head_rows": _int(tags.get("head_rows")),
        "eval_rows": _int(tags.get("eval_rows")),
        "train_rows": _int(tags.get("train_rows")),
        "window_start": tags.get("window_start") or info.params.get("window_start"),
        "window_stop": tags.get(WINDOW_STOP_TAG),
        "floor": _json(tags.get("floor")),
        "dr": dr,
        "gate_passed": gate_verdict(tags),
        "gate_reasons": gate_reasons(tags),
        "candidates": _json(tags.get("challengers")),
        "run_key": tags.get("run_key"),
    }


def version_summaries(listing: VersionListing) -> list[dict[str, Any]]:
    """:func:`version_summary` of every version of ``listing``
    (:meth:`~modelregistry.registry.ModelRegistry.listing`), oldest first."""
    return [version_summary(v) for v in sorted(listing.versions, key=lambda v: int(v.version))]


def candidate_names(candidates: Any) -> str:
    """The compared candidates in a few words: the names in a list of records (their
    ``algorithm`` or ``name``) or the keys of a mapping; ``-`` when none."""
    if not candidates:
        return "-"
    if isinstance(candidates, dict):
        return ", ".join(str(k) for k in candidates)
    if isinstance(candidates, list):
        names = [
            str(c.get("algorithm") or c.get("name") or c) if isinstance(c, dict) else str(c)
            for c in candidates
        ]
        return ", ".join(names)
    return str(candidates)


def display(value: Any) -> str:
    """A summary value in a table cell (``-`` for None)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
