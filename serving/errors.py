"""Error responses: every bad request is a 422 that names the field, never a 500.

FastAPI's default 422 handler echoes the offending input, and a ``NaN`` or ``Infinity``
there makes the JSON rendering itself fail (a 500); :func:`validation_error` renders
non-finite numbers as strings instead.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving.inputs import InputError

Handler = Callable[[Request, Any], Coroutine[Any, Any, JSONResponse]]

log = logging.getLogger(__name__)


def _text(value: str) -> str:
    """``value`` as encodable text: lone surrogates become ``\\udXXX`` escapes."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


#: how deep an echoed input is shown; deeper arrays and objects are shown as "..."
_ECHO_DEPTH = 8
#: how many elements of an array or object are echoed (the echo is cut at 200
#: characters anyway; walking a 21,500-item list to cut it took 0.2 s of the loop)
_ECHO_WIDTH = 16


def _finite(value: Any, depth: int = _ECHO_DEPTH) -> Any:
    """``value`` with every non-finite float replaced by its name and every string made
    encodable (JSON-safe: the handlers echo input that failed validation), cut at
    ``depth`` levels (a body nested 500 deep recursed past Python's limit here: a 500)
    and at :data:`_ECHO_WIDTH` elements an array or object."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict | list | tuple) and depth <= 0:
        return "..."
    if isinstance(value, dict):
        shown = dict(itertools.islice(value.items(), _ECHO_WIDTH))
        out = {_text(str(k)): _finite(v, depth - 1) for k, v in shown.items()}
        if len(value) > _ECHO_WIDTH:
            out["..."] = f"{len(value) - _ECHO_WIDTH} more"
        return out
    if isinstance(value, list | tuple):
        items = [_finite(v, depth - 1) for v in itertools.islice(value, _ECHO_WIDTH)]
        return [*items, "..."] if len(value) > _ECHO_WIDTH else items
    if isinstance(value, int | float | bool) or value is None:
        return value
    return _text(str(value))


def _summary(value: Any, limit: int = 200) -> Any:
    text = _finite(value)
    return text if len(str(text)) <= limit else str(text)[: limit - 3] + "..."


#: The most validation errors one 422 lists (the rest are counted in a last entry): each
#: was an entry of the answer, 28–77 MB for a 1 MiB body of bad elements (audit, stop 55).
MAX_ERRORS_SHOWN = 20


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = []
    errors = exc.errors()
    for err in errors[:MAX_ERRORS_SHOWN]:
        msg = _summary(err.get("msg"), 1000)
        reason = (err.get("ctx") or {}).get("error")
        if err.get("type") == "json_invalid" and isinstance(reason, str):
            msg = f"{msg}: {_summary(reason, 200)}"  # FastAPI keeps json's reason there
        if tuple(err.get("loc", ())) == ("body",):
            msg += _content_type_hint(request)
        item = {
            "type": err.get("type"),
            # a 100 KB key of a named context is named, not echoed whole
            "loc": [_summary(part) for part in err.get("loc", ())],
            "msg": msg,
        }
        if "input" in err:
            item["input"] = _summary(err["input"])
        detail.append(item)
    if len(errors) > MAX_ERRORS_SHOWN:
        more = len(errors) - MAX_ERRORS_SHOWN
        detail.append({"type": "too_many_errors", "loc": ["body"], "msg": f"and {more} more."})
    return JSONResponse(status_code=422, content={"detail": detail})


def _content_type_hint(request: Request) -> str:
    """Why a whole body was not an object when it was not sent as JSON: ``curl -d`` sends
    ``application/x-www-form-urlencoded`` unless told, and the answer named only "a valid
    dictionary" (README helper, stop 46)."""
    sent = request.headers.get("content-type", "")
    if sent.split(";")[0].strip().lower() == "application/json":
        return ""
    shown = _text(sent[:100]) or "no content-type"
    return f" (the body was sent as {shown}: send JSON with content-type: application/json)"


async def input_error(request: Request, exc: InputError) -> JSONResponse:
    item: dict[str, Any] = {
        "type": "value_error",
        "loc": [_summary(part) for part in exc.loc],
        "msg": _summary(exc.message, 1000),
    }
    if exc.value is not None:
        item["input"] = _summary(exc.value)
    return JSONResponse(status_code=422, content={"detail": [item]})


async def body_error(request: Request, exc: HTTPException) -> JSONResponse:
    """422, not 400, for a body that cannot be parsed (the API promises 422 for every
    bad request); other HTTP errors keep their code. A 422 raised with validation-error
    items (a duplicate key of the body) has their paths cut as every 422's are."""
    if exc.status_code == 400:
        detail = [{"type": "json_invalid", "loc": ["body"], "msg": _finite(str(exc.detail))}]
        return JSONResponse(status_code=422, content={"detail": detail})
    if exc.status_code == 422 and isinstance(exc.detail, list):
        items = [{**item, "loc": [_summary(part) for part in item["loc"]]} for item in exc.detail]
        return JSONResponse(status_code=422, content={"detail": _finite(items)})
    return JSONResponse(
        status_code=exc.status_code,
        content={"detail": _finite(exc.detail)},
        headers=getattr(exc, "headers", None),
    )


async def store_error(request: Request, exc: Exception) -> JSONResponse:
    """A database error that reached a route. The store out of reach (a read on a store
    that went away, no pooled connection free): 503, by its class only — the driver's
    message may quote other clients' parameters — and the message to the log; it was a
    500 (a catalog read during an outage, stall helper, stop 44). Any other database
    error is a fault of the service, not one a retry mends: 500, logged whole."""
    from serving.store.writer import is_outage

    name = type(exc).__name__
    if is_outage(exc):
        log.warning("event store unavailable on %s: %s", request.url.path, exc)
        return JSONResponse(
            status_code=503, content={"detail": f"the event store failed ({name}): retry later"}
        )
    log.error("event store error on %s", request.url.path, exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": f"internal error ({name})"})


def with_status(code: int) -> Handler:
    """A handler answering ``code`` with the exception's message."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=code, content={"detail": _text(str(exc))})

    return handler
