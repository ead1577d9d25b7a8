"""HTTP endpoints (thin: validation by the schemas, work by the service)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from eventstore.contract import DECISION_PATH, GROUPED_DECISION_PATH, PRODUCTION, Traffic
from serving.grouped_decisions import decide_grouped
from serving.json_body import JSONBodyRequest, JSONBodyRoute
from serving.schemas import (
    DecisionRequest,
    DecisionResponse,
    GroupedDecisionRequest,
    GroupedDecisionResponse,
    ModelInfo,
    RewardRequest,
    RewardResponse,
)
from serving.service import LEASE_LOST_REASON, DecisionService

router = APIRouter(route_class=JSONBodyRoute)
_bearer = HTTPBearer(
    auto_error=False,
    description="BANDITOPS_API_TOKEN: rewards, catalog writes and admin (admin always).",
)

# the `responses=` mapping of a FastAPI route (status code → OpenAPI response object)
OpenAPIResponses = dict[int | str, dict[str, Any]]
_UNAVAILABLE: OpenAPIResponses = {
    503: {"description": "Not ready, or the event store is unavailable."}
}
_UNAUTHORIZED: OpenAPIResponses = {401: {"description": "Missing or wrong bearer token."}}


def service_of(request: Request) -> DecisionService:
    service: DecisionService = request.app.state.service
    return service


# async: a plain-def dependency would run in the thread pool on every request
async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the configured bearer token is presented; open only when the service
    runs with ``auth_disabled`` and no token (it refuses to start otherwise)."""
    token = service_of(request).settings.api_token
    if token is None:
        return
    _check(token.get_secret_value(), credentials)


async def require_decision_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The decision endpoints: as :func:`require_token`, unless ``public_decisions``."""
    if not service_of(request).settings.public_decisions:
        await require_token(request, credentials)


async def require_admin_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """``/v1/admin/*``: the token, always (403 when the service has none)."""
    token = service_of(request).settings.api_token
    if token is None:
        raise HTTPException(
            status_code=403,
            detail="admin endpoints need a bearer token; this service has none "
            "(BANDITOPS_API_TOKEN is unset).",
        )
    _check(token.get_secret_value(), credentials)


def _check(token: str, credentials: HTTPAuthorizationCredentials | None) -> None:
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode("utf-8", "backslashreplace"), token.encode()):
        raise HTTPException(
            status_code=401,
            detail="a valid bearer token is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )


Authorized = [Depends(require_token)]
AdminOnly = [Depends(require_admin_token)]
_ADMIN = {**_UNAUTHORIZED, 403: {"description": "The service has no token: admin is off."}}


async def budget_before_validation(request: Request) -> None:
    """The request budget from the parsed body's lengths, before FastAPI validates it
    (dependencies are solved first): an over-budget slate costs its parse only."""
    if isinstance(request, JSONBodyRequest) and request.parsed is not None:
        service_of(request).check_budget_early(request.parsed)


async def grouped_budget_before_validation(request: Request) -> None:
    """The same for a grouped decision, its groups' costs summed."""
    if isinstance(request, JSONBodyRequest) and request.parsed is not None:
        service_of(request).check_budget_early(request.parsed, grouped=True)


@router.post(
    DECISION_PATH,
    dependencies=[Depends(require_decision_token), Depends(budget_before_validation)],
    responses={**_UNAUTHORIZED, **_UNAVAILABLE},
    tags=["decisions"],
)
async def post_decision(body: DecisionRequest, request: Request) -> DecisionResponse:
    """Choose an arm (or a ranked slate) and log the decision with its propensity.

    Answered only once the decision is committed to the event store.
    """
    return await service_of(request).decide(body)


@router.post(
    GROUPED_DECISION_PATH,
    dependencies=[Depends(require_decision_token), Depends(grouped_budget_before_validation)],
    responses={**_UNAUTHORIZED, **_UNAVAILABLE},
    tags=["decisions"],
)
async def post_grouped_decision(
    body: GroupedDecisionRequest, request: Request
) -> GroupedDecisionResponse:
    """Choose one variant per group (e.g. one artwork per title); each group's choice is
    logged as a decision of its own, with its own event id and propensity."""
    return await decide_grouped(service_of(request), body)


@router.post(
    "/v1/rewards",
    dependencies=Authorized,
    responses={**_UNAUTHORIZED, 404: {"description": "Unknown event id."}, **_UNAVAILABLE},
    tags=["decisions"],
)
async def post_reward(body: RewardRequest, request: Request) -> RewardResponse:
    """Log the reward of a decision and update the deciding model's head at once.

    A repeated reward for an event is stored and never applied twice.
    """
    return await service_of(request).reward(body)


@router.get("/v1/model", tags=["models"])
async def get_model(request: Request) -> ModelInfo:
    """The served versions, their policies and head statistics."""
    return service_of(request).model_info()


@router.post("/v1/admin/poll", dependencies=AdminOnly, responses=_ADMIN, tags=["admin"])
async def admin_poll(request: Request) -> ModelInfo:
    """Poll the model source now (instead of waiting for the interval)."""
    return await service_of(request).poll_now()


@router.post("/v1/admin/snapshot", dependencies=AdminOnly, responses=_ADMIN, tags=["admin"])
async def admin_snapshot(request: Request) -> dict[str, list[int]]:
    """Snapshot every head with rewards since its last snapshot."""
    return {"snapshot_ids": await service_of(request).snapshot_now()}


@router.get(
    "/v1/admin/state",
    dependencies=AdminOnly,
    responses={**_ADMIN, 404: {"description": "No model serves that role."}},
    response_class=Response,
    tags=["admin"],
)
async def admin_state(request: Request, role: Traffic = PRODUCTION) -> Response:
    """The live policy state of a role (``bandit_core.save_policy`` ``.npz`` bytes)."""
    parts = await service_of(request).state_parts(role)

    async def body() -> AsyncIterator[bytes]:
        for part in parts:  # never one buffer of the whole state (a large head: 60 MB)
            yield part

    return StreamingResponse(
        body(),
        media_type="application/octet-stream",
        headers={"Content-Length": str(sum(len(p) for p in parts))},
    )


@router.get(
    "/healthz",
    responses={
        503: {
            "description": "This process lost its lease on the event store to another "
            "serving process for good (lease_lost): only a restart serves again."
        }
    },
    tags=["ops"],
)
async def healthz(request: Request, response: Response) -> dict[str, str]:
    """200 while the process is up and can serve again without a restart.

    503 ``lease_lost`` (with a one-line ``reason``) once it lost its lease on the event
    store for good (:mod:`eventstore.leases`): it takes no more events until it restarts,
    and ``/readyz`` alone would keep it out of the load balancer for ever. A failing
    liveness probe is what Kubernetes restarts a container for, paced by its back-off,
    and the process stays up meanwhile so that its ``/metrics``
    (``banditops_store_lease_lost``) and log can be read; exiting by itself instead
    would cut the requests under way and restart at once, in a tight loop where the other
    process still holds the lease. Every other trouble (a store outage, a stall) passes
    by itself and leaves this 200.
    """
    if service_of(request).lease.lost:
        response.status_code = 503
        return {"status": "lease_lost", "reason": LEASE_LOST_REASON}
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "No model or fallback ready yet, or the event store is "
            "unreachable and the local journal cannot take more events, or a write has "
            "been under way longer than the commit deadline (stalled), or this process "
            "lost its lease on the store to another serving process (lease_lost)."
        }
    },
    tags=["ops"],
)
async def readyz(request: Request, response: Response) -> dict[str, object]:
    """200 once a model or the fallback is ready to serve, 503 before.

    While the event store is unreachable the status is ``degraded`` and the code stays
    200: decisions and rewards are still answered (acknowledged once fsynced in the
    local journal), so a load balancer should keep sending traffic; alert on
    ``banditops_store_degraded`` instead. 503 (``unavailable``) when the journal cannot
    take more events either, and 503 (``stalled``) while a write has been under way longer
    than ``store_deadline_s``: a store that stopped answering in the middle of a
    statement raises no error, so nothing turns to the journal, and events are refused.
    """
    service = service_of(request)
    if not service.ready:
        response.status_code = 503
        return {"status": "starting"}
    if service.lease.lost:  # another serving process took the store over: no events here
        response.status_code = 503
        return {"status": "lease_lost"}
    fallback = service.model_info().fallback_active
    store = service.store_status()
    if not store["accepting"]:
        response.status_code = 503
        status = "stalled" if store["stalled"] else "unavailable"
        return {"status": status, "fallback_active": fallback, **store}
    if store["degraded"]:
        return {"status": "degraded", "fallback_active": fallback, **store}
    return {"status": "ready", "fallback_active": fallback}


@router.get("/metrics", tags=["ops"])
async def metrics(request: Request) -> Response:
    """Prometheus exposition."""
    body, content_type = service_of(request).metrics.render()
    return Response(content=body, media_type=content_type)
