"""uvicorn's httptools protocol with the two limits of a request's head it lacks.

uvicorn bounds the request line and headers only in its h11 protocol
(``h11_max_incomplete_event_size``); with httptools, which ``uvicorn[standard]`` installs
and uvicorn then picks, one client sending an endless header grew the service by 800 MB
on four connections, and an 8 MB header was answered 200. Nor does either protocol time
out a head that never completes: a connection that sends nothing, half a header, or
empty lines between requests stays open for good and counts against
``http_limit_concurrency`` (1,000 such connections made every request a 503).
:class:`GuardedHttpToolsProtocol` adds both:

* a head (request line and headers) larger than ``http_max_incomplete_event_bytes`` is
  answered 431 and the connection closed. The parsed line and headers are counted
  exactly; a head still arriving is counted by the reads it fills, from the read after
  the one it began in, so a head that never ends is refused within one read (asyncio
  reads at most 256 KiB) past the limit;
* a head not complete ``http_head_timeout_s`` after the connection opened, or after the
  first byte that followed the previous request, is answered 408 and the connection
  closed.

A refusal never overtakes a response still being written for an earlier request of the
connection (HTTP pipelining): the connection then closes after that response, and the
refused request gets none. The limits come from the settings the app was created with
(:func:`configure`, called by :func:`serving.app.create_app` in every worker process).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.settings import Settings

#: ``uvicorn.run(http=...)``: importable by name, so each worker process loads it.
PROTOCOL = "serving.http_protocol:GuardedHttpToolsProtocol"
#: Bytes a header line takes besides its name and value (``": "`` and CRLF).
HEADER_LINE_BYTES = 4

_DEFAULTS = Settings.model_fields
_limits = {
    "head_bytes": int(_DEFAULTS["http_max_incomplete_event_bytes"].default),
    "head_timeout_s": float(_DEFAULTS["http_head_timeout_s"].default),
}


def configure(settings: Settings) -> None:
    """Use ``settings``' head limits for the connections this process accepts from now."""
    _limits["head_bytes"] = settings.http_max_incomplete_event_bytes
    _limits["head_timeout_s"] = settings.http_head_timeout_s


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the parsed head passed the limit."""


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
        self._awaiting_head = True  # the next bytes are (or precede) a request's head
        self._head_parsed = 0  # the request line and the headers parsed so far, exactly
        self._head_reads = 0  # reads wholly inside the head
        self._head_seen = False  # the awaited head has begun in an earlier read
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusing = False

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that sends nothing is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, but a head over the limit (raised from a callback) is a 431."""
        if self._refusing:
            return
        self._unset_keepalive_if_required()
        began_before = self._awaiting_head and self._head_seen
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._too_large()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if not self._awaiting_head or self.transport.is_closing():
            return
        self._arm_head_timer()  # any byte after a request starts the next head's clock
        if began_before:
            self._head_reads += len(data)
        self._head_seen = True
        if max(self._head_reads, self._head_parsed) > self._head_limit:
            self._too_large()

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_parsed = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + HEADER_LINE_BYTES)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head = True  # what follows is the next request's head
        self._head_parsed = self._head_reads = 0
        self._head_seen = False

    # ------------------------------------------------------------------ limits
    def _count(self, n: int) -> None:
        self._head_parsed += n
        if self._head_parsed > self._head_limit:
            raise _HeadTooLarge

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._awaiting_head and not self.transport.is_closing():
            self._refuse(
                408,
                "Request Timeout",
                f"The request line and headers did not arrive within {self._head_timeout_s:g} s.",
            )

    def _too_large(self) -> None:
        self._refuse(
            431,
            "Request Header Fields Too Large",
            f"The request line and headers exceed {self._head_limit} bytes.",
        )

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self.logger.info("%s: %s", reason, message)
        self._refusing = True
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # an earlier request's response is on its way: it goes first, then the
            # connection closes (a refusal written now would read as its answer)
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.transport.write(_refusal(status, reason, message))
        self.transport.close()
