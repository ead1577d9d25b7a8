"""uvicorn's httptools protocol with the two limits of a request's head it lacks.

uvicorn bounds the request line and headers only in its h11 protocol
(``h11_max_incomplete_event_size``); with httptools, which ``uvicorn[standard]`` installs
and uvicorn then picks, one client sending an endless header grew the service by 800 MB
on four connections, and an 8 MB header was answered 200. Nor does either protocol time
out a head that never completes: a connection that sends nothing, or half a header,
stays open for good and counts against ``http_limit_concurrency`` (1,000 such
connections made every request a 503). :class:`GuardedHttpToolsProtocol` adds both:

* a head (request line and headers) larger than ``http_max_incomplete_event_bytes`` is
  answered 431 and the connection closed;
* a head not complete ``http_head_timeout_s`` after the connection opened, or after its
  first byte arrived on a kept-alive connection, is answered 408 and the connection
  closed.

The bytes are counted per read: a read that ends inside a head counts whole, so the
bound is exceeded by at most one read (asyncio reads at most 256 KiB), never without
limit. The limits come from the settings the app was created with (:func:`configure`,
called by :func:`serving.app.create_app` in every worker process).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.settings import Settings

#: ``uvicorn.run(http=...)``: importable by name, so each worker process loads it.
PROTOCOL = "serving.http_protocol:GuardedHttpToolsProtocol"

_DEFAULTS = Settings.model_fields
_limits = {
    "head_bytes": int(_DEFAULTS["http_max_incomplete_event_bytes"].default),
    "head_timeout_s": float(_DEFAULTS["http_head_timeout_s"].default),
}


def configure(settings: Settings) -> None:
    """Use ``settings``' head limits for the connections this process accepts from now."""
    _limits["head_bytes"] = settings.http_max_incomplete_event_bytes
    _limits["head_timeout_s"] = settings.http_head_timeout_s


def _refusal(status: int, reason: str, message: str) -> bytes:
    body = message.encode("ascii")
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`~uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` with a bound on
    the bytes and the time of each request's head (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_limit = _limits["head_bytes"]
        self._head_timeout_s = _limits["head_timeout_s"]
        self._in_head = True  # awaiting a request's head
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that sends nothing is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._arm_head_timer()
        self._head_bytes += len(data)
        if self._head_bytes > self._head_limit:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                f"The request line and headers exceed {self._head_limit} bytes.",
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined head waits while a response is written
            return
        if self._in_head and not self.transport.is_closing():
            self._refuse(
                408,
                "Request Timeout",
                f"The request line and headers did not arrive within {self._head_timeout_s:g} s.",
            )

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self.logger.info("%s: %s", reason, message)
        self._cancel_head_timer()
        self.transport.write(_refusal(status, reason, message))
        self.transport.close()
