"""Where models come from: the ``ModelSource`` protocol and the local-file source.

A source answers two questions off the request path: which version plays a role now
(:meth:`ModelSource.resolve`, cheap, called at every poll) and what that version is
(:meth:`ModelSource.load`, called once per new version).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from bandit_core import Policy
from eventstore.admission import Admission, AdmissionError
from eventstore.contract import TRAFFIC, Traffic
from serving.models.state_io import policy_from_bytes

Role = Traffic
ROLES = TRAFFIC


@dataclass(frozen=True)
class ModelRef:
    """A resolved model version: its label, whatever the source needs to load it, and
    where its training window stops (``window_stop``, None when the source does not
    say: the version's head then learns only the rewards of its own decisions).
    ``refused``: why the version cannot be served, found while resolving it (a tag the
    service cannot read); the loader refuses it without loading. ``digest``: the SHA-256
    its state file had at registration, when the source records one.

    ``incarnation``: which artifact the label names, when a label can be reused (a
    registered model deleted and created again numbers its versions from 1 again): the
    served head, its snapshots (``head_snapshots.incarnation``) and refusals belong to
    the label *and* this; None where the label alone says (a file's label is its digest).
    ``not_before``: the earliest a snapshot of this incarnation can have been written
    (its registration, less the clock skew allowed; None where the source does not say):
    a snapshot written before snapshots recorded incarnations is used only when later.
    """

    version: str
    locator: Any = field(repr=False, compare=False)
    window_stop: datetime | None = field(default=None, compare=False)
    refused: str | None = field(default=None, compare=False)
    digest: str | None = field(default=None, compare=False)
    incarnation: str | None = field(default=None, compare=False)
    not_before: datetime | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str | None]:
        """What a refusal is remembered by: the label and its incarnation."""
        return self.version, self.incarnation


class ModelSource(Protocol):
    name: str

    def resolve(self, role: Role) -> ModelRef | None:
        """The version playing ``role`` now, or None when there is none. Raises when
        the source cannot be reached (the loader keeps what it serves)."""
        ...

    def load(self, ref: ModelRef) -> Policy:
        """The policy of ``ref`` with ``model_version`` set to ``ref.version``."""
        ...

    def describe(self, role: Role) -> str:
        """Why :meth:`resolve` found no version for ``role``, naming where it looked (a
        file, a registry and its alias) as an operator would check it."""
        ...


class FileModelSource:
    """Policy state files on local disk, one per role.

    The version is ``file-`` and the first 12 hex digits of the content's SHA-256, so
    replacing the file (atomically, with ``os.replace``) is a new version, restarting on
    the same file is the same version, and copying the candidate's file over the
    production one promotes the candidate (with its online head). The file is read once
    per change (size and mtime are checked at each poll), and the bytes hashed are the
    bytes loaded.
    """

    name = "file"

    def __init__(self, paths: dict[Role, Path | None], admission: Admission | None = None) -> None:
        self.admission = admission or Admission()
        self.paths = {role: paths.get(role) for role in ROLES}
        self._seen: dict[Role, tuple[tuple[int, int], ModelRef]] = {}
        self._lock = threading.Lock()

    def resolve(self, role: Role) -> ModelRef | None:
        path = self.paths[role]
        if path is None:
            return None
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._seen.get(role)
            if cached is not None and cached[0] == key:
                return cached[1]
            if stat.st_size > self.admission.max_bytes:  # not even read: refused by size
                ref = ModelRef(f"file-{stat.st_size}-{stat.st_mtime_ns}", None)
                self._seen[role] = (key, ref)
                return ref
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()[:12]
            ref = ModelRef(f"file-{digest}", data)
            self._seen[role] = (key, ref)
            return ref

    def describe(self, role: Role) -> str:
        path = self.paths[role]
        return (
            f"no {role} file is configured" if path is None else f"the file {path} does not exist"
        )

    def load(self, ref: ModelRef) -> Policy:
        if ref.locator is None:
            raise AdmissionError(f"the state file is larger than {self.admission.max_bytes} bytes.")
        policy = policy_from_bytes(ref.locator, self.admission)
        policy.model_version = ref.version
        return policy
