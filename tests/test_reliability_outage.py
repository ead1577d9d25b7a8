"""Faults under load, smaller versions of the reliability benchmark's cases: the service
(``banditops serve`` in a subprocess) driven from another process while PostgreSQL is
cut by a TCP proxy (with and without a ``kill -9`` during the cut), or while the service
itself is killed (the plain ``kill -9`` case is tests/test_serving_crash.py). Nothing acknowledged may be lost or stored twice, and the live head must
equal the one rebuilt from the store."""

from __future__ import annotations

import pytest

from benchmarks.reliability import case_db_outage

pytestmark = pytest.mark.postgres


def test_database_outage_keeps_serving_and_drains_the_journal(postgres_url: str) -> None:
    row = case_db_outage(rps=40, seconds=12, outage_s=4, postgres_url=postgres_url)
    during = row.extra["during_outage"]
    assert (during["readyz_status"], during["readyz"]) == (200, "degraded")
    assert during["store_degraded_metric"] == 1.0 and during["journal_events"] > 0
    assert row.extra["rewards_learnt_during_outage"] > 0  # heads kept learning
    assert row.extra["proxy_refused"] > 0  # the service did try the database meanwhile
    assert row.errors == 0, row.extra
    assert (row.lost, row.duplicated) == (0, 0)
    assert row.extra["head_gap"] <= 1e-9
    assert row.recovery_seconds is not None and row.recovery_seconds < 30


def test_kill_during_outage_then_restart_drains_first(postgres_url: str) -> None:
    row = case_db_outage(rps=40, seconds=14, outage_s=4, postgres_url=postgres_url, kill=True)
    journaled = row.extra["end_of_outage"]["journal_events"]
    assert journaled > row.extra["during_outage"]["journal_events"] > 0
    # every acknowledged event, the journaled ones included, is in the store exactly once
    assert (row.lost, row.duplicated) == (0, 0)
    assert row.extra["restart_ready_s"] is not None
    assert row.extra["head_gap"] <= 1e-9
