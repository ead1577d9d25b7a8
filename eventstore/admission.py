"""Model admission: whether a policy-state ``.npz`` may be built, checked before allocating.

Training runs it before registering a version and serving before loading one, so a
version that would poison or exhaust the service is refused on both sides:

1. the file's size is at most ``max_bytes``, it is a zip of at most ``max_members``
   ``.npy`` members;
2. each member's ``.npy`` header (shape, dtype) is read from its compressed stream, which
   decompresses only the header's bytes; no member may hold objects (pickle), and the
   declared sizes, like the sizes the zip directory gives (which bound what reading can
   decompress), add up to at most ``max_bytes``;
3. the JSON header's configuration declares no dimension above ``max_dim`` (nor one whose
   ``d × d`` matrix alone exceeds ``max_bytes``), and the feature dimensions the service
   serves, when given;
4. only then are the arrays read, and every float array must be finite.

A registered version's state is also held to the SHA-256 recorded when it was registered
(:meth:`Admission.registered_policy`: the service's loader and the retrain's baseline
alike), so an artifact changed in the store after registration is refused.

Only a state passing all four is handed to :func:`bandit_core.policies.registry.policy_from_state`
(:meth:`Admission.policy`), whose own refusals (an unknown policy, an array of the wrong
shape, an option out of its range, such as more posterior draws than
:data:`bandit_core.montecarlo.MAX_DRAWS`) are refusals of the version too.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core import Policy, PolicyState
from bandit_core.policies.registry import policy_from_state
from eventstore.contract import STATE_DIGEST_TAG
from eventstore.settings import CoreSettings

_HEADER_MEMBER = "__state__.json.npy"
_HEADER_KEY = "__state__.json"
#: Largest JSON header (configuration) member.
MAX_HEADER_BYTES = 1 << 20
#: Most policies wrapped in one another (exploration floor around an exposure cap around
#: …): real stacks are a few deep; hundreds exhaust the recursion of building them.
MAX_WRAPPERS = 16


#: The size limits are settings (``model_max_bytes``, ``model_max_dim``): the defaults here.
_LIMITS = CoreSettings.model_fields


class AdmissionError(ValueError):
    """A model version's state is refused (the message says which check failed)."""


class ArtifactChangedError(AdmissionError):
    """The state file downloaded is not the one the version was registered with: refused
    like any unsafe version, but tried again after the service loader's
    ``retry_failed_s`` — a file restored in place is the version again."""


def state_digest(path: Path) -> str:
    """The SHA-256 (hex) of the state file at ``path``, read in blocks (the digest
    registration records as :data:`~eventstore.contract.STATE_DIGEST_TAG`)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Admission:
    """The limits a policy state must meet (module docstring).

    Attributes
    ----------
    max_bytes : int
        Largest file and largest total of the arrays (uncompressed).
    max_dim : int
        Largest dimension the configuration may declare.
    dim_user, dim_arm : int or None
        The service's feature dimensions (None: not checked here).
    max_members : int
        Most arrays in the file.
    """

    max_bytes: int = _LIMITS["model_max_bytes"].default
    max_dim: int = _LIMITS["model_max_dim"].default
    dim_user: int | None = None
    dim_arm: int | None = None
    max_members: int = 4096

    @classmethod
    def from_settings(
        cls, settings: CoreSettings, dim_user: int | None = None, dim_arm: int | None = None
    ) -> Admission:
        """The size limits of ``settings`` (and the service's dimensions, when given)."""
        return cls(
            max_bytes=settings.model_max_bytes,
            max_dim=settings.model_max_dim,
            dim_user=dim_user,
            dim_arm=dim_arm,
        )

    def policy(self, source: bytes | Path) -> Policy:
        """The policy of ``source`` (bytes or a path), built from its checked state.

        Raises
        ------
        AdmissionError
            A check failed, or the state does not make a policy (the policy's own
            validation: a state that is malformed is refused, never retried as a failure
            to load).
        """
        state = self.admit(source)
        try:
            return policy_from_state(state)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
            # RecursionError: wrappers nested too deep to build; refused once, as any
            # other state that makes no policy (not a RuntimeError at large: torch's
            # allocator failing for want of memory is a failure to load, retried)
            raise AdmissionError(f"the state does not make a policy: {exc}") from exc

    def registered_policy(self, path: Path, digest: str | None) -> Policy:
        """The policy of a registered version's downloaded state file: the file must be
        the one registered (its SHA-256 is ``digest``, the version's
        :data:`~eventstore.contract.STATE_DIGEST_TAG`; None: a version registered before
        digests were recorded, held to the size checks alone) and pass :meth:`policy`.
        Whoever loads a version from the registry loads it here: the service, and the
        retrain its production baseline.

        Raises
        ------
        ArtifactChangedError
            The file's SHA-256 is not ``digest``.
        AdmissionError
            A check of :meth:`policy` failed (a file over ``max_bytes`` before it is
            hashed).
        """
        size = path.stat().st_size
        if size > self.max_bytes:
            raise AdmissionError(f"the state file has {size} bytes; the limit is {self.max_bytes}.")
        if digest is not None:
            found = state_digest(path)
            if found != digest:
                raise ArtifactChangedError(
                    f"its state file's SHA-256 is {found[:16]}…, not the {digest[:16]}… "
                    f"recorded at registration ({STATE_DIGEST_TAG}): the artifact changed"
                )
        return self.policy(path)

    def admit(self, source: bytes | Path) -> PolicyState:
        """The checked state of ``source`` (bytes or a path).

        Raises
        ------
        AdmissionError
            A check failed; nothing larger than the headers was read.
        """
        try:
            return self._admit(source)
        except AdmissionError:
            raise
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
            # a malformed member, or a header nested past what the JSON parser follows
            raise AdmissionError(f"the state file is malformed: {exc}") from exc
        except IsADirectoryError as exc:
            raise AdmissionError(f"the state file is a directory: {exc}") from exc

    def _admit(self, source: bytes | Path) -> PolicyState:
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        if size > self.max_bytes:
            raise AdmissionError(f"the state file has {size} bytes; the limit is {self.max_bytes}.")
        data = source if isinstance(source, bytes) else source.read_bytes()
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise AdmissionError(f"the state file is not an .npz archive: {exc}") from exc
        with archive:
            members = archive.infolist()
            if len(members) > self.max_members:
                raise AdmissionError(
                    f"the state file has {len(members)} arrays; the limit is {self.max_members}."
                )
            total = 0
            for info in members:
                total += max(info.file_size, self._declared_bytes(archive, info))
                if total > self.max_bytes:
                    raise AdmissionError(
                        f"the state's arrays hold more than {self.max_bytes} bytes "
                        f"(at member {info.filename!r})."
                    )
            header = self._header(archive)
            self._check_config(header.get("config", {}))
            arrays = {
                info.filename.removesuffix(".npy"): _read_array(archive, info)
                for info in members
                if info.filename != _HEADER_MEMBER
            }
        bad = first_non_finite(arrays)
        if bad is not None:
            raise AdmissionError(f"state array {bad!r} holds non-finite values.")
        return PolicyState(
            header["policy"], header["config"], arrays, int(header["schema_version"])
        )

    @staticmethod
    def _declared_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
        if not info.filename.endswith(".npy"):
            raise AdmissionError(f"member {info.filename!r} is not an .npy array.")
        with archive.open(info) as fh:  # decompresses the header's bytes only
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            except ValueError as exc:
                raise AdmissionError(f"member {info.filename!r}: {exc}") from exc
        if dtype.hasobject:
            raise AdmissionError(f"member {info.filename!r} holds objects (pickle).")
        return math.prod(shape) * dtype.itemsize

    @staticmethod
    def _header(archive: zipfile.ZipFile) -> dict[str, Any]:
        try:
            info = archive.getinfo(_HEADER_MEMBER)
        except KeyError:
            raise AdmissionError(f"not a banditops policy state (no {_HEADER_KEY}).") from None
        if info.file_size > MAX_HEADER_BYTES:
            raise AdmissionError(f"the state header has more than {MAX_HEADER_BYTES} bytes.")
        try:
            header = json.loads(str(_read_array(archive, info)))
        except ValueError as exc:
            raise AdmissionError(f"the state header is not JSON: {exc}") from exc
        if not isinstance(header, dict) or not {"policy", "config", "schema_version"} <= set(
            header
        ):
            raise AdmissionError("the state header lacks policy, config or schema_version.")
        return header

    def check_dimensions(self, config: Any, what: str = "the configuration") -> None:
        """``AdmissionError`` for a dimension ``config`` declares (a size-like key: ``dim*``,
        ``hidden*``, ``*heads``, ``window`` …) above ``max_dim``, or whose ``d × d`` float64
        matrix alone exceeds ``max_bytes``. The retrain runs it on a run's policy options
        before it trains, so that it never trains what it could not register."""
        for key, value in _dimensions(config):
            if value > self.max_dim:
                raise AdmissionError(
                    f"{what} declares {key} = {value}; the limit is {self.max_dim} (model_max_dim)."
                )
            if value * value * 8 > self.max_bytes:
                raise AdmissionError(
                    f"{what} declares {key} = {value}, whose {value} × {value} matrix alone "
                    f"exceeds {self.max_bytes} bytes (model_max_bytes)."
                )

    def _check_config(self, config: Any) -> None:
        inner, depth = config, 0
        while isinstance(inner, dict) and isinstance(inner.get("inner"), dict):
            inner, depth = inner["inner"].get("config", {}), depth + 1
            if depth > MAX_WRAPPERS:
                raise AdmissionError(
                    f"the configuration wraps more than {MAX_WRAPPERS} policies in one another."
                )
        self.check_dimensions(config)
        if not isinstance(inner, dict):
            return
        slots = _int(config.get("position_slots")) if isinstance(config, dict) else None
        for key, expected, offset in (
            ("dim_user", self.dim_user, 0),
            ("dim_arm", self.dim_arm, slots or 0),
        ):
            declared = _int(inner.get(key))
            shared = inner.get("shared", True)
            if key == "dim_arm" and (not shared or not declared):
                continue
            if expected is not None and declared is not None and declared - offset != expected:
                raise AdmissionError(
                    f"the configuration declares {key} = {declared - offset}; the service "
                    f"serves {key} = {expected}."
                )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dimensions(config: Any, path: str = "") -> Iterator[tuple[str, int]]:
    """Every integer the configuration declares under a size-like key (``dim*``,
    ``hidden*``, ``*heads``, ``window``, ``position_slots``), with its path."""
    if isinstance(config, dict):
        for key, value in config.items():
            where = f"{path}.{key}" if path else str(key)
            sized = str(key).startswith(("dim", "hidden")) or str(key).endswith("heads")
            sized = sized or key in ("window", "position_slots", "n_members")
            values = value if isinstance(value, list) else [value]
            if sized and all(_int(v) is not None for v in values):
                for v in values:
                    yield where, int(v)
            else:
                yield from _dimensions(value, where)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            yield from _dimensions(value, f"{path}[{i}]")


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> NDArray[Any]:
    with archive.open(info) as fh:
        array: NDArray[Any] = np.lib.format.read_array(fh, allow_pickle=False)
        return array


def first_non_finite(arrays: Mapping[str, NDArray[Any]]) -> str | None:
    """The name of the first floating array holding NaN or ±inf, or None."""
    for name, array in arrays.items():
        if np.issubdtype(array.dtype, np.inexact) and not bool(np.all(np.isfinite(array))):
            return name
    return None
