"""Policy state on disk: one ``.npz`` with the arrays and a JSON header; no pickle."""

from __future__ import annotations

import io
import json
import os
import uuid
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from bandit_core.policies.base import Policy
from bandit_core.policies.registry import policy_from_state
from bandit_core.types import PolicyState

_HEADER = "__state__.json"
#: Most bytes of an array copied at once while a state is written.
WRITE_CHUNK_BYTES = 1 << 20


def write_state(state: PolicyState, fh: IO[bytes]) -> None:
    """Write ``state`` as ``.npz`` to the binary file ``fh`` (seekable or not).

    Each array goes into the archive in slices of at most :data:`WRITE_CHUNK_BYTES`
    (``np.savez`` copies a whole array at once, holding the interpreter lock for the
    length of the copy: tens of milliseconds for a large head, during which no other
    thread of a service runs)."""
    for key in state.arrays:
        if key == _HEADER:
            raise ValueError(f"array name {_HEADER!r} is reserved.")
        if state.arrays[key].dtype == object:
            raise ValueError(f"state array {key!r} has dtype object, which would need pickle.")
    header = {
        "policy": state.policy,
        "schema_version": state.schema_version,
        "config": state.config,
    }
    try:
        text = json.dumps(header, sort_keys=True, default=_plain, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the state's config cannot be written as JSON: {exc}") from exc
    payload: dict[str, Any] = {_HEADER: np.array(text)}
    payload.update(state.arrays)
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in payload.items():
            with zf.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                _write_npy(member, np.asarray(value))


def _plain(value: Any) -> Any:
    """A numpy scalar in a config (an option given as ``np.float32(0.5)``) as the Python
    number it holds; anything else is not JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r:.40} is not JSON")


def _write_npy(out: IO[bytes], array: NDArray[Any]) -> None:
    """One ``.npy`` (format 1.0, or 2.0 for a header too large for it), data in slices."""
    array = np.ascontiguousarray(array) if array.ndim else array
    header = np.lib.format.header_data_from_array_1_0(array)
    try:
        np.lib.format.write_array_header_1_0(out, header)
    except ValueError:
        np.lib.format.write_array_header_2_0(out, header)
    flat = array.reshape(-1)
    step = max(1, WRITE_CHUNK_BYTES // max(1, array.itemsize))
    for start in range(0, flat.size, step):
        out.write(flat[start : start + step].tobytes())


class _Parts:
    """A write-only file that cuts what is written into parts of ``size`` bytes. It has
    no ``seek``: ``zipfile`` then writes each member's sizes after its data instead of
    going back for them, and no buffer ever holds the whole archive (growing one copies
    it, holding the interpreter lock for the length of the copy)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"part size must be at least 1; got {size}.")
        self.size = size
        self.parts: list[bytes] = []
        self._part = bytearray()
        self._written = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        while len(view):
            room = self.size - len(self._part)
            self._part += view[:room]
            view = view[room:]
            if len(self._part) == self.size:
                self.parts.append(bytes(self._part))
                self._part.clear()
        self._written += n
        return n

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def finish(self) -> list[bytes]:
        if self._part:
            self.parts.append(bytes(self._part))
            self._part.clear()
        return self.parts


def state_to_parts(state: PolicyState, part_bytes: int) -> list[bytes]:
    """The ``.npz`` bytes of ``state`` in parts of ``part_bytes`` (the last one shorter),
    built in memory with no copy of more than a part or a slice of an array at a time:
    a thread serialising a large head does not stall the others."""
    out = _Parts(part_bytes)
    write_state(state, out)  # type: ignore[arg-type]  # write/tell/flush is all it uses
    return out.finish()


def state_to_bytes(state: PolicyState) -> bytes:
    """The ``.npz`` bytes of ``state``, built in memory (no file, no fsync)."""
    return b"".join(state_to_parts(state, WRITE_CHUNK_BYTES))


def save_state(state: PolicyState, path: str | Path) -> Path:
    """Write ``state`` to ``path`` (``.npz``) atomically; returns the path written."""
    path = Path(path)
    # write a temporary file beside it, make it durable, then rename it over ``path``: a
    # process killed at any moment leaves the previous file or the new one, never half
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as fh:
            write_state(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_state(source: str | Path | bytes) -> PolicyState:
    """Read a state written by :func:`save_state` (a path) or :func:`state_to_bytes`
    (its bytes); ``allow_pickle=False``."""
    where = "the state" if isinstance(source, bytes) else str(source)
    opened = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        loaded = np.load(opened, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        # an empty file raised EOFError, which the CLI could only abort on, naming nothing;
        # another file numpy's advice to load it "unsafely" with pickle
        why = {EOFError: "it is empty", ValueError: "it is neither .npz nor .npy"}.get(
            type(exc), f"a damaged archive ({exc})"
        )
        raise ValueError(
            f"{where} is not a banditops policy state (an .npz archive): {why}."
        ) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{where} is not a banditops policy state (an .npz archive): an .npy.")
    with loaded as data:
        if _HEADER not in data.files:
            raise ValueError(f"{where} is not a banditops policy state (no {_HEADER} entry).")
        try:
            header = json.loads(str(data[_HEADER]))
            arrays = {k: data[k] for k in data.files if k != _HEADER}
            return PolicyState(
                header["policy"], header["config"], arrays, int(header["schema_version"])
            )
        except (ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{where} holds a damaged policy state: {exc!r}") from None


def save_policy(policy: Policy, path: str | Path) -> Path:
    return save_state(policy.to_state(), path)


def load_policy(source: str | Path | bytes) -> Policy:
    return policy_from_state(load_state(source))
