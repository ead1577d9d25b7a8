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
parsed again by ``json.loads``: what is accepted, and every syntax error a client sees,
is what it was with ``json`` alone, with one exception: a document nested deeper than
:data:`MAX_DEPTH` levels is refused by both paths. No request of the API nests past 5;
``json`` alone took a body of ~1 kB nested 500 levels deep, whose echo in the 422 then
recursed past Python's limit (a 500 and a traceback per request, stop 53). The errors
``json`` raises outside its syntax (past Python's recursion limit, an integer of more than
4,300 digits, bytes that are not UTF-8) are :class:`BodyError`, whose message says which
limit: FastAPI answered them "There was an error parsing the body".
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

#: how many levels of arrays and objects a body may nest (pydantic-core's own limit; it
#: reads arrays one level deeper)
MAX_DEPTH = 200


class BodyError(ValueError):
    """A body that is not JSON the service reads, for a reason outside JSON's syntax."""


def parse_json(body: bytes) -> Any:
    """``json.loads(body)``, computed by pydantic-core when it accepts ``body``.

    Raises
    ------
    json.JSONDecodeError
        ``json``'s syntax error, exactly.
    BodyError
        Nested deeper than :data:`MAX_DEPTH`; an integer past Python's 4,300 digits;
        not UTF-8 (nor UTF-16/32 with its byte-order mark, which ``json`` reads).
    """
    try:
        return pydantic_core.from_json(body, allow_inf_nan=True)
    except ValueError as refused:
        if str(refused).startswith("recursion limit exceeded"):
            raise BodyError(_too_deep()) from None
    try:
        document = json.loads(body)  # json's own result or syntax error
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise BodyError(_too_deep()) from None
    except UnicodeDecodeError as e:
        raise BodyError(
            f"the body is not {e.encoding.upper()}: byte {e.object[e.start]:#04x} at offset "
            f"{e.start} ({e.reason})."
        ) from None
    except ValueError as e:
        if "integer string conversion" not in str(e):
            raise
        raise BodyError(  # int(): json reads integers of any length, Python converts fewer
            f"the body holds an integer of more than {sys.get_int_max_str_digits()} digits."
        ) from None
    if _deeper_than(document, MAX_DEPTH):
        raise BodyError(_too_deep())
    return document


def _too_deep() -> str:
    return f"the body nests arrays and objects deeper than {MAX_DEPTH} levels."


def _deeper_than(document: Any, limit: int) -> bool:
    """Whether ``document`` nests more than ``limit`` arrays and objects, without
    recursion (it is only asked of the bodies pydantic-core refused)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in value)
    return False


class JSONBodyRequest(Request):
    """A request whose :meth:`json` is :func:`parse_json`."""

    @property
    def parsed(self) -> Any:
        """The body as :meth:`json` returned it, None before (or for a non-JSON body)."""
        return getattr(self, "_json", None)

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = parse_json(await self.body())
            except BodyError as e:  # re-raised by FastAPI as it is: a 422 naming why
                raise HTTPException(status_code=400, detail=str(e)) from None
        return self._json


class JSONBodyRoute(APIRoute):
    """A route whose handler reads JSON bodies with :class:`JSONBodyRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(JSONBodyRequest(request.scope, request.receive))

        return route_handler
