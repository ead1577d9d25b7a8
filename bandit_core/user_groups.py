"""Hashed user groups: the segment of a decision by who it was for.

The service logs ``user_hash`` (:func:`serving.identity.hash_user`, 64 hex characters)
with every decision. A user's group among ``groups`` is the hash's first 16 hex
characters as an integer, mod ``groups``: stable for a user, and the same wherever it is
computed — the policy's per-group floors at decision time and on the logged rows
offline (:class:`bandit_core.policies.overlap.Overlap`), and the monitor's per-segment
coverage check. Its segment name is ``group_<g>``.
"""

from __future__ import annotations

import hashlib

import numpy as np

#: Hex characters of the user hash that name its group.
GROUP_HEX_CHARS = 16
#: The longest user hash (an HMAC-SHA256 in hex, the width of the ``user_hash`` column).
USER_HASH_MAX_CHARS = 64
#: Prefix of a user group's segment name (``group_3``).
GROUP_PREFIX = "group_"


def check_user_hash(field: str, value: object) -> str | None:
    """``value`` as a user hash: None for no user (None, an empty string or a missing
    value), else a string of 16 to 64 hexadecimal characters (the service logs 64).

    Raises ``ValueError`` naming ``field`` for anything else."""
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return None
    if (
        isinstance(value, str)
        and GROUP_HEX_CHARS <= len(value) <= USER_HASH_MAX_CHARS
        and value.isascii()
        and all(c in "0123456789abcdefABCDEF" for c in value)
    ):
        return value
    shown = repr(value) if not isinstance(value, str) or len(value) <= 80 else f"{value[:80]!r}…"
    raise ValueError(
        f"{field} must be a user hash as the service logs it ({GROUP_HEX_CHARS} to "
        f"{USER_HASH_MAX_CHARS} hexadecimal characters) or empty for no user; got {shown}."
    )


def user_group(user_hash: str, groups: int) -> int:
    """The hashed user group of ``user_hash``: its first 16 hex characters as an integer,
    mod ``groups``."""
    return int(user_hash[:GROUP_HEX_CHARS], 16) % groups


def group_key(group: int) -> str:
    """The segment name of user group ``group`` (``group_<g>``)."""
    return f"{GROUP_PREFIX}{group}"


def user_group_key(user_hash: str | None, groups: int) -> str | None:
    """``group_<g>`` of ``user_hash``; None for a decision without a user."""
    if not isinstance(user_hash, str) or not user_hash:
        return None
    return group_key(user_group(user_hash, groups))


def group_of_key(key: str, groups: int) -> int | None:
    """The group a segment name ``group_<g>`` names (``0 <= g < groups``), else None."""
    digits = key.removeprefix(GROUP_PREFIX)
    # ASCII digits without a leading zero, no longer than the largest group's
    if key == digits or not (digits.isascii() and digits.isdigit()):
        return None
    if (digits != "0" and digits.startswith("0")) or len(digits) > len(str(groups - 1)):
        return None
    group = int(digits)
    return group if group < groups else None


def simulated_users(n_users: int, steps: int, rng: np.random.Generator) -> list[str]:
    """The user hash of each of ``steps`` simulated decisions: one of ``n_users`` users
    (``user-<i>``, hashed with SHA-256 to 64 hex characters like the service's hashes),
    drawn uniformly by ``rng``. Only the users drawn are hashed, so the work is bounded
    by ``steps`` whatever ``n_users``."""
    picks = rng.integers(n_users, size=steps).tolist()
    hashes: dict[int, str] = {}
    for i in picks:
        if i not in hashes:
            hashes[i] = hashlib.sha256(f"user-{i}".encode()).hexdigest()
    return [hashes[i] for i in picks]
