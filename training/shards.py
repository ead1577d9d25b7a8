"""Map-reduce head rebuild and off-policy evaluation over shards of the replay window.

The retrain DAG with ``shards > 1`` (``bandit_retrain``'s ``shards`` Param, default
``BANDITOPS_RETRAIN_SHARDS``) replaces the single-node ``rebuild_head`` and
``evaluate_offline`` by two map-reduce rounds (``task.expand`` over the shards planned
here); every mapped task reads only its own rows of the replay Parquet file and returns
the path of a small ``.npz`` it wrote under ``<run>/shards/``.

**Rebuild** (map over the training rows, ``[0, cut)``) — each shard encodes its rows with
the frozen network (neural-linear) or the policy's feature map (shared linear) or takes
the context (per-arm linear) and returns, per head, the additive statistics
``(Σφφᵀ, Σrφ, Σr², n)`` (:func:`bandit_core.linalg.sufficient_statistics`), plus the
moments of ``[z, r]`` that fit the OPE reward model (a ridge regression on
``z = [x; f; x⊗f]``, fitted on the *training* rows so the held-out rounds are never
predicted by a model that saw them). The reduce sums them in shard order, loads the
totals into the policy's head (one factorisation per head) and fits the reward model:
the head equals the single-node :func:`training.train.rebuild_head` (to round-off),
the rows it refuses as out of scale left out alike (:func:`shard_statistics`).
A discounted head (γ < 1) is merged as ``S = γ^{n_b} S_a + S_b`` per head (shard b
after shard a), which is the single-node weighting ``γ^{n−1−i}``; a sliding window is
not decomposable and such runs stay on the single-node path (as do policies without a
Bayesian head: ensemble, dropout, uniform).

**OPE** (map over the held-out rows, ``[cut, n)``) — the held-out rows are cut into
the single-node evaluation's blocks (:func:`training.evaluate.block_bounds`: bounded in
rounds and in distinct candidates, a cut that depends on the rows alone); a
shard is a run of whole blocks and evaluates block by block (the block's candidate union,
a generator seeded by ``(seed, block)`` for Monte-Carlo propensities), so the estimates
do not depend on the number of shards and no block's arrays grow with the clients'
fresh candidate ids. For
candidate and production it returns, per estimator of :data:`SHARDED_ESTIMATORS`
(IPS, SNIPS, DM, DR, SNDR), the mergeable moments of the round terms and the weight sums
(:class:`validation.ope.moments.TermSums`). The reduce merges them and reports the
point estimate, ESS and maximum weight equal to one pass over all rounds, with a
normal-approximation (delta-method) interval: the percentile bootstrap of the
single-node path is not additive. Replay (random draws over all rounds) and
Switch-DR / DRos (λ tuned on all rounds) are left out.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from bandit_core import load_policy, save_state
from bandit_core.catalog import CATALOG, SHARDABLE
from bandit_core.head import surely_without_outliers
from bandit_core.head_statistics import HeadStatistics, LinearHeadPolicy, head_groups
from bandit_core.policies.wrappers import DelegatingWrapper
from eventstore.admission import Admission
from training.baseline import baseline_state, run_admission
from training.evaluate import (
    EvaluationResult,
    PropensityFlags,
    block_bounds,
    logged_batch,
    support_terms,
)
from training.replay import replay_from_frame
from training.runspec import RunSpec
from validation.gate import WeightedSupport, decide, merge_ranges, reward_range, weight_terms
from validation.ope import OPEReport, check_feedback, policy_action_dist, round_terms
from validation.ope.estimators import RoundTerms
from validation.ope.evaluate import PairedDifference
from validation.ope.moments import Moments, TermSums, merge_all
from validation.ope.reward_models import RidgeModel
from validation.ope.spec import DECOMPOSABLE, SPECS

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

#: The role under which a shard keeps the candidate's round terms minus production's.
DIFFERENCE = "difference"
#: Estimators whose round terms merge exactly over shards (see the module docstring).
SHARDED_ESTIMATORS = DECOMPOSABLE
#: L2 penalty of the OPE reward model (the single-node default's ``RidgeModel(alpha=1)``).
RIDGE_ALPHA = 1.0
SHARDS_DIR = "shards"
_TRAIN_COLUMNS = ["context", "candidate_features", "chosen", "arm_id", "reward"]
#: What a training shard's file holds besides its head statistics and reward moments.
_SHARD_ARRAYS = ("reward.range", "exact", "refused", "replay", "span", "skip")


# ---------------------------------------------------------------------- planning
def split_point(rows: int, holdout_fraction: float) -> int:
    """First held-out row: the cut of :meth:`training.replay.ReplayData.split`."""
    cut = round(rows * (1.0 - holdout_fraction))
    if cut < 1 or cut >= rows:
        raise ValueError(
            f"a holdout of {holdout_fraction:.0%} of {rows} rows leaves an empty side; "
            "extract a longer window."
        )
    return int(cut)


def shard_ranges(start: int, stop: int, shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into at most ``shards`` contiguous non-empty ranges."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1; got {shards}.")
    rows = np.arange(start, stop)
    return [(int(r[0]), int(r[-1]) + 1) for r in np.array_split(rows, min(shards, len(rows)))]


def shard_blocks(blocks: Sequence[tuple[int, int]], shards: int) -> list[list[tuple[int, int]]]:
    """Consecutive ``blocks`` in at most ``shards`` non-empty runs of near-equal counts."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1; got {shards}.")
    runs = np.array_split(np.arange(len(blocks)), min(shards, len(blocks)) or 1)
    return [[tuple(blocks[i]) for i in run] for run in runs if len(run)]


def holdout_blocks(
    path: str | Path, start: int, stop: int, **blocking: int
) -> list[tuple[int, int]]:
    """The evaluation's blocks of replay rows ``[start, stop)``
    (:func:`training.evaluate.block_bounds`; ``blocking``: its ``rounds`` / ``actions``),
    by candidate ids and features, read one row group at a time."""
    rows = (
        pair
        for piece in iter_rows(path, start, stop, ["candidate_ids", "candidate_features"])
        for pair in zip(piece.column(0).to_pylist(), piece.column(1).to_pylist(), strict=True)
    )
    # read in lockstep: the tee holds a row at a time, memory stays one row group's
    first, second = itertools.tee(rows)
    ids = (i for i, _ in first)
    features = (f for _, f in second)
    return block_bounds(ids, start=start, candidate_features=features, **blocking)


def holdout_shards(
    path: str | Path, start: int, stop: int, shards: int, **blocking: int
) -> list[dict[str, Any]]:
    """Replay rows ``[start, stop)`` in at most ``shards`` runs of whole
    :func:`holdout_blocks`: each run's ``start``, ``stop``, ``blocks`` (``[lo, hi]`` pairs)
    and ``first_block`` (its first block's index: the Monte-Carlo generator's)."""
    out, first = [], 0
    for run in shard_blocks(holdout_blocks(path, start, stop, **blocking), shards):
        blocks = [[int(lo), int(hi)] for lo, hi in run]
        out.append(
            {"start": blocks[0][0], "stop": blocks[-1][1], "blocks": blocks, "first_block": first}
        )
        first += len(blocks)
    return out


def why_single_node(train: Mapping[str, Any]) -> str | None:
    """Why a run with these training settings cannot be sharded, or None."""
    algorithm = train["algorithm"]
    if algorithm not in SHARDABLE:
        return f"{algorithm} has no Bayesian head rebuilt from statistics"
    if train.get("options", {}).get("window") is not None:
        return "a sliding-window head keeps rows, not additive statistics"
    return None


def plan(
    spec: Mapping[str, Any],
    replay: Mapping[str, Any],
    part: str,
    trained: Mapping[str, Any] | None = None,
    **blocking: int,
) -> list[dict[str, Any]]:
    """The shards of one part of a run — ``"train"`` (the rebuild's rows) or ``"holdout"``
    (the OPE's) — empty (the single-node path) when ``spec["shards"]`` is 1 or the policy
    cannot be sharded (by its settings, or, given ``trained``, by the trained policy).
    ``blocking`` overrides the held-out blocks' ``rounds`` / ``actions`` (tests).

    A held-out shard also names the production baseline the evaluation compares with
    (its state downloaded once, here), so every shard evaluates the same one.
    """
    if part not in ("train", "holdout"):
        raise ValueError(f"part must be 'train' or 'holdout'; got {part!r}.")
    s = RunSpec.from_dict(spec)
    if s.shards == 1:
        return []
    reason = why_single_node(s.train)
    if reason is None and holds_slates(replay["path"]):
        reason = "the window holds slates: a shard reads one row per decision, not per shown item"
    if reason is None and trained is not None:
        reason = why_not_rebuildable(load_policy(trained["state_path"]))
    if reason is not None:
        log.warning("run %s: %d shards asked, single-node path: %s", s.run_key, s.shards, reason)
        return []
    rows = int(replay["rows"])
    cut = split_point(rows, s.train_config().holdout_fraction)
    common = {"replay": str(replay["path"]), "out_dir": str(s.folder / SHARDS_DIR), "part": part}
    if part == "train":
        ranges = shard_ranges(0, cut, s.shards)
        shards = [
            {**common, "index": i, "start": lo, "stop": hi} for i, (lo, hi) in enumerate(ranges)
        ]
    else:
        baseline, state, digest = baseline_state(s)
        limits = run_admission(s)
        runs = holdout_shards(replay["path"], cut, rows, s.shards, **blocking)
        shards = [
            {
                **common,
                "index": i,
                **blocks,
                "seed": int(s.train.get("seed", 0)),
                "support_threshold": float(s.support_threshold),
                "baseline_version": baseline,
                "baseline_state": None if state is None else str(state),
                "baseline_digest": digest,
                "baseline_limits": {"max_bytes": limits.max_bytes, "max_dim": limits.max_dim},
            }
            for i, blocks in enumerate(runs)
        ]
        ranges = [(run["start"], run["stop"]) for run in runs]
    log.info(
        "run %s: %d %s shards over rows [%d, %d)",
        s.run_key,
        len(shards),
        part,
        ranges[0][0],
        ranges[-1][1],
    )
    return shards


# ---------------------------------------------------------------------- reading rows
def holds_slates(path: str | Path) -> bool:
    """Whether a replay file has a slate decision (a ``ranking``): single-node training
    learns each shown position of it (:meth:`training.replay.ReplayData`), which the
    shards' per-decision rows and cut (:func:`split_point`) do not."""
    if "ranking" not in pq.ParquetFile(path).schema_arrow.names:
        return False
    column = pq.read_table(path, columns=["ranking"]).column(0)
    return bool(column.null_count < len(column))


def iter_rows(
    path: str | Path, start: int, stop: int, columns: list[str] | None = None
) -> Iterator[Any]:
    """Rows ``[start, stop)`` of a Parquet file as ``pyarrow.Table`` pieces, one per row
    group they touch (only those groups are read; memory stays one group's)."""
    parquet = pq.ParquetFile(path)
    offset, found = 0, False
    for group in range(parquet.num_row_groups):
        n = parquet.metadata.row_group(group).num_rows
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            found = True
            yield parquet.read_row_group(group, columns=columns).slice(lo - offset, hi - lo)
        offset += n
    if not found:
        raise ValueError(f"{path} has no rows in [{start}, {stop}); it holds {offset}.")


def read_rows(path: str | Path, start: int, stop: int, columns: list[str] | None = None) -> Any:
    """Rows ``[start, stop)`` of a Parquet file as one ``pyarrow.Table``."""
    return pa.concat_tables(list(iter_rows(path, start, stop, columns)))


def _fixed_width(values: Any, n: int, name: str) -> FloatArray:
    """A list<double> Arrow array of ``n`` equally long lists as an (n, width) matrix."""
    lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
    width = int(lengths[0]) if n else 0
    if (lengths != width).any():
        raise ValueError(f"{name} rows must all have the same length; got {sorted(set(lengths))}.")
    flat = values.flatten().to_numpy(zero_copy_only=False)
    out: FloatArray = np.asarray(flat, dtype=np.float64).reshape(n, width)
    return out


@dataclass(frozen=True)
class TrainingRows:
    """What a rebuild needs of each replay row: ``contexts`` (n, dim_user), ``arm_ids``,
    ``arm_features`` (n, dim_arm) of the chosen arm, ``rewards`` (n,)."""

    contexts: FloatArray
    arm_ids: list[str]
    arm_features: FloatArray
    rewards: FloatArray

    def without(self, rows: NDArray[np.int64]) -> TrainingRows:
        """These rows but those at positions ``rows`` (positions outside are ignored)."""
        n = len(self.arm_ids)
        rows = rows[(rows >= 0) & (rows < n)]
        if rows.size == 0:
            return self
        keep = np.ones(n, dtype=bool)
        keep[rows] = False
        return TrainingRows(
            contexts=self.contexts[keep],
            arm_ids=[a for a, k in zip(self.arm_ids, keep, strict=True) if k],
            arm_features=self.arm_features[keep],
            rewards=self.rewards[keep],
        )

    @classmethod
    def from_table(cls, table: Any) -> TrainingRows:
        """Column-wise decoding of replay rows (no per-row Python work for the arrays)."""
        n = table.num_rows
        contexts = _fixed_width(table.column("context").combine_chunks(), n, "context")
        sets = table.column("candidate_features").combine_chunks()
        sizes = pc.list_value_length(sets).to_numpy(zero_copy_only=False).astype(np.intp)
        rows = sets.flatten()
        features = _fixed_width(rows, len(rows), "candidate_features")
        first = np.cumsum(sizes) - sizes
        chosen = table.column("chosen").to_numpy().astype(np.intp)
        return cls(
            contexts=contexts,
            arm_ids=[str(a) for a in table.column("arm_id").to_pylist()],
            arm_features=features[first + chosen],
            rewards=table.column("reward").to_numpy().astype(np.float64),
        )


# ---------------------------------------------------------------------- head statistics
def why_not_rebuildable(policy: Any) -> str | None:
    """Why a trained policy's head cannot be rebuilt from shard statistics, or None."""
    while isinstance(policy, DelegatingWrapper):  # overlap floors, exposure caps: the inner head
        policy = policy.inner
    spec = CATALOG.get(policy.name)
    if spec is None:  # a wrapper ("<inner>+<kind>"), e.g. a position-aware model of slates
        return f"{policy.name} wraps its policy (rows per shown position, not per decision)"
    if spec.shardable and isinstance(policy, LinearHeadPolicy):
        return None
    return f"{policy.name} has no Bayesian head rebuilt from statistics"


# ---------------------------------------------------------------------- reward model
def reward_features(contexts: FloatArray, arm_features: FloatArray) -> FloatArray:
    """``z = [x; f; x⊗f]`` of paired rows: (n, dim_user + dim_arm + dim_user·dim_arm)."""
    n = contexts.shape[0]
    cross = (contexts[:, :, None] * arm_features[:, None, :]).reshape(n, -1)
    return np.concatenate([contexts, arm_features, cross], axis=1)


def candidate_reward_features(contexts: FloatArray, candidates: FloatArray) -> FloatArray:
    """``z`` of every (row, candidate) pair: (n, K, dz) for contexts (n, du), candidates
    (K, da)."""
    n, k = contexts.shape[0], candidates.shape[0]
    x = np.broadcast_to(contexts[:, None, :], (n, k, contexts.shape[1]))
    f = np.broadcast_to(candidates[None, :, :], (n, k, candidates.shape[1]))
    cross = (x[..., :, None] * f[..., None, :]).reshape(n, k, -1)
    return np.concatenate([x, f, cross], axis=2)


@dataclass(frozen=True)
class RidgeRewardModel:
    """``q̂(x, a) = zᵀβ + β0`` on ``z = [x; f; x⊗f]``: a :class:`validation.ope.RidgeModel`
    fitted from merged moments, kept as its arrays between the map and reduce steps;
    its predictions stay within ``bounds``, the range of the rewards it was fitted on
    (as the single node's :class:`validation.ope.reward_models.FoldModel`)."""

    coef: FloatArray
    intercept: float
    bounds: tuple[float, float] | None = None

    @classmethod
    def from_moments(
        cls,
        moments: Any,
        alpha: float = RIDGE_ALPHA,
        bounds: tuple[float, float] | None = None,
    ) -> RidgeRewardModel:
        """Fit from the moments of ``[z, r]`` (:meth:`validation.ope.RidgeModel.fit_moments`)."""
        model = RidgeModel(alpha).fit_moments(moments.mean, moments.m2)
        return cls(model.coef_, model.intercept_, bounds)

    def predict(self, contexts: FloatArray, candidates: FloatArray) -> FloatArray:
        """``q̂`` of every (row, candidate): (n, K)."""
        out: FloatArray = candidate_reward_features(contexts, candidates) @ self.coef
        out += self.intercept
        if self.bounds is not None:
            np.clip(out, *self.bounds, out=out)
        return out

    def save(self, path: Path) -> Path:
        bounds = np.array([] if self.bounds is None else self.bounds, dtype=np.float64)
        with path.open("wb") as fh:
            np.savez(fh, coef=self.coef, intercept=np.float64(self.intercept), bounds=bounds)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RidgeRewardModel:
        with np.load(path, allow_pickle=False) as data:
            b = data["bounds"] if "bounds" in data else np.array([])
            bounds = (float(b[0]), float(b[1])) if b.size == 2 else None
            return cls(np.asarray(data["coef"]), float(data["intercept"]), bounds)


# ---------------------------------------------------------------------- map: rebuild
def _write(path: Path, arrays: Mapping[str, Any]) -> Path:
    """Write an ``.npz`` atomically (a retried shard overwrites its own file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(path)
    return path


def shard_statistics(
    shard: Mapping[str, Any], state_path: str | Path, left_out: Sequence[int] = ()
) -> dict[str, Any]:
    """Map step of the rebuild: the head statistics and reward-model moments of one
    training shard, written to ``<run>/shards/train-<index>.npz``.

    ``left_out``: the training rows the training left out of the head (and a network's
    buffer: :attr:`training.train.TrainResult.refused_rows`), left out here too — the
    single-node rebuild learns the buffer, and a row judged by the network before its
    training may pass the check under the trained one.

    A head leaves out a row out of scale beside the rows before it
    (:attr:`bandit_core.HeadConfig.outlier_ratio`), and which rows those are depends on
    every row before. The first shard has none before it and leaves them out itself
    (``exact``); a later shard sums all its rows and records each head's largest square
    per feature (``peak``), from which the reduce proves that none of its rows is left out
    or reads the shard again with the rows before it (:func:`reduce_statistics`).

    Returns
    -------
    dict
        ``path`` (the ``.npz``), ``index``, ``rows``.
    """
    policy = _head_policy(load_policy(state_path))
    gamma = policy.head.config.gamma
    start, stop = _span(shard)
    exact = start == 0 or policy.head.config.outlier_ratio is None
    skip = np.unique(np.asarray(left_out, dtype=np.int64))
    skip = skip[(skip >= start) & (skip < stop)]
    stats: HeadStatistics | None = None
    peaks: dict[str, FloatArray] = {}
    reward: Moments | None = None
    refused = int(skip.size)
    low, high = math.inf, -math.inf
    at = start
    for table in iter_rows(shard["replay"], start, stop, _TRAIN_COLUMNS):
        rows = TrainingRows.from_table(table)
        learnt = rows.without(skip - at)
        at += len(rows.arm_ids)
        part, judged = _chunk_statistics(policy, learnt, stats, None if exact else peaks)
        refused += judged
        stats = part if stats is None else stats.merge(part, gamma)
        z = reward_features(rows.contexts, rows.arm_features)
        piece = Moments.of(np.concatenate([z, rows.rewards[:, None]], axis=1))
        reward = piece if reward is None else reward.merge(piece)
        if rows.rewards.size:
            low, high = min(low, float(rows.rewards.min())), max(high, float(rows.rewards.max()))
    assert stats is not None and reward is not None  # iter_rows yields or raises
    path = Path(shard["out_dir"]) / f"train-{int(shard['index']):04d}.npz"
    arrays: dict[str, Any] = {
        **stats.to_arrays(),
        **reward.to_arrays("reward."),
        "reward.range": np.array([low, high]),
        "exact": np.array(exact),
        "refused": np.array(refused),
        "replay": np.array(str(shard["replay"])),  # what the reduce reads again if it must
        "span": np.array(_span(shard)),
        "skip": skip,
    }
    if not exact:
        arrays["peak"] = np.array([peaks[k] for k in stats.keys]).reshape(stats.xty.shape)
    _write(path, arrays)
    log.info(
        "training shard %d: rows [%d, %d), %d heads", shard["index"], *_span(shard), len(stats.keys)
    )
    return {"path": str(path), "index": int(shard["index"]), "rows": int(stats.rows.sum())}


def _chunk_statistics(
    policy: LinearHeadPolicy,
    rows: TrainingRows,
    before: HeadStatistics | None,
    peaks: dict[str, FloatArray] | None,
) -> tuple[HeadStatistics, int]:
    """The statistics of ``rows`` (in order, after the rows of ``before``) and how many
    of them the head leaves out; with ``peaks``, the sums of all of them, and each head's
    largest square per feature folded into ``peaks``."""
    config = policy.head.config
    if not rows.arm_ids:  # every row of the chunk left out by the training
        return HeadStatistics.of(np.zeros((0, policy.head.dim)), rows.rewards, []), 0
    phi, keys = policy.head_features(rows.contexts, rows.arm_ids, rows.arm_features)
    if peaks is None:
        stats, left_out = HeadStatistics.learnt(phi, rows.rewards, keys, config, before)
        return stats, int(left_out.size)
    for key, idx in head_groups(keys, phi.shape[0]).items():
        mine = phi if keys is None else phi[idx]  # one shared head: no copy
        peak = np.square(np.maximum(mine.max(axis=0), -mine.min(axis=0)))
        peaks[key] = np.maximum(peaks[key], peak) if key in peaks else peak
    return HeadStatistics.of(phi, rows.rewards, keys, config.gamma), 0


def _head_policy(policy: Any) -> LinearHeadPolicy:
    reason = why_not_rebuildable(policy)
    if reason is not None:
        raise ValueError(f"cannot rebuild this head from shard statistics: {reason}.")
    head_policy: LinearHeadPolicy = policy  # a floored model answers for its inner head
    return head_policy


def _span(shard: Mapping[str, Any]) -> tuple[int, int]:
    return int(shard["start"]), int(shard["stop"])


def _ordered(parts: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Map outputs in shard order (whatever order Airflow hands them over in)."""
    items = [p for p in parts if p is not None]
    if not items:
        raise ValueError("no shard outputs to reduce.")
    return sorted(items, key=lambda p: int(p["index"]))


def reduce_statistics(
    parts: Sequence[Mapping[str, Any]], policy: LinearHeadPolicy
) -> tuple[HeadStatistics, Any, tuple[float, float] | None, int]:
    """Merge training shards in order: ``(head statistics, moments of [z, r], the range
    of the rewards (None: no rewards), rows the heads left out)``.

    A shard that summed all its rows (not ``exact``) is merged as it is when its peaks
    show that none of them is out of scale beside the rows before it
    (:func:`bandit_core.head.surely_without_outliers`, per head); otherwise its rows are
    read again and learnt after the rows merged so far, leaving out those a head learning
    them one at a time refuses, as the single-node rebuild does."""
    config = policy.head.config
    stats: HeadStatistics | None = None
    moments = []
    low, high = math.inf, -math.inf
    refused = 0
    for part in _ordered(parts):
        with np.load(part["path"], allow_pickle=False) as data:
            missing = [k for k in _SHARD_ARRAYS if k not in data]
            if missing:
                raise ValueError(
                    f"the shard file {Path(part['path']).name} lacks {', '.join(missing)}: "
                    "written by an older banditops or cut short; clear the run's "
                    "shard_statistics tasks so that they map the shards again."
                )
            shard = HeadStatistics.from_arrays(data)
            moments.append(Moments.from_arrays(data, "reward."))
            lo, hi = (float(v) for v in data["reward.range"])
            exact = bool(data["exact"])
            refused += int(data["refused"])
            peak = None if exact else _peaks(data, shard)
            rows = {"replay": str(data["replay"]), "index": part["index"]}
            rows["start"], rows["stop"] = (int(v) for v in data["span"])
            rows["skip"] = np.asarray(data["skip"], dtype=np.int64)
        low, high = min(low, lo), max(high, hi)
        if peak is not None and not _surely_learnt_whole(shard, peak, stats, config):
            shard, left_out = _relearn(policy, rows, stats)
            refused += left_out
        stats = shard if stats is None else stats.merge(shard, config.gamma)
    assert stats is not None  # _ordered refuses an empty list; not input validation
    return stats, merge_all(moments), (low, high) if low <= high else None, refused


def _peaks(data: Any, shard: HeadStatistics) -> FloatArray:
    """A shard file's ``peak`` (one row per head, finite, not negative), checked before
    it decides anything."""
    if "peak" not in data:
        raise ValueError("a shard file that is not exact must hold each head's 'peak'.")
    peak = np.asarray(data["peak"])
    if peak.shape != shard.xty.shape or peak.dtype.kind != "f":
        raise ValueError(f"head statistics 'peak' must have shape {shard.xty.shape}.")
    if not np.isfinite(peak).all() or (peak < 0).any():
        raise ValueError("head statistics 'peak' must hold finite numbers, not negative.")
    return peak


def _surely_learnt_whole(
    shard: HeadStatistics, peak: FloatArray, before: HeadStatistics | None, config: Any
) -> bool:
    """Whether no head leaves out any row of ``shard`` (whose largest squares are
    ``peak``) learnt after the rows of ``before``."""
    ratio = config.outlier_ratio
    if ratio is None:
        return True
    for j, key in enumerate(shard.keys):
        sums, count = HeadStatistics.squares(before, key, shard.xty.shape[1])
        rows = int(shard.rows[j])
        if not surely_without_outliers(peak[j], sums, count, rows, ratio, config.gamma):
            return False
    return True


def _relearn(
    policy: LinearHeadPolicy, shard: Mapping[str, Any], before: HeadStatistics | None
) -> tuple[HeadStatistics, int]:
    """A shard's statistics read again from its rows, learnt after the rows of ``before``
    (the rows the heads leave out left out): ``(statistics, rows left out)``."""
    gamma = policy.head.config.gamma
    stats: HeadStatistics | None = None
    refused, at = 0, int(shard["start"])
    for table in iter_rows(shard["replay"], shard["start"], shard["stop"], _TRAIN_COLUMNS):
        rows = TrainingRows.from_table(table)
        learnt = rows.without(shard["skip"] - at)
        at += len(rows.arm_ids)
        prior = stats if before is None else before if stats is None else before.merge(stats, gamma)
        piece, left_out = _chunk_statistics(policy, learnt, prior, None)
        refused += left_out
        stats = piece if stats is None else stats.merge(piece, gamma)
    assert stats is not None  # iter_rows yields or raises
    log.warning(
        "training shard %s: a row may be out of scale beside the rows before it; read "
        "again after them: %d of its rows left out",
        shard["index"],
        refused,
    )
    return stats, refused


def reduce_head(
    state_path: str | Path, parts: Sequence[Mapping[str, Any]], out_path: str | Path
) -> tuple[Path, Path]:
    """Reduce step of the rebuild: the policy with its head rebuilt from every shard
    (``out_path``) and the OPE reward model beside it (``reward_model.npz``)."""
    policy = _head_policy(load_policy(state_path))
    stats, moments, bounds, refused = reduce_statistics(parts, policy)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = save_state(policy.state_with_statistics(stats), out)
    fitted = RidgeRewardModel.from_moments(moments, bounds=bounds)
    model = fitted.save(out.with_name("reward_model.npz"))
    log.info(
        "head rebuilt from %d shards (%d rows; %d out of scale left out)",
        len(parts),
        int(stats.rows.sum()),
        refused,
    )
    return state, model


# ---------------------------------------------------------------------- map: OPE
def _evaluated_policies(
    shard: Mapping[str, Any], state_path: str | Path, dim_user: int, dim_arm: int
) -> Any:
    from training.evaluate import production_policy

    candidate = load_policy(state_path)
    limits = shard.get("baseline_limits")  # (None: a shard planned before they were kept)
    production, _ = production_policy(
        shard.get("baseline_state") or None,
        dim_user,
        dim_arm,
        digest=shard.get("baseline_digest") or None,
        admission=None
        if not limits
        else Admission(max_bytes=int(limits["max_bytes"]), max_dim=int(limits["max_dim"])),
    )
    return {"candidate": candidate, "production": production}


def _label(policy: Any) -> str:
    version = getattr(policy, "model_version", None)
    return policy.name if version is None else f"{policy.name}@{version}"


def block_terms(
    policies: Mapping[str, Any],
    batch: Any,
    model: RidgeRewardModel,
    rng_seed: Sequence[int],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``{role: {estimator: TermSums}}`` of one block of held-out rows, and each role's
    action distribution on it."""
    q_hat = model.predict(batch.contexts, batch.candidates.features)[:, :, None]
    out: dict[str, dict[str, Any]] = {}
    dists: dict[str, Any] = {}
    raw: dict[str, dict[str, RoundTerms]] = {}
    for role, policy in policies.items():
        dist = policy_action_dist(policy, batch, np.random.default_rng(list(rng_seed)))
        fb = check_feedback(
            batch.rewards, batch.actions, batch.pscore, dist, batch.positions, q_hat
        )
        raw[role] = {name: round_terms(name, fb) for name in SHARDED_ESTIMATORS}
        out[role] = {name: TermSums.of(t) for name, t in raw[role].items()}
        dists[role] = dist
    if "candidate" in raw and "production" in raw:
        # the candidate minus production round by round (a mean of terms: the estimators
        # without a ratio), for the gate's paired comparison
        out[DIFFERENCE] = {
            name: TermSums.of(RoundTerms(c.num - p.num, c.weights))
            for name, c in raw["candidate"].items()
            if (p := raw["production"][name]).den is None
            and c.den is None
            and p.base is None
            and c.base is None
        }
    return out, dists


def shard_evaluation(
    shard: Mapping[str, Any], state_path: str | Path, reward_model: str | Path
) -> dict[str, Any]:
    """Map step of the OPE: the merged round-term moments of candidate and production on
    one held-out shard (block by block), and the candidate's support terms
    (:func:`training.evaluate.support_terms`), written to
    ``<run>/shards/holdout-<index>.npz``.

    Returns
    -------
    dict
        ``path``, ``index``, ``rows``, ``baseline_version``.
    """
    data = replay_from_frame(read_rows(shard["replay"], shard["start"], shard["stop"]).to_pandas())
    model = RidgeRewardModel.load(reward_model)
    policies = _evaluated_policies(shard, state_path, data.dim_user, data.dim_arm)
    seed, first_block = int(shard["seed"]), int(shard["first_block"])
    threshold = float(shard["support_threshold"])
    start = int(shard["start"])
    sums: dict[str, dict[str, Any]] = {}
    fingerprints = []
    support_mass, support_rows = 0.0, 0
    weights = np.zeros((max(1, data.len_list), 3))
    rewards: tuple[float, float] | None = None
    flags = PropensityFlags(0, 0, 0)
    for b, (lo, hi) in enumerate(shard["blocks"]):
        rows = data.subset(slice(int(lo) - start, int(hi) - start))
        batch = logged_batch(rows)
        fingerprints.append(batch.fingerprint())
        rewards = merge_ranges((rewards, reward_range(batch.rewards)))
        flags = flags.merge(PropensityFlags.of(rows))
        terms, dists = block_terms(policies, batch, model, (seed, first_block + b))
        for role, by_name in terms.items():
            merged = sums.setdefault(role, {})
            for name, t in by_name.items():
                merged[name] = t if name not in merged else merged[name].merge(t)
        support = support_terms(rows, batch, threshold, dists["candidate"])
        if support is not None:
            support_mass += support[0]
            support_rows += support[1]
        weights[: batch.len_list] += weight_terms(
            dists["candidate"], batch.actions, batch.positions, batch.pscore, batch.len_list
        )
    arrays: dict[str, Any] = {
        "fingerprints": np.array(fingerprints, dtype=np.str_),
        "labels": np.array([_label(policies[r]) for r in ("candidate", "production")]),
        "support": np.array([support_mass, support_rows], dtype=np.float64),
        "support_weights": weights,
        "reward_range": np.array(rewards or (np.nan, np.nan), dtype=np.float64),
        **flags.to_arrays(),
    }
    for role, by_name in sums.items():
        for name, t in by_name.items():
            arrays.update(t.to_arrays(f"{role}.{name}."))
    path = Path(shard["out_dir"]) / f"holdout-{int(shard['index']):04d}.npz"
    _write(path, arrays)
    log.info("held-out shard %d: rows [%d, %d)", shard["index"], *_span(shard))
    return {
        "path": str(path),
        "index": int(shard["index"]),
        "rows": data.n_rows,
        "baseline_version": shard.get("baseline_version"),
    }


def reduce_reports(parts: Sequence[Mapping[str, Any]], level: float = 0.95) -> dict[str, Any]:
    """Merge held-out shards: ``{"candidate": OPEReport, "production": OPEReport}``."""
    totals: dict[str, dict[str, TermSums]] = {"candidate": {}, "production": {}}
    digest = hashlib.sha256()
    labels: list[str] = []
    ordered = _ordered(parts)
    for part in ordered:
        with np.load(part["path"], allow_pickle=False) as data:
            for fp in data["fingerprints"]:
                digest.update(str(fp).encode())
            labels = [str(x) for x in data["labels"]]
            for role, by_name in totals.items():
                for name in SHARDED_ESTIMATORS:
                    t = TermSums.from_arrays(data, f"{role}.{name}.")
                    by_name[name] = t if name not in by_name else by_name[name].merge(t)
    notes = (
        f"sharded over {len(ordered)} held-out shards: normal-approximation (delta-method) "
        "intervals; the percentile bootstrap is not additive over shards.",
        "reward model: ridge regression on [x; f; x⊗f] fitted on the training rows.",
        f"{', '.join(n for n in SPECS if n not in DECOMPOSABLE)} are not computed when "
        "sharded (not decomposable).",
    )
    fingerprint = digest.hexdigest()
    reports = {}
    for (role, by_name), label in zip(totals.items(), labels, strict=True):
        estimates = {name: t.estimate(name, level) for name, t in by_name.items()}
        n = next(iter(by_name.values())).moments.n
        reports[role] = OPEReport(label, n, fingerprint, estimates, notes)
    return reports


def reduce_difference(
    parts: Sequence[Mapping[str, Any]], estimator: str, level: float = 0.95
) -> PairedDifference | None:
    """The candidate's value minus production's under ``estimator`` on the whole held-out
    window, from the shards' round-by-round differences (normal approximation, as the
    sharded reports); None for an estimator whose difference is not a mean of terms."""
    total: TermSums | None = None
    for part in _ordered(parts):
        with np.load(part["path"], allow_pickle=False) as data:
            if f"{DIFFERENCE}.{estimator}.n" not in data.files:
                return None
            t = TermSums.from_arrays(data, f"{DIFFERENCE}.{estimator}.")
        total = t if total is None else total.merge(t)
    if total is None:
        return None
    est = total.estimate(estimator, level)
    return PairedDifference(estimator, est.value, est.ci_low, est.ci_high, float(level), 0)


def reduce_support(parts: Sequence[Mapping[str, Any]]) -> float | WeightedSupport | None:
    """The candidate's :func:`validation.gate.unsupported_mass` on the whole held-out
    window, from the shards' support terms; when no row has logged probabilities (or a
    slate window), the share estimated from its importance weights, as on the
    single-node path (:class:`validation.gate.WeightedSupport`)."""
    mass, rows = 0.0, 0.0
    weights: np.ndarray | None = None
    for part in parts:
        with np.load(part["path"], allow_pickle=False) as data:
            part_mass, part_rows = (float(v) for v in data["support"])
            # a shard written before the weights were kept (a map step of an earlier
            # release, reduced by this one) adds none
            part_weights = (
                np.asarray(data["support_weights"], dtype=np.float64)
                if "support_weights" in data.files
                else np.zeros((1, 3))
            )
        mass += part_mass
        rows += part_rows
        if weights is None or part_weights.shape[0] > weights.shape[0]:
            grown = np.zeros_like(part_weights)
            if weights is not None:
                grown[: weights.shape[0]] = weights
            weights = grown
        weights[: part_weights.shape[0]] += part_weights
    return mass / rows if rows else WeightedSupport.of(weights if weights is not None else [])


def reduce_reward_range(parts: Sequence[Mapping[str, Any]]) -> tuple[float, float] | None:
    """The least and the greatest reward of the whole held-out window, from the shards'
    ranges (:func:`validation.gate.reward_range`)."""
    ranges = []
    for part in parts:
        with np.load(part["path"], allow_pickle=False) as data:
            ranges.append(reward_range(data["reward_range"]))
    return merge_ranges(ranges)


def reduce_evaluation(parts: Sequence[Mapping[str, Any]], rule: Any, out_dir: str | Path) -> Any:
    """Reduce step of the OPE: both reports and the gate's decision, support check
    included (:class:`training.evaluate.EvaluationResult`, written to ``out_dir``)."""
    reports = reduce_reports(parts)
    flags = PropensityFlags(0, 0, 0)
    for part in parts:
        with np.load(part["path"], allow_pickle=False) as data:
            flags = flags.merge(PropensityFlags.from_arrays(data))
    difference = reduce_difference(parts, rule.estimator, rule.difference_level)
    result = EvaluationResult(
        reports["candidate"],
        reports["production"],
        decide(
            reports["candidate"],
            reports["production"],
            rule,
            reduce_support(parts),
            reduce_reward_range(parts),
            difference,
        ),
        flags,
        difference,
    )
    result.write(out_dir)
    return result
