"""Typed references between the retrain steps: what one step hands the next.

Each is a frozen dataclass of small JSON values (paths, URIs, versions, counts) that
travels through Airflow's XCom as ``to_xcom()`` and comes back with ``from_xcom()``, which
refuses unknown and missing keys with an error naming the reference and the keys. The
files they point at live in the run's folder. Cheap to import (the DAG file reads it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Self


class StepRef:
    """Base of the step references: the XCom round trip with checked keys."""

    def to_xcom(self) -> dict[str, Any]:
        """The reference as a JSON-serialisable dict."""
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any] | Self) -> Self:
        """The reference from its dict; an unknown or a missing key is a ``ValueError``."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__} must be a mapping; got {type(data).__name__}.")
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        missing = [n for n in names if n not in data]
        if unknown or missing:
            raise ValueError(
                f"{cls.__name__} has unknown keys {unknown} and missing keys {missing}; "
                f"expected exactly {names}."
            )
        return cls(**dict(data))


@dataclass(frozen=True)
class ReplayRef(StepRef):
    """The extracted replay window (``replay/``)."""

    manifest: str
    path: str
    rows: int
    rewarded_rows: int
    sha256: str
    window_start: str
    window_end: str


@dataclass(frozen=True)
class ValidatedRef(StepRef):
    """The GX suite's result and the feature reference written when it passed."""

    success: bool
    evaluated: int
    docs_index: str | None
    metrics: dict[str, float]
    reference: str


@dataclass(frozen=True)
class TrainedRef(StepRef):
    """The trained network (``train/``)."""

    state_path: str
    result: str
    algorithm: str
    n_train: int
    n_holdout: int


@dataclass(frozen=True)
class RebuiltRef(StepRef):
    """The rebuilt head (``rebuild/``); ``reward_model`` and ``shards`` when sharded."""

    state_path: str
    reward_model: str | None = None
    shards: int = 0


@dataclass(frozen=True)
class RefitRef(StepRef):
    """The whole-window refit (``refit/``): the state that is registered and which rows
    trained what — ``window_rows`` (every training row of the window), ``train_rows``
    (what the evaluated network and head learnt), ``eval_rows`` (the held-out rows the
    offline evaluation scored), ``head_rows`` (rows in the registered head's statistics;
    None for a policy without a Bayesian head); ``report`` is ``refit/report.json``."""

    state_path: str
    report: str
    window_rows: int
    train_rows: int
    eval_rows: int
    head_rows: int | None


@dataclass(frozen=True)
class EvaluatedRef(StepRef):
    """The offline evaluation's summary file and the gate's decision."""

    summary: str
    passed: bool
    reasons: list[str]
    baseline_version: str | None


@dataclass(frozen=True)
class RegisteredRef(StepRef):
    """The registered version (at most one per run key)."""

    version: str
    model_name: str
    run_key: str
    created: bool
    rows: int
    metrics: str


@dataclass(frozen=True)
class PromotedRef(StepRef):
    """What the promote step did."""

    version: str
    promoted: bool
    reason: str


@dataclass(frozen=True)
class ShardRef(StepRef):
    """One shard of a map-reduce round (:func:`training.shards.plan`): replay rows
    ``[start, stop)`` of ``part`` (``"train"`` or ``"holdout"``), its output written under
    ``out_dir``; a held-out shard also carries the OPE's blocking (``blocks``, each
    ``[lo, hi)``, the first one's index ``first_block``, ``seed``), the gate's
    ``support_threshold`` and the production baseline every shard compares with (its
    state, the SHA-256 its registration recorded and the admission limits it is loaded
    under: ``max_bytes``, ``max_dim``)."""

    replay: str
    out_dir: str
    part: str
    index: int
    start: int
    stop: int
    first_block: int | None = None
    blocks: list[list[int]] | None = None
    seed: int | None = None
    support_threshold: float | None = None
    baseline_version: str | None = None
    baseline_state: str | None = None
    baseline_digest: str | None = None
    baseline_limits: dict[str, int] | None = None


@dataclass(frozen=True)
class ShardPartRef(StepRef):
    """What one mapped shard task wrote (``shards/<part>-<index>.npz``) and reduces from;
    a held-out shard names the baseline it evaluated against."""

    path: str
    index: int
    rows: int
    baseline_version: str | None = None
