"""Bad input is refused, never a crash: the service fuzzed from its own OpenAPI schema
(schemathesis: requests valid by the schema and requests that break it) answers no 5xx;
oversize bodies are 413, non-finite numbers and wrong dimensions 422; and the library's
boundary validators, fuzzed with hypothesis, either return clean arrays or raise
``ValueError``/``TypeError``."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bandit_core._validation import (
    Interval,
    as_finite_float,
    as_float_matrix,
    as_float_vector,
    validate_params,
)
from benchmarks.reliability_checks import fuzz_openapi, hostile_bodies
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from serving.app import create_app
from tests.serving_helpers import LiveServer, policy_file, service_settings
from validation.ope.inputs import SUM_TOLERANCE, check_feedback

LIMIT = 16_384


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    settings_ = service_settings(
        tmp, model_path=policy_file(tmp / "policy.npz"), api_token="t", max_body_bytes=LIMIT
    )
    engine = make_engine(settings_.store_url)
    upgrade(engine)
    engine.dispose()
    with LiveServer(create_app(settings_)) as live:
        yield live


def test_no_generated_request_gets_a_server_error(server: LiveServer) -> None:
    got = fuzz_openapi(server.url, max_examples=25, headers={"Authorization": "Bearer t"})
    assert got["server_errors"] == []
    assert got["requests"] >= 16 * 2 * 5  # every operation, valid and invalid requests
    assert any(code == 422 for code in got["statuses"])  # invalid ones were refused
    assert any(code == 200 for code in got["statuses"])


def test_hostile_bodies_are_refused_with_the_right_code(server: LiveServer) -> None:
    assert hostile_bodies(server.url, LIMIT, {"Authorization": "Bearer t"}) == {
        "oversize declared": 413,
        "oversize chunked": 413,
        "NaN context": 422,
        "Infinity feature": 422,
        "wrong dimensions": 422,
    }


# ---------------------------------------------------------------------- library validators
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
scalars = st.one_of(
    floats, st.integers(-(10**20), 10**20), st.booleans(), st.none(), st.text(max_size=3)
)
arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.bool_, np.complex128, object]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    elements=None,
)
anything = st.one_of(
    scalars, arrays, st.lists(st.one_of(floats, st.lists(floats, max_size=3)), max_size=4)
)


def _refused_or_clean(call: Any) -> Any:
    try:
        return call()
    except (ValueError, TypeError):
        return None


@settings(max_examples=150, deadline=None)
@given(value=anything, dim=st.none() | st.integers(0, 4))
def test_vector_and_matrix_checks_return_finite_arrays_or_refuse(value: Any, dim: Any) -> None:
    vec = _refused_or_clean(lambda: as_float_vector("x", value, dim))
    if vec is not None:
        assert vec.dtype == np.float64 and vec.ndim == 1 and np.isfinite(vec).all()
        assert dim is None or vec.shape == (dim,)
    mat = _refused_or_clean(lambda: as_float_matrix("m", value, n_cols=dim))
    if mat is not None:
        assert mat.dtype == np.float64 and mat.ndim == 2 and np.isfinite(mat).all()
        assert dim is None or mat.shape[1] == dim


@settings(max_examples=150, deadline=None)
@given(value=anything)
def test_scalar_and_parameter_checks_accept_only_what_they_state(value: Any) -> None:
    got = _refused_or_clean(lambda: as_finite_float("alpha", value))
    if got is not None:
        assert isinstance(got, float) and math.isfinite(got)
    table = {"alpha": Interval(float, 0.0, None, closed="left")}
    try:
        validate_params("Policy", {"alpha": value}, table)
    except ValueError as exc:
        assert "The 'alpha' parameter of Policy must be a float in the range [0, inf)" in str(exc)
    else:
        assert not isinstance(value, bool) and math.isfinite(float(value)) and value >= 0


@st.composite
def feedback(draw: st.DrawFn) -> dict[str, Any]:
    """Logged feedback, mostly well formed, with one part broken at random."""
    n = draw(st.integers(0, 4))
    k = draw(st.integers(1, 3))
    slots = draw(st.integers(1, 2))
    dist = np.full((n, k, slots), 1.0 / k)
    data: dict[str, Any] = {
        "reward": np.zeros(n),
        "action": np.zeros(n, dtype=np.int64),
        "pscore": np.full(n, 0.5),
        "action_dist": dist,
        "position": np.zeros(n, dtype=np.int64),
        "estimated_rewards": np.zeros_like(dist),
    }
    broken = draw(st.sampled_from(sorted(data)))
    data[broken] = draw(anything)
    return data


@settings(max_examples=200, deadline=None)
@given(data=feedback())
def test_ope_inputs_are_checked_once_and_completely(data: dict[str, Any]) -> None:
    fb = _refused_or_clean(lambda: check_feedback(**data))
    if fb is None:
        return
    n = fb.n_rounds
    assert n > 0 and fb.action.shape == fb.position.shape == fb.pscore.shape == (n,)
    assert ((fb.pscore > 0) & (fb.pscore <= 1)).all()
    assert ((fb.action >= 0) & (fb.action < fb.n_actions)).all()
    assert ((fb.position >= 0) & (fb.position < fb.len_list)).all()
    assert np.isfinite(fb.action_dist).all() and (fb.action_dist >= 0).all()
    assert np.abs(fb.action_dist.sum(axis=1) - 1.0).max() <= SUM_TOLERANCE
    assert fb.estimated_rewards is None or np.isfinite(fb.estimated_rewards).all()
