"""A thread for a request's costly work, scheduled behind the event loop.

The event loop answers ``/healthz`` and the ordinary decisions; the **decision** thread
chooses the decisions costing more than ``inline_work_units``
(:meth:`serving.service.DecisionService.choose_for`) and runs at the niceness
``costly_work_nice`` (Linux: a thread has a nice value of its own). When the machine is
busy, for instance when many clients send costly requests at once, the kernel then gives
the event loop, the store writer and the other processes their CPU first; the costly
work takes what is left, and a costly decision not done by ``decision_deadline_s`` is
answered by the fallback policy. Measured by the hostile case of
``benchmarks.reliability`` (``docs/reliability.md``).

The GIL does not undo this for the decision thread: its numpy work is many short calls,
between which the interpreter hands the GIL to the loop at its switch interval. Moving
long single C calls that hold the GIL (parsing a large JSON body, for instance) to such a
thread makes things worse: the kernel may preempt the lowered thread while it holds the
GIL, and the loop then waits for it (measured: ordinary decisions' p50 rose from 9.5 to
13.5–25 ms in the hostile case), so bodies are parsed on the loop.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


def lowered_executor(name: str, nice: int) -> ThreadPoolExecutor:
    """One worker thread called ``name`` that runs at niceness ``nice`` (at least the
    process's own: a thread is never raised above it)."""
    return ThreadPoolExecutor(
        1, thread_name_prefix=name, initializer=lower_this_thread, initargs=(nice,)
    )


def lower_this_thread(nice: int) -> int:
    """Set the calling thread's niceness to ``max(nice, the process's)``; its niceness
    after the call. Only Linux gives threads their own niceness: elsewhere the thread
    keeps the process's (logged once per thread)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice <= current:
        return current
    if not sys.platform.startswith("linux"):
        log.warning("costly_work_nice=%d is not applied: only Linux sets a thread's niceness", nice)
        return current
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:  # a sandbox without setpriority: the thread keeps running
        log.warning("costly_work_nice=%d is not applied: %s", nice, exc)
        return current
    return os.getpriority(os.PRIO_PROCESS, tid)
