"""Request bodies parsed by pydantic-core's JSON parser, with the ``json`` module's language.

FastAPI reads a JSON body with ``json.loads`` on the event loop. For a large decision
request (1,000 candidates of 16 features, 164 kB) that takes 3.4 ms, about four times as
long as pydantic-core's parser (``pydantic_core.from_json``) on this machine, and it is
loop time every other request waits behind (see the hostile case of
``benchmarks.reliability``).

The two parsers agree, bit for bit, on every document both accept (the numbers are
correctly rounded by both; ``tests/test_json_body.py`` compares them). Where
pydantic-core refuses a document (a lone surrogate escape, an integer of more than 4,300
digits, nesting past its depth limit, invalid UTF-8, a byte-order mark), the body is
parsed again by ``json.loads``: what is accepted, and every error a client sees, is
exactly what it was with ``json`` alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
from fastapi import Request, Response
from fastapi.routing import APIRoute


def parse_json(body: bytes) -> Any:
    """``json.loads(body)``, computed by pydantic-core when it accepts ``body``."""
    try:
        return pydantic_core.from_json(body, allow_inf_nan=True)
    except ValueError:
        return json.loads(body)  # json's own result or error, exactly


class JSONBodyRequest(Request):
    """A request whose :meth:`json` is :func:`parse_json`."""

    @property
    def parsed(self) -> Any:
        """The body as :meth:`json` returned it, None before (or for a non-JSON body)."""
        return getattr(self, "_json", None)

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JSONBodyRoute(APIRoute):
    """A route whose handler reads JSON bodies with :class:`JSONBodyRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(JSONBodyRequest(request.scope, request.receive))

        return route_handler
