"""Error responses: every bad request is a 422 that names the field, never a 500.

FastAPI's default 422 handler echoes the offending input, and a ``NaN`` or ``Infinity``
there makes the JSON rendering itself fail (a 500); :func:`validation_error` renders
non-finite numbers as strings instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving.inputs import InputError

Handler = Callable[[Request, Any], Coroutine[Any, Any, JSONResponse]]


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its name (JSON-safe)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _summary(value: Any, limit: int = 200) -> Any:
    text = _finite(value)
    return text if len(str(text)) <= limit else str(text)[: limit - 3] + "..."


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = []
    for err in exc.errors():
        item = {"type": err.get("type"), "loc": list(err.get("loc", ())), "msg": err.get("msg")}
        if "input" in err:
            item["input"] = _summary(err["input"])
        detail.append(item)
    return JSONResponse(status_code=422, content={"detail": detail})


async def input_error(request: Request, exc: InputError) -> JSONResponse:
    item: dict[str, Any] = {"type": "value_error", "loc": list(exc.loc), "msg": exc.message}
    if exc.value is not None:
        item["input"] = _summary(exc.value)
    return JSONResponse(status_code=422, content={"detail": [item]})


def with_status(code: int) -> Handler:
    """A handler answering ``code`` with the exception's message."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=code, content={"detail": str(exc)})

    return handler
