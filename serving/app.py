"""The FastAPI application factory.

``create_app(settings)`` wires the routes, the middleware and a lifespan that opens the
event store (which must be at the current migration: ``banditops db upgrade``), starts
the writer, the model loader and the snapshot timer, and on shutdown snapshots the heads
and commits everything pending. ``uvicorn --factory serving.app:create_app`` works too
(settings from ``BANDITOPS_*``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from eventstore.leases import Lease
from eventstore.text import redact_logged_credentials
from serving.catalog.routes import router as catalog_router
from serving.catalog.store import PrunedError
from serving.errors import body_error, input_error, store_error, validation_error, with_status
from serving.http_protocol import configure as configure_http
from serving.inputs import InputError
from serving.metrics import ServiceMetrics
from serving.middleware import BodyLimitMiddleware, MetricsMiddleware
from serving.routes import router
from serving.service import (
    DecisionService,
    NotFoundError,
    NotReadyError,
    StoreUnavailableError,
)
from serving.settings import Settings
from serving.store.reads import StoreDeadlineError

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, lease: Lease | None = None) -> FastAPI:
    """A decision-service app for ``settings`` (default: from the environment), with the
    store lease ``banditops serve`` took for it (default: taken at start)."""
    settings = settings or Settings()
    settings.check_auth()  # fail closed: no token and auth not disabled explicitly
    configure_http(settings)  # the head limits of the connections of this process
    redact_logged_credentials()  # an unreachable registry's error names its URL
    metrics = ServiceMetrics(settings.store_deadline_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.api_token is None:
            log.warning(
                "AUTH DISABLED (BANDITOPS_AUTH_DISABLED): decisions, rewards and catalog "
                "writes are open to anyone who can reach this service; admin endpoints are off."
            )
        elif settings.public_decisions:
            log.warning(
                "PUBLIC DECISIONS (BANDITOPS_PUBLIC_DECISIONS): anyone who can reach this "
                "service may log decisions, which the retrain and the rollout's test count."
            )
        service = DecisionService.from_settings(settings, metrics, lease=lease)
        app.state.service = service
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="banditops decision service",
        version="0.1.0",
        description="Contextual-bandit decisions with exact propensities, logged before "
        "they are answered; rewards update the deciding model at once.",
        lifespan=lifespan,
        # a trailing slash is a 404, not a 307 to a Location built from the client's own
        # Host header (security helper, stop 55)
        redirect_slashes=False,
    )
    app.include_router(router)
    app.include_router(catalog_router)
    # Starlette types every handler as taking `Exception`; these take the class they handle
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, body_error)  # type: ignore[arg-type]
    app.add_exception_handler(InputError, input_error)  # type: ignore[arg-type]
    app.add_exception_handler(NotFoundError, with_status(404))
    app.add_exception_handler(PrunedError, with_status(410))
    app.add_exception_handler(NotReadyError, with_status(503))
    app.add_exception_handler(StoreUnavailableError, with_status(503))
    app.add_exception_handler(StoreDeadlineError, with_status(503))
    app.add_exception_handler(DBAPIError, store_error)
    app.add_exception_handler(PoolTimeoutError, store_error)
    # the last added is the outer layer: the metrics see the body limit's 413 and 408
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.http_body_timeout_s,
        large_bytes=settings.http_large_body_bytes,
        large_concurrency=settings.http_large_body_concurrency,
    )
    endpoints = {getattr(r, "path", "") for r in app.routes}
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=endpoints)
    return app
