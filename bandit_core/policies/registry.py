"""Policies by name: build one from options, or restore one from its state."""

from __future__ import annotations

from typing import Any

import numpy as np

from bandit_core.catalog import ALGORITHMS, CATALOG, WRAPPERS, policy_spec, resolve_target
from bandit_core.catalog import POLICIES as POLICIES
from bandit_core.policies.base import Policy
from bandit_core.types import SCHEMA_VERSION, PolicyState


def policy_names() -> list[str]:
    return list(ALGORITHMS)


def make_policy(name: str, **options: Any) -> Policy:
    """Build the policy ``name`` from keyword options.

    The overlap options (:class:`bandit_core.policies.overlap.OverlapConfig`: ``floor``,
    ``segment_feature``, ``segment_user_groups``, ``segment_floors``, ``cold_start_floor``,
    ``cold_start_max_share``, ``exposure_cap``, ``exposure_window``,
    ``exposure_min_decisions``) wrap the policy
    (:func:`~bandit_core.policies.overlap.with_overlap`); the rest are the policy's own.

    Raises ``ValueError`` naming the unknown policy or option.
    """
    from bandit_core.policies.overlap import split_overlap_options, with_overlap

    own, overlap = split_overlap_options(options)
    policy: Policy = policy_spec(name).resolve()(**own)
    return with_overlap(policy, **overlap) if overlap else policy


def policy_from_state(state: PolicyState) -> Policy:
    """Restore any policy (wrapped or not) from :meth:`Policy.to_state` output."""
    if not isinstance(state, PolicyState):
        raise TypeError(f"state must be a PolicyState; got {type(state).__name__}.")
    if state.schema_version > SCHEMA_VERSION:
        raise ValueError(
            f"state schema_version {state.schema_version} is newer than this library "
            f"supports ({SCHEMA_VERSION}); upgrade banditops."
        )
    spec = CATALOG.get(state.policy)
    target = spec.target if spec is not None else WRAPPERS.get(state.policy)
    if target is None:
        raise ValueError(f"state names an unknown policy {state.policy!r}.")
    check_state_arrays(state)
    cls: Any = resolve_target(target)
    try:
        restored: Policy = cls.from_state(state)
    except (KeyError, IndexError, AttributeError, TypeError, OverflowError) as exc:
        # a state written by to_state never gets here: a hand-edited or truncated one
        # does, and one an older banditops wrote in a layout this one does not convert
        # (the hybrid policies' layout before their scoring blocks is converted on load)
        older = (
            " A missing array is also what a state saved by an older banditops in a layout "
            "this one no longer reads gives: retrain the version, or roll back to one this "
            "release loads."
            if isinstance(exc, KeyError)
            else ""
        )
        raise ValueError(
            f"state of policy {state.policy!r} is malformed ({type(exc).__name__}: {exc})." + older
        ) from exc
    return restored


def check_state_arrays(state: PolicyState) -> None:
    """``ValueError`` naming the first array of ``state`` that is not a real, finite
    numeric or string array: no state :meth:`Policy.to_state` writes holds NaN, ±inf or
    complex numbers, and a policy restored from one would decide on them."""
    if not isinstance(state.arrays, dict) or not isinstance(state.config, dict):
        raise ValueError("state arrays and config must be dicts.")
    for key, value in state.arrays.items():
        array = np.asarray(value)
        kind = array.dtype.kind
        if kind in "US":
            continue
        if kind not in "biuf":
            raise ValueError(
                f"state array {key!r} must be real numbers or strings; got dtype {array.dtype}."
            )
        if kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"state array {key!r} holds non-finite values.")


def catalog_policy(policy: Any) -> Any:
    """The catalog policy inside ``policy`` (through its wrappers: overlap, exposure cap,
    position bias…); ``policy`` itself when it is one. ``ValueError`` when none is."""
    inner = policy
    while inner is not None and getattr(inner, "name", None) not in CATALOG:
        inner = inner.__dict__.get("inner") if hasattr(inner, "__dict__") else None
    if inner is None:
        raise ValueError(f"{getattr(policy, 'name', policy)!r} wraps no catalog policy.")
    return inner


def input_widths(policy: Policy) -> tuple[int | None, int, int]:
    """``(dim_user, dim_arm, position_slots)`` a policy's decisions take, from its state's
    configuration (wrappers unwrapped): ``dim_user`` None for any context, ``dim_arm`` the
    width of a candidate's features (0: not used, any width accepted), ``position_slots``
    > 0 for a position bias (its head sees ``dim_arm + position_slots``)."""
    config: dict[str, Any] = policy.to_state().config
    slots = 0
    while "inner" in config:
        slots = max(slots, int(config.get("position_slots", 0) or 0))
        config = config["inner"]["config"]
    dim_user = config.get("dim_user")
    shared = config.get("shared", True)
    dim_arm = int(config.get("dim_arm", 0) or 0) if shared else 0
    return None if dim_user is None else int(dim_user), dim_arm - slots, slots
