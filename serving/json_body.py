"""Request bodies parsed by pydantic-core's JSON parser (jiter), with ``json``'s language.

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

A key named twice in one object (``{"reward": 1, "reward": 0}``) is refused
(:class:`DuplicateKeyError`, naming the key's path): both parsers kept the last value, so
a client's mistake (or a proxy's rewrite) silently changed what was logged. The parser is
``jiter``, pydantic-core's own, as a package whose ``from_json`` can refuse a duplicate
key as it parses (``catch_duplicate_keys``; pydantic-core's does not offer it): a body
costs one parse, as before (``json``'s ``object_pairs_hook`` would have cost the 3.4 ms).
A body it refuses for a duplicate is parsed again by ``json``, with a hook that finds the
key's path.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import jiter
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

#: how many levels of arrays and objects a body may nest (pydantic-core's own limit; it
#: reads arrays one level deeper)
MAX_DEPTH = 200


class BodyError(ValueError):
    """A body that is not JSON the service reads, for a reason outside JSON's syntax."""


class DuplicateKeyError(BodyError):
    """An object of the body names a key twice; ``path`` is the key's (keys and indexes
    from the body's top, as a 422's ``loc`` after ``"body"``)."""

    def __init__(self, path: tuple[str | int, ...]) -> None:
        super().__init__(
            "this key appears more than once in its object: a JSON object must name each "
            "key once (which of the values was meant cannot be told)."
        )
        self.path = path


class _Duplicated(dict[str, Any]):
    """An object of a body parsed by ``json`` in which ``key`` appeared more than once."""

    key: str


class _Objects:
    """``json``'s ``object_pairs_hook``: the objects ``json`` makes, one where a key
    appears twice marked (:class:`_Duplicated`) and counted in ``duplicated``."""

    def __init__(self) -> None:
        self.duplicated = 0

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        made = dict(pairs)
        if len(made) == len(pairs):
            return made
        self.duplicated += 1
        marked = _Duplicated(made)
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                marked.key = key
                break
            seen.add(key)
        return marked


def _loads(body: bytes) -> tuple[Any, int]:
    """``json.loads(body)`` and how many of its objects name a key twice."""
    objects = _Objects()
    document = json.loads(body, object_pairs_hook=objects)
    return document, objects.duplicated


def _duplicate_path(document: Any) -> tuple[str | int, ...] | None:
    """The path of the first key (in the body's order) named twice in one object of a
    document parsed with :class:`_Objects`; None when there is none. No recursion."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _Duplicated):
            return (*path, value.key)
        if isinstance(value, dict):
            children: list[tuple[str | int, Any]] = list(value.items())
        elif isinstance(value, list):
            children = list(enumerate(value))
        else:
            continue
        stack.extend((child, (*path, at)) for at, child in reversed(children))
    return None


def parse_json(body: bytes) -> Any:
    """``json.loads(body)``, computed by jiter (pydantic-core's parser) when it accepts
    ``body``.

    Raises
    ------
    json.JSONDecodeError
        ``json``'s syntax error, exactly.
    BodyError
        Nested deeper than :data:`MAX_DEPTH`; an integer past Python's 4,300 digits;
        not UTF-8 (nor UTF-16/32 with its byte-order mark, which ``json`` reads).
    DuplicateKeyError
        An object names a key twice (where both parsers would keep the last).
    """
    try:
        return jiter.from_json(body, allow_inf_nan=True, catch_duplicate_keys=True)
    except ValueError as refused:  # json says why, and names a duplicate key's path
        if str(refused).startswith("recursion limit exceeded"):
            raise BodyError(_too_deep()) from None
    try:
        document, duplicated = _loads(body)  # json's own result or syntax error
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
    if duplicated:
        raise DuplicateKeyError(_duplicate_path(document) or ())
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
            except DuplicateKeyError as e:  # re-raised by FastAPI as it is: a 422 naming it
                item = {"type": "duplicate_key", "loc": ["body", *e.path], "msg": str(e)}
                raise HTTPException(status_code=422, detail=[item]) from None
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
