"""A policy state serialised in memory, in parts (:func:`bandit_core.state.state_to_parts`):
the same ``.npz`` whatever the part size, every part but the last exactly that size, read
back by ``np.load``, :func:`bandit_core.load_state` and the model admission checks, and
arrays larger than a write slice intact."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import bandit_core.state as state_module
from bandit_core import PolicyState, load_state, make_policy, save_state
from bandit_core.state import state_to_bytes, state_to_parts
from eventstore.admission import Admission


def _state() -> PolicyState:
    rng = np.random.default_rng(0)
    policy = make_policy("linucb", dim_user=5)
    policy.update_batch(
        rng.standard_normal((40, 5)), [f"a{i % 7}" for i in range(40)], rng.random(40)
    )
    return policy.to_state()


def _assert_same(a: PolicyState, b: PolicyState) -> None:
    assert (a.policy, a.config, a.schema_version) == (b.policy, b.config, b.schema_version)
    assert a.arrays.keys() == b.arrays.keys()
    for key, value in a.arrays.items():
        assert b.arrays[key].dtype == value.dtype, key
        np.testing.assert_array_equal(b.arrays[key], value)


@pytest.mark.parametrize("part_bytes", [1, 7, 1000, 1 << 20])
def test_the_parts_make_one_archive_whatever_their_size(part_bytes: int) -> None:
    state = _state()
    parts = state_to_parts(state, part_bytes)
    assert all(len(p) == part_bytes for p in parts[:-1])
    assert 0 < len(parts[-1]) <= part_bytes
    data = b"".join(parts)
    assert data == state_to_bytes(state)
    _assert_same(state, load_state(data))
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # a standard .npz
        np.testing.assert_array_equal(npz["head.precision"], state.arrays["head.precision"])
    _assert_same(state, Admission(dim_user=5).admit(data))


def test_a_state_file_and_its_bytes_hold_the_same_state(tmp_path: Path) -> None:
    state = _state()
    path = save_state(state, tmp_path / "state.npz")
    _assert_same(load_state(path), load_state(state_to_bytes(state)))


def test_arrays_larger_than_a_write_slice_are_written_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state_module, "WRITE_CHUNK_BYTES", 24)  # three float64 at a time
    rng = np.random.default_rng(1)
    arrays = {
        "big": rng.standard_normal((11, 5)),
        "fortran": np.asfortranarray(rng.standard_normal((4, 6))),
        "strided": rng.standard_normal((8, 8))[::2, 1::3],
        "scalar": np.array(2.5),
        "empty": np.zeros((3, 0)),
        "ids": np.array(["arm-1", "arm-22", "x"]),
        "ints": np.arange(17, dtype=np.int64),
    }
    state = PolicyState("linucb", {"dim_user": 5}, arrays, 1)
    _assert_same(state, load_state(b"".join(state_to_parts(state, 10))))


def test_a_part_size_below_one_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="part size"):
        state_to_parts(_state(), 0)


def test_options_given_as_numpy_scalars_are_saved_as_numbers(tmp_path: Path) -> None:
    """Options pass validation as numpy scalars (np.float32, np.int64); the state file
    writes them as the numbers they hold. Before, saving raised "Object of type float32
    is not JSON serializable"."""
    from bandit_core import load_policy, save_policy

    policy = make_policy("linucb", dim_user=3, alpha=np.float32(0.5), refactor_every=np.int64(9))
    restored = load_policy(save_policy(policy, tmp_path / "p.npz"))
    assert (restored.config.alpha, restored.config.refactor_every) == (0.5, 9)  # type: ignore[attr-defined]
    odd = PolicyState("linucb", {"dim_user": 3, "alpha": object()}, {})
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        save_state(odd, tmp_path / "odd.npz")


def test_a_state_that_breaks_torch_or_is_a_directory_is_refused(tmp_path: Path) -> None:
    """Malformed states are refused (``AdmissionError``: the loader never tries them
    again), not failures to load (retried with a traceback every ``retry_failed_s``): a
    neural state whose generator state torch rejects (a ``RuntimeError``) and a model path
    that is a directory (``IsADirectoryError``)."""
    from eventstore.admission import AdmissionError

    state = make_policy("neural_linear", dim_user=4, hidden=(8,)).to_state()
    arrays = {**state.arrays, "train_rng": state.arrays["train_rng"][:10]}
    bad = PolicyState(state.policy, state.config, arrays, state.schema_version)
    with pytest.raises(AdmissionError, match="does not make a policy"):
        Admission().policy(state_to_bytes(bad))
    with pytest.raises(AdmissionError, match="is a directory"):
        Admission().policy(tmp_path)
