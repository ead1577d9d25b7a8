"""Registry faults under load (a smaller run of the reliability benchmark's case): the
production alias moves to a version whose artifact is corrupt, then to one with other
feature dimensions, then the registry's store cannot be opened; the service keeps its
version, answers every request, and reports each failure by reason in its metrics and in
``/v1/model``; a good version afterwards is picked up. The training side refuses to
register a state that does not load back."""

from __future__ import annotations

import pytest

from benchmarks.reliability_checks import case_registry

# raised inside MLflow while it logs a model; nothing of ours (its other warnings are
# filtered in pyproject.toml)
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning")]


def test_bad_versions_and_an_unreachable_registry_never_fail_a_request() -> None:
    row = case_registry(rps=20, seconds=10)
    assert row.errors == 0, row.extra["error_samples"]
    assert (row.lost, row.duplicated) == (0, 0)
    phases = {p["phase"]: p for p in row.extra["phases"]}
    first = row.extra["first_version"]
    assert {p["served"] for p in phases.values()} == {first}  # kept through every fault
    # a corrupt artifact is refused by admission (never retried: the version is bad):
    # it is no longer the file registered (its state_sha256)
    assert "the artifact changed" in phases["corrupted artifact"]["last_load_error"]
    assert "dim_user=3" in phases["wrong feature dimension"]["last_load_error"]
    assert "unreachable" in phases["registry unreachable"]["last_load_error"]
    counted = row.extra["load_failure_metric"]
    assert counted["admission"] == 1 and counted["signature"] == 1  # once per bad version
    assert counted["unreachable"] >= 1
    assert row.recovery_seconds is not None  # the good version after the faults served
    assert row.extra["training_refused_unloadable_state"] is True
    assert row.extra["registered_versions"] == 4
