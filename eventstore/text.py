"""Text the event store, the workspace and MLflow can hold: no NUL character (PostgreSQL
text refuses it, file names cannot carry it) and no lone surrogate (UTF-8 cannot encode
one; Python makes them from undecodable bytes in command-line arguments)."""

from __future__ import annotations


def text_problem(value: str) -> str | None:
    """What makes ``value`` unstorable, as a phrase (``"must not …"``), or None."""
    if "\x00" in value:
        return "must not contain a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (a lone surrogate is not)"
    return None


def check_text(name: str, value: str) -> str:
    """``value`` when storable; else a ``ValueError`` naming the field ``name``."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"{name} {problem}; got {value!r}.")
    return value
