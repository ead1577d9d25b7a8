"""``banditops serve`` logs the project's own lines (``serving.*``, ``eventstore.*``, ...)
at ``--log-level``, one line per record with its time, level and logger name, in the
serving process and in every ``--workers`` process.

uvicorn configured only its loggers: the service's ``loaded production ...`` and
``serving production=...`` lines never appeared, whatever the level, and its warnings were
bare text from Python's last-resort handler.
"""

from __future__ import annotations

import io
import logging
import re
import time
from pathlib import Path

import pytest

from serving.log_config import OneLineFormatter, project_packages
from tests.serving_helpers import ServiceProcess, policy_file

#: ``2025-01-02T03:04:05.678+00:00 INFO serving.models.loader loaded production ...``
LOADED = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 INFO serving\.models\.loader "
    r"loaded production \S+ \(\d+ rewards replayed\)$",
    flags=re.M,
)


def _serve(tmp_path: Path, *args: str, expect: int = 0) -> tuple[str, list[str]]:
    """Start ``serve`` with a policy file (the start loads it), stop it; its output and
    the ``loaded production`` lines in it, waiting up to 30 s for ``expect`` of them
    (``/readyz`` answers once one worker has loaded it)."""
    env = {
        "BANDITOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'events.db'}",
        "BANDITOPS_MODEL_PATH": str(policy_file(tmp_path / "policy.npz")),
        "BANDITOPS_WORKSPACE": str(tmp_path / "ws"),
    }
    log = tmp_path / "service.log"
    service = ServiceProcess(env, log, args=args).start()
    try:
        deadline = time.monotonic() + 30
        while len(LOADED.findall(log.read_text())) < expect and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        service.stop()
    text = log.read_text()
    return text, LOADED.findall(text)


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_logs_the_model_load_with_time_level_and_logger(tmp_path: Path, workers: int) -> None:
    text, loaded = _serve(
        tmp_path, "--log-level", "info", "--workers", str(workers), expect=workers
    )
    assert len(loaded) == workers, text  # every worker process logs its own load


def test_serve_log_level_warning_hides_the_info_lines(tmp_path: Path) -> None:
    text, loaded = _serve(tmp_path, "--log-level", "warning")
    assert loaded == [] and "loaded production" not in text, text


def test_a_multi_line_record_is_one_line() -> None:
    """A psycopg2 error text and a traceback: the newlines are escaped, one record one
    line (a shipper that splits on lines keeps it whole)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter())
    logger = logging.getLogger("serving.test_one_line")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise RuntimeError('could not connect\nDETAIL:  is the server running on "db"?')
        except RuntimeError:
            logger.exception("the store refused:\n%s", "second line")
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert " ERROR serving.test_one_line the store refused:\\nsecond line\\nTraceback" in lines[0]
    assert "could not connect\\nDETAIL:" in lines[0]


def test_every_top_level_package_of_the_project_is_configured() -> None:
    """The list comes from the installed distribution's metadata (pyproject's
    ``packages.find``), not a copy kept by hand."""
    assert {"serving", "eventstore", "training", "modelregistry", "ops"} <= set(project_packages())
