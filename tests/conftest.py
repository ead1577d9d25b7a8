"""Shared fixtures.

External services (PostgreSQL, Redis) are optional on a laptop: tests that need one skip
with the reason when it cannot be reached. With ``BANDITOPS_REQUIRE_SERVICES=1`` (set by
``.ci/run``) an unreachable service is a failure instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import os
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
