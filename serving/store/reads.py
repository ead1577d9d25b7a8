"""Reads of the event store on a request's path, under the request's deadline.

A server that stops answering in the middle of a statement raises nothing (the kernel
still acknowledges its packets, and the server's own timeouts cannot fire while it is
stopped), so a read in a worker thread would hold its request for as long as that lasts:
a reward whose decision is not in memory, a catalog item. :func:`read_within` answers
instead once ``deadline_s`` has passed (the thread is left to finish on its own).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def call_within(deadline_s: float, name: str, call: Callable[[], R]) -> R:
    """From a thread that is not the event loop: ``call()`` in a daemon thread named
    ``name``, its result or exception; ``TimeoutError`` past ``deadline_s`` (the thread is
    left to finish on its own: nothing can interrupt a call that waits on a socket)."""
    done: concurrent.futures.Future[R] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(call())
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        return done.result(timeout=deadline_s)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"no answer within {deadline_s:g} s") from None


class StoreDeadlineError(TimeoutError):
    """A read of the event store did not finish within the request's deadline (503)."""


async def read_within(
    deadline_s: float, what: str, read: Callable[P, R], *args: P.args, **kwargs: P.kwargs
) -> R:
    """``read(*args, **kwargs)`` in a worker thread, or :class:`StoreDeadlineError` naming
    ``what`` past ``deadline_s`` seconds."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(read, *args, **kwargs), deadline_s)
    except TimeoutError:
        raise StoreDeadlineError(
            f"the event store did not answer within {deadline_s:g} s to {what}: retry later"
        ) from None
