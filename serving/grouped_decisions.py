"""Grouped decisions (``POST /v1/decisions/grouped``): one variant per group.

Each group is decided on its own variants (:func:`bandit_core.grouped.select_grouped`'s
rule, through the service's model or fallback) and logged as a decision of its own, with
its own event id and propensity and the request's ``request_id`` and its ``group_id``, so
rewards, replay and off-policy evaluation treat it like any other decision. The request
has one work budget and one deadline (``decision_deadline_s``): the groups not chosen by
then are chosen by the fallback, each saying so. The request's
decisions are committed together (:meth:`DecisionService.log_decisions`): all or none.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from eventstore.records import DecisionRow
from serving.budget import check_budget
from serving.decide import decision_row
from serving.inputs import (
    DecisionInput,
    InputError,
    Loc,
    check_count,
    check_signature,
)
from serving.schemas import GroupChoice, GroupedDecisionRequest, GroupedDecisionResponse
from serving.service import DecisionService

T = TypeVar("T")


def _in_group(prefix: Loc, check: Callable[..., T], *args: Any) -> T:
    """Run a candidate check; its errors about ``candidates`` point into the group."""
    try:
        return check(*args)
    except InputError as exc:
        if exc.loc[:2] == ("body", "candidates"):
            raise InputError((*prefix, *exc.loc[2:]), exc.message, exc.value) from None
        raise


async def decide_grouped(
    service: DecisionService, req: GroupedDecisionRequest
) -> GroupedDecisionResponse:
    """Choose and log one variant per group.

    Raises
    ------
    InputError
        Too many groups, a repeated group id, or bad variants (422, naming the group).
    NotReadyError, StoreUnavailableError
        As for single decisions (503).
    """
    settings = service.settings
    check_count(len(req.groups), settings.max_groups, ("body", "groups"), "groups")
    user_hash, traffic, model = service.route(req.user_id)
    context = service.context_of(req.context)
    inputs: list[DecisionInput] = []
    seen: set[str] = set()
    for g, group in enumerate(req.groups):
        where: Loc = ("body", "groups", g, "variants")
        if group.id in seen:
            raise InputError(("body", "groups", g, "id"), f"group id {group.id!r} appears twice.")
        seen.add(group.id)
        inp = DecisionInput(
            context, _in_group(where, service.candidates_of, group.variants), user_hash
        )
        signature = service.signature_of(model)
        if signature is not None:
            _in_group(where, check_signature, inp, signature)
        inputs.append(inp)
    # the budget covers the whole request: the groups are chosen one after the other
    costs = [
        _in_group(("body", "groups"), service.check_budget, model, inp, None) for inp in inputs
    ]
    total = sum(costs)
    check_budget(total, settings.max_work_units)
    request_id = uuid.uuid4().hex
    rows: list[DecisionRow] = []
    # one deadline for the request: each group's own let 100 groups take 100 deadlines
    deadline = asyncio.get_running_loop().time() + settings.decision_deadline_s
    shown: set[str] = set()
    for group, inp in zip(req.groups, inputs, strict=True):
        # the request's cost, not the group's, says whether the loop may choose: groups
        # each within inline_work_units add up to a loop stall
        choice, fallback = await service.choose_for(model, inp, None, total, deadline)
        arm_id = choice.decision.arm_id
        rows.append(
            decision_row(
                inp,
                choice,
                fallback=fallback,
                model_version=None if model is None else model.version,
                user_hash=user_hash,
                traffic=traffic,
                # one impression of an item per request, however many groups show it: one
                # anonymous request of 100 groups naming a catalog item made 100, and took
                # its cold-start floor (security helper, stop 55)
                count_impressions=service.catalog.has_items and arm_id not in shown,
                request_id=request_id,
                group_id=group.id,
            )
        )
        shown.add(arm_id)
    await service.log_decisions(rows)  # in one transaction: all the groups or none
    by_model = [r for r in rows if not r.fallback]
    return GroupedDecisionResponse(
        request_id=request_id,
        groups=[
            GroupChoice(
                group_id=str(r.group_id),
                event_id=r.event_id,
                arm_id=r.arm_id,
                propensity=r.propensity,
                propensity_se=r.propensity_se,
                explored=r.explored,
                policy=r.policy,
                fallback=r.fallback,
            )
            for r in rows
        ],
        # each group says who chose it; the request, whether the model chose any (it
        # said "fallback" with the first group's policy, and no version when any fell back)
        model_version=by_model[0].model_version if by_model else None,
        policy=(by_model or rows)[0].policy,
        fallback=len(by_model) < len(rows),
        traffic=traffic,
    )
