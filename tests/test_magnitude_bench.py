"""``benchmarks.magnitude``: nothing breaks at the bound, and the benchmark sees a break."""

from __future__ import annotations

import numpy as np
import pytest

from bandit_core import MAX_ABS_INPUT, make_policy
from benchmarks import magnitude


def test_nothing_breaks_at_the_bound_and_huge_inputs_do_break() -> None:
    at_bound, huge = magnitude.run([MAX_ABS_INPUT, 1e100], seeds=1)
    assert at_bound["broken"] == {}, at_bound
    assert set(at_bound["refused"]) <= {"neural_linear+interactions"}, at_bound
    assert huge["broken"], huge  # the benchmark sees a break where there is one
    # a head whose update would overflow refuses it whole (it broke, before the guard)
    assert "shared_linucb+interactions" in huge["refused"], huge
    assert "hybrid_linucb" in huge["refused"], huge  # refused whole, never non-finite
    assert at_bound["configurations"] == len(magnitude.configurations()) > 20


def test_the_bound_is_lifted_only_inside_the_benchmark() -> None:
    policy = make_policy("linucb", dim_user=2)
    with magnitude.unbounded():
        policy.update(np.array([1e9, 0.0]), "a", 1.0)
    with pytest.raises(ValueError, match=r"context must be at most 1e\+06 in magnitude"):
        policy.update(np.array([1e9, 0.0]), "a", 1.0)


def test_zero_seeds_is_refused_not_reported_clean(capsys: pytest.CaptureFixture[str]) -> None:
    """``--seeds 0`` ran nothing and printed "none broken" at every scale (README helper,
    stop 46)."""
    with pytest.raises(SystemExit) as exited:
        magnitude.main(["--seeds", "0", "--scales", "1e6"])
    assert exited.value.code == 2
    assert "--seeds is a number of runs, at least 1" in capsys.readouterr().err
