"""``benchmarks.recovery``: a small run learns the same head chunked and whole."""

from __future__ import annotations

import pytest

from benchmarks import recovery
from serving.store import repository


def test_the_recovery_benchmark_runs_and_chunking_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(repository, "RECOVERY_CHUNK", 40)  # several chunks of a small store
    result = recovery.run(rewards=150, candidates=20, dim=4, seed=0)
    assert result["chunk"] == 40 and result["rewards"] == 150
    assert result["max_abs_diff"] <= 1e-9
    assert result["peak_mb"] > 0 and result["whole_peak_mb"] > 0
    assert result["candidate_blocks_mb"] == pytest.approx(150 * 20 * 4 * 8 / 2**20)
