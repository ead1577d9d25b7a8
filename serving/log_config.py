"""The logging configuration of ``banditops serve``: uvicorn's own, plus one handler for
the project's loggers (``serving.*``, ``eventstore.*``, ...).

uvicorn configures only its loggers; without this the service's own lines (a model
loaded, a swap, a store outage) went to Python's last-resort handler, which drops
everything below WARNING and prints the rest as bare text with no time, level or logger
name. The configuration is a :func:`logging.config.dictConfig` dictionary passed to
``uvicorn.run(log_config=...)``: uvicorn applies it in the serving process and again in
each ``--workers`` process it spawns (the dictionary travels with its config).
"""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import packages_distributions
from typing import Any

#: Name of the handler and formatter this module adds to uvicorn's configuration.
HANDLER = "banditops"


class OneLineFormatter(logging.Formatter):
    """``<ISO time UTC> <LEVEL> <logger> <message>``, one line per record.

    Newlines in the message or the traceback (a psycopg2 error spans several lines) are
    escaped as ``\\n``, so a log reader or shipper that splits on lines keeps each record
    whole.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


@cache
def project_packages() -> tuple[str, ...]:
    """The top-level packages of the distribution that installed this one (``banditops``
    in pyproject.toml, ``[tool.setuptools.packages.find]``), read from its metadata so a
    package added there is logged without a second list to keep in step."""
    top = __name__.split(".")[0]
    owners = packages_distributions()
    dists = owners.get(top)
    if not dists:  # not installed (run from a bare source tree): this package at least
        return (top,)
    return tuple(sorted(name for name, of in owners.items() if dists[0] in of))


def log_config(level: int) -> dict[str, Any]:
    """uvicorn's ``LOGGING_CONFIG`` with the project's loggers at ``level`` (a number,
    as in ``uvicorn.config.LOG_LEVELS``) writing :class:`OneLineFormatter` lines to
    stderr.

    Parameters
    ----------
    level : int
        The threshold of every project logger (``--log-level``).

    Returns
    -------
    dict
        A :func:`logging.config.dictConfig` dictionary (a new copy per call: uvicorn
        edits the one it is given).
    """
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"][HANDLER] = {"()": f"{__name__}.{OneLineFormatter.__name__}"}
    config["handlers"][HANDLER] = {
        "class": "logging.StreamHandler",
        "formatter": HANDLER,
        "stream": "ext://sys.stderr",
    }
    for package in project_packages():
        config["loggers"][package] = {"handlers": [HANDLER], "level": level, "propagate": False}
    return config
