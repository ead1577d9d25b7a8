"""Durations written as ``90d``, ``12h``, ``30m``, ``45s`` or ``2w`` (CLI arguments)."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """``"90d"`` → ``timedelta(days=90)``; raises ``ValueError`` naming the format."""
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"a duration is a number and a unit s, m, h, d or w (e.g. 90d); got {text!r}."
        )
    value, unit = float(match.group(1)), match.group(2)
    if value <= 0:
        raise ValueError(f"a duration must be positive; got {text!r}.")
    try:
        return timedelta(**{_UNITS[unit]: value})
    except OverflowError:
        raise ValueError(
            f"a duration must be under {timedelta.max.days} days; got {text!r}."
        ) from None
