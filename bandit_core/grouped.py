"""Grouped selection: one variant per group (e.g. one artwork per title).

A grouped request offers G groups, each with its own variants (title → artwork variants).
The policy decides every group on its own candidate set, so group g's chosen variant has
the policy's own propensity ``π(v | x, V_g)`` (exact or Monte Carlo, as for any decision)
and is logged, rewarded and evaluated as a decision of its own. The variants' features
are whatever the caller (or the catalog) gives: a shared model on
``[x_user ; x_variant ; x_user ⊗ x_variant]`` learns across groups, so a group added
today is scored from its variants' features at once; a per-arm model (one head per
variant id) learns every group separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandit_core._validation import as_float_vector, check_generator
from bandit_core.policies.arm_features import candidates_for
from bandit_core.slates import Selector
from bandit_core.types import Candidates, Decision


@dataclass(frozen=True)
class Group:
    """One group and its variants (at least one, distinct ids)."""

    id: str
    candidates: Candidates


@dataclass(frozen=True)
class GroupedDecision:
    """The variant chosen for every group, in request order."""

    group_ids: tuple[str, ...]
    decisions: tuple[Decision, ...]

    def __len__(self) -> int:
        return len(self.group_ids)

    @property
    def variant_ids(self) -> tuple[str, ...]:
        return tuple(d.arm_id for d in self.decisions)

    @property
    def propensities(self) -> tuple[float, ...]:
        return tuple(d.propensity for d in self.decisions)


def check_groups(groups: Any) -> tuple[Group, ...]:
    """Validate a sequence of :class:`Group` (or ``(id, Candidates)`` pairs).

    Raises
    ------
    ValueError
        No group, a repeated group id, or a group without variants.
    TypeError
        An entry that is neither a Group nor a pair.
    """
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise ValueError(f"groups must be a sequence of groups; got {type(groups).__name__}.")
    if len(groups) == 0:
        raise ValueError("groups must hold at least one group; got none.")
    out: list[Group] = []
    seen: set[str] = set()
    for i, entry in enumerate(groups):
        if isinstance(entry, Group):
            group = entry
        elif isinstance(entry, tuple) and len(entry) == 2:
            group = Group(str(entry[0]), entry[1])
        else:
            raise TypeError(
                f"groups[{i}] must be a Group or an (id, Candidates) pair; "
                f"got {type(entry).__name__}."
            )
        if not isinstance(group.candidates, Candidates):
            raise TypeError(
                f"groups[{i}].candidates must be a bandit_core.Candidates; "
                f"got {type(group.candidates).__name__}."
            )
        if group.id in seen:
            raise ValueError(f"group ids must be distinct; group {group.id!r} appears twice.")
        seen.add(group.id)
        out.append(group)
    return tuple(out)


def select_grouped(
    policy: Selector, context: Any, groups: Any, rng: np.random.Generator
) -> GroupedDecision:
    """Exactly one variant per group, each with its own propensity.

    Parameters
    ----------
    policy : Policy
    context : array-like of shape (dim_user,)
    groups : sequence of Group
        G groups; group g has ``K_g ≥ 1`` variants.
    rng : numpy Generator

    Returns
    -------
    GroupedDecision
        ``decisions[g].arm`` indexes group g's variants.
    """
    checked = check_groups(groups)
    x = as_float_vector("context", context)
    rng = check_generator(rng)
    decisions = tuple(policy.select(x, candidates_for(policy, g.candidates), rng) for g in checked)
    return GroupedDecision(tuple(g.id for g in checked), decisions)
