"""Policy options written on a command line: ``POLICY.OPTION=VALUE``.

One parser for every command that takes them (``banditops simulate --set``, the regret
benchmarks' ``--set``). A value is, in order: a JSON object or array when it starts with
``{`` or ``[`` (``segment_floors={"group_0": 0.1}``; an array becomes a tuple), ``true``
/ ``false`` / ``none``, a comma list of values (a tuple), an int, a float, else the text
itself. The policy then validates it as it validates any option.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

#: options that are sequences even when given one value (``--set neural_linear.hidden=50``)
TUPLE_OPTIONS = ("hidden", "arm_vocabulary")


def parse_value(text: str) -> Any:
    """One ``--set`` value (see the module docstring)."""
    if text[:1] in ("{", "["):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--set value {text!r} is not valid JSON: {exc}.") from None
        return tuple(parsed) if isinstance(parsed, list) else parsed
    if "," in text:
        return tuple(parse_value(t) for t in text.split(",") if t)
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{policy: {option: value}}`` of ``POLICY.OPTION=VALUE`` items.

    Raises ``ValueError`` for an item of another form or a malformed JSON value."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        policy, dot, option = key.partition(".")
        if not sep or not dot or not policy or not option:
            raise ValueError(f"--set expects policy.option=value; got {item!r}.")
        parsed = parse_value(value)
        if option in TUPLE_OPTIONS and not isinstance(parsed, tuple):
            parsed = (parsed,)
        out.setdefault(policy, {})[option] = parsed
    return out
