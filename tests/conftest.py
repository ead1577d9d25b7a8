"""Shared fixtures.

External services (PostgreSQL, Redis) are optional on a laptop: tests that need one skip
with the reason when it cannot be reached. With ``BANDITOPS_REQUIRE_SERVICES=1`` (set by
``.ci/run``) an unreachable service is a failure instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per test process (the workers and the services they start):
# pytest-xdist already runs one worker per core, and each worker's BLAS and torch
# threads spinning beside the other's, and beside the servers the tests start, made the
# suite a quarter slower (the numerical tests' files: 68 s against 50 s on 2 cores).
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from eventstore.scratch import postgres_test_url, redis_test_url

settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

REQUIRE_SERVICES = os.environ.get("BANDITOPS_REQUIRE_SERVICES", "") == "1"

POSTGRES_URL = postgres_test_url()
REDIS_URL = redis_test_url()


def service_unavailable(reason: str) -> None:
    """Skip (laptop) or fail (CI) a test whose external service is missing."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} — BANDITOPS_REQUIRE_SERVICES=1 makes this service mandatory")
    pytest.skip(reason)


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or default_port
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.hookimpl(trylast=True)  # after every hook that adds an xdist_group mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--dist loadgroup`` on pytest 9.2: pytest-xdist (3.8) tells its scheduler a test's
    ``xdist_group`` by appending ``@<group>`` to the test's node id, through a field that
    pytest 9.2's structured node ids no longer read (pytest-dev/pytest-xdist#1386): every
    test was scheduled on its own. This appends it to the id pytest 9.2 reads, unless
    pytest-xdist already did (older pytest, a fixed pytest-xdist)."""
    if not getattr(config.option, "loadgroup", False):  # set on pytest-xdist's workers
        return
    for item in items:
        groups = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        suffix = "@" + "_".join(sorted(groups))
        if groups and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(item.nodeid + suffix)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL URL (``BANDITOPS_TEST_POSTGRES_URL``)."""
    if not _reachable(POSTGRES_URL, 5432):
        service_unavailable(f"PostgreSQL is not reachable at {POSTGRES_URL}")
    return POSTGRES_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A reachable Redis URL (``BANDITOPS_TEST_REDIS_URL``)."""
    if not _reachable(REDIS_URL, 6379):
        service_unavailable(f"Redis is not reachable at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def rng() -> Iterator[np.random.Generator]:
    yield np.random.default_rng(20261129)
