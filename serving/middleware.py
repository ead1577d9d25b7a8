"""ASGI middleware: request body size limit, and request metrics.

The metrics layer is the outer one (``serving.app``): it counts every answer, the body
limit's 413 and 408 included, and times each request from when its body was received
(the body limit marks that instant in the scope, :data:`BODY_RECEIVED`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.metrics import ServiceMetrics
from serving.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The scope key where :class:`BodyLimitMiddleware` puts the ``time.perf_counter()`` at
#: which it stopped waiting for the body (received whole, over the limit, or timed out).
BODY_RECEIVED = "banditops.body_received"


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answer 413 to a request body over ``max_bytes`` (declared or streamed), and 408 to
    one not received within ``timeout_s`` (a client trickling its body holds no worker
    for longer): the body is read here, then replayed to the app. Requests with a body
    over ``large_bytes`` are handled ``large_concurrency`` at a time."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_s: float = Settings.model_fields["http_body_timeout_s"].default,
        large_bytes: int | None = None,
        large_concurrency: int = Settings.model_fields["http_large_body_concurrency"].default,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.large_bytes = large_bytes
        self._large = asyncio.Semaphore(large_concurrency)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body is larger than {self.max_bytes} bytes."
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            scope[BODY_RECEIVED] = time.perf_counter()
            await _answer(send, 413, too_large)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        # one deadline for the whole body (a timer handle, not a task per receive)
        try:
            async with asyncio.timeout(self.timeout_s):
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        # the client left before its body ended: nobody to answer, and a
                        # prefix that parses was run as the whole request (a decision
                        # logged for no one, a reward its retry then found a duplicate;
                        # audit, stop 55)
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        break
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            scope[BODY_RECEIVED] = time.perf_counter()
            await _answer(send, 408, f"request body not received within {self.timeout_s:g} s.")
            return
        scope[BODY_RECEIVED] = time.perf_counter()
        if size > self.max_bytes:
            await _answer(send, 413, too_large)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        if self.large_bytes is not None and size > self.large_bytes:
            # large bodies take turns: parsing and validating one is event-loop work,
            # and while the others wait here (parked, not ready) small requests and
            # /healthz are never queued behind all of them
            async with self._large:
                await self.app(scope, replay, send)
            return
        await self.app(scope, replay, send)


#: The HTTP methods counted by name in ``banditops_requests_total``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Count requests by endpoint, method and status; time them by endpoint.

    Paths outside ``endpoints`` and methods outside :data:`METHODS` are counted as
    ``"other"`` (bounded label values: uvicorn's h11 parser passes any token as a method).

    It wraps :class:`BodyLimitMiddleware`, so the 413 and 408 answered there are counted
    (inside it, they never were, though the docs name this metric for them). A request is
    timed from when its body was received (:data:`BODY_RECEIVED`, else from its start):
    a client's upload, or a body that never came (408), is not the service's latency. A
    request whose client left before its body ended is answered by nobody and not
    counted.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, endpoints: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints
        # labelled children, looked up once (``labels`` validates and locks on each call)
        self._counts: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[str, Any] = {}

    def _observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        count = self._counts.get((endpoint, method, status))
        if count is None:
            count = self._counts[(endpoint, method, status)] = self.metrics.requests.labels(
                endpoint, method, str(status)
            )
        timer = self._timers.get(endpoint)
        if timer is None:
            timer = self._timers[endpoint] = self.metrics.latency.labels(endpoint)
        count.inc()
        timer.observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        answered = False

        async def capture(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = int(message["status"])
                answered = True
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except BaseException:
            self._finish(scope, status, started)  # the server's error layer answers 500
            raise
        if answered:
            self._finish(scope, status, started)

    def _finish(self, scope: Scope, status: int, started: float) -> None:
        # the route's template once routed (``/v1/items/{item_id}``: one label for every
        # item), else the path when it is one
        route = getattr(scope.get("route"), "path", None)
        path = route if route is not None else scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        method = scope.get("method", "")
        method = method if method in METHODS else "other"
        since = scope.get(BODY_RECEIVED, started)
        self._observe(endpoint, method, status, time.perf_counter() - since)
