"""Replay windows: from the event store to one Parquet file per run, and back to arrays.

``extract_replay`` writes the decisions of a window with their joined reward (the rules of
:func:`eventstore.replay.read_replay`) to ``<out_dir>/replay.parquet`` plus a manifest
(``replay.json``: window, row count, SHA-256 of the file). ``load_replay`` turns such a file
into :class:`ReplayData`, the arrays every training and evaluation step works on.

A ranked slate becomes one row per shown item — the Open Bandit Pipeline's ``position`` /
``len_list`` contract: row j of a slate is the item shown at position j, that position's
reward, and the marginal probability that the logging policy showed that item *there*
(``position_propensities``; NaN when the slate was logged without them, which training
accepts and off-policy evaluation leaves out). Single decisions are position 0 of a
one-item list.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from bandit_core.policies.position import with_positions
from eventstore.engine import make_engine
from eventstore.replay import REWARD, REWARD_COUNT, read_replay, window_stop
from eventstore.settings import CORE_DEFAULTS, DuplicateRule, MissingReward
from training import quarantine

REPLAY_FILE = "replay.parquet"
MANIFEST_FILE = "replay.json"
QUARANTINE_FILE = "quarantine.parquet"
#: The time-ordered share of a window held out for the offline evaluation (the last rows).
HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class ReplayManifest:
    """What an extraction produced: the file, its window, rows and content hash.

    ``start`` / ``end`` are the window asked for; ``stop`` is where it really stops
    (:func:`eventstore.replay.window_stop`: decisions created at or after it were left
    out, their reward window still open) — the boundary past which a version trained on
    the window learns online; ``last_decision_at`` is the newest decision in it;
    ``duplicate_rule`` says how several rewards of one event became its ``reward``
    (``"sum"``: added up, so the reward range holds per received reward).
    """

    path: str
    start: str
    end: str
    rows: int
    rewarded_rows: int
    sha256: str
    dim_user: int
    dim_arm: int
    quarantined: int = 0
    quarantine_path: str | None = None
    stop: str | None = None
    last_decision_at: str | None = None
    #: a manifest written before the field existed: the rule's default then (a value of
    #: the past, not a copy of today's ``CORE_DEFAULTS["duplicate_rule"]``)
    duplicate_rule: DuplicateRule = "first_wins"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, path: str | Path) -> ReplayManifest:
        return cls(**json.loads(Path(path).read_text()))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_replay(
    store_url: str,
    start: datetime,
    end: datetime,
    out_dir: str | Path,
    *,
    reward_window: timedelta = timedelta(seconds=CORE_DEFAULTS["reward_window_s"]),
    duplicate_rule: DuplicateRule = CORE_DEFAULTS["duplicate_rule"],
    missing_reward: MissingReward = CORE_DEFAULTS["missing_reward"],
    default_reward: float = CORE_DEFAULTS["default_reward"],
    reward_min: float = CORE_DEFAULTS["reward_min"],
    reward_max: float = CORE_DEFAULTS["reward_max"],
    as_of: datetime | None = None,
    quarantine_max_share: float = quarantine.MAX_SHARE,
    max_abs_feature: float = quarantine.MAX_ABS,
) -> ReplayManifest:
    """Write the replay window ``[start, end)`` of the store at ``store_url``.

    The output overwrites ``<out_dir>/replay.parquet`` and ``replay.json`` (a retried task
    rewrites its own run-scoped files). Rows breaking the replay schema, up to
    ``quarantine_max_share`` of the window, are set aside in ``quarantine.parquet``
    (:mod:`training.quarantine`; a reward outside ``[reward_min, reward_max]`` breaks it,
    as in the suite). Returns the manifest.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    as_of = as_of or datetime.now(UTC)
    stop = window_stop(end, reward_window, as_of)
    engine = make_engine(store_url)
    try:
        frame = read_replay(
            engine,
            start,
            end,
            reward_window=reward_window,
            duplicate_rule=duplicate_rule,
            missing_reward=missing_reward,
            default_reward=default_reward,
            as_of=as_of,
        )
    finally:
        engine.dispose()
    rewards = quarantine.Rewards(reward_min, reward_max, summed=duplicate_rule == "sum")
    frame, set_aside, (dim_user, dim_arm) = quarantine.split(
        frame, quarantine_max_share, max_abs_feature, rewards
    )
    quarantine_path = out / QUARANTINE_FILE
    if len(set_aside):
        set_aside.to_parquet(quarantine_path, index=False)
    else:
        quarantine_path.unlink(missing_ok=True)
    path = out / REPLAY_FILE
    tmp = path.with_suffix(".parquet.tmp")
    try:
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
    finally:  # a write cut short (a full disk) leaves no part-file behind
        tmp.unlink(missing_ok=True)
    manifest = ReplayManifest(
        path=str(path),
        start=start.astimezone(UTC).isoformat(),
        end=end.astimezone(UTC).isoformat(),
        rows=len(frame),
        rewarded_rows=int(frame["reward_observed"].sum()) if len(frame) else 0,
        sha256=file_sha256(path),
        dim_user=int(dim_user),
        dim_arm=int(dim_arm),
        quarantined=len(set_aside),
        quarantine_path=str(quarantine_path) if len(set_aside) else None,
        stop=stop.astimezone(UTC).isoformat(),
        last_decision_at=_last_decision_at(frame),
        duplicate_rule=duplicate_rule,
    )
    (out / MANIFEST_FILE).write_text(manifest.to_json())
    return manifest


def _last_decision_at(frame: pd.DataFrame) -> str | None:
    """The newest decision's creation time (ISO, UTC), None for an empty window."""
    if not len(frame):
        return None
    newest = pd.Timestamp(frame["created_at"].max())
    newest = newest.tz_localize(UTC) if newest.tzinfo is None else newest.tz_convert(UTC)
    return str(newest.isoformat())


@dataclass(frozen=True)
class ReplayData:
    """A replay window as arrays (rows in time order).

    One row per shown item: a single decision is one row, a slate of k is k rows in
    position order. ``contexts`` (n, dim_user); ``arm_ids`` (n,) shown arm ids;
    ``arm_features`` (n, dim_arm) of the shown arms; ``rewards`` (n,); ``propensities``
    (n,) logging propensities of the arm *at its position* (NaN when unknown);
    ``candidate_ids`` / ``candidate_features`` the per-row candidate sets (lists, since
    sets may differ); ``chosen`` (n,) index of the shown arm in its set;
    ``model_versions`` (n,) the version that decided; ``event_ids`` (n,) the decision of
    each row (a slate's rows share it); ``positions`` (n,) the slot of each row, in
    ``[0, len_list)``; ``len_list`` the longest list in the window (1 without slates);
    ``logging_probabilities`` the logging policy's choice probabilities over each row's
    candidate set (NaN where not logged, e.g. slate positions after the first), when the
    window carries them; ``user_hashes`` (n,) the hashed user of each row (None without
    one), when the window carries them; ``propensity_ses`` (n,) the standard error of
    each row's propensity where it is a Monte-Carlo estimate (NaN where it is exact, not
    logged, or a slate position after the first), when the window carries them.
    """

    contexts: NDArray[np.float64]
    arm_ids: list[str]
    arm_features: NDArray[np.float64]
    rewards: NDArray[np.float64]
    propensities: NDArray[np.float64]
    candidate_ids: list[list[str]]
    candidate_features: list[NDArray[np.float64]]
    chosen: NDArray[np.intp]
    model_versions: list[str]
    event_ids: list[str]
    positions: NDArray[np.intp] | None = None
    len_list: int = 1
    logging_probabilities: list[NDArray[np.float64]] | None = None
    user_hashes: list[str | None] | None = None
    propensity_ses: NDArray[np.float64] | None = None

    @property
    def row_positions(self) -> NDArray[np.intp]:
        """``positions``, all 0 when not given."""
        if self.positions is None:
            return np.zeros(self.n_rows, dtype=np.intp)
        return self.positions

    @property
    def n_rows(self) -> int:
        return int(self.contexts.shape[0])

    @property
    def dim_user(self) -> int:
        return int(self.contexts.shape[1])

    @property
    def dim_arm(self) -> int:
        return int(self.arm_features.shape[1])

    def subset(self, rows: NDArray[np.intp] | slice) -> ReplayData:
        index = np.arange(self.n_rows)[rows]
        pick = [int(i) for i in index]
        return ReplayData(
            contexts=self.contexts[index],
            arm_ids=[self.arm_ids[i] for i in pick],
            arm_features=self.arm_features[index],
            rewards=self.rewards[index],
            propensities=self.propensities[index],
            candidate_ids=[self.candidate_ids[i] for i in pick],
            candidate_features=[self.candidate_features[i] for i in pick],
            chosen=self.chosen[index],
            model_versions=[self.model_versions[i] for i in pick],
            event_ids=[self.event_ids[i] for i in pick],
            positions=self.row_positions[index],
            len_list=self.len_list,
            logging_probabilities=(
                None
                if self.logging_probabilities is None
                else [self.logging_probabilities[i] for i in pick]
            ),
            user_hashes=None if self.user_hashes is None else [self.user_hashes[i] for i in pick],
            propensity_ses=None if self.propensity_ses is None else self.propensity_ses[index],
        )

    def with_position_features(self, position_slots: int) -> ReplayData:
        """The rows with ``arm_features`` ``[x_arm ; e_position]`` (what the head of a
        :class:`bandit_core.PositionBias` model learns from); candidates unchanged."""
        if self.len_list > position_slots:
            raise ValueError(
                f"position_slots must cover the longest slate of the window ({self.len_list}); "
                f"got {position_slots}."
            )
        return replace(
            self, arm_features=with_positions(self.arm_features, self.row_positions, position_slots)
        )

    def split(self, holdout_fraction: float) -> tuple[ReplayData, ReplayData]:
        """Time split: the first rows train, the last ``holdout_fraction`` are held out
        (the cut moves forward to the next decision, so a slate is never split)."""
        if not 0.0 < holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1); got {holdout_fraction!r}.")
        cut = round(self.n_rows * (1.0 - holdout_fraction))
        while 0 < cut < self.n_rows and self.event_ids[cut] == self.event_ids[cut - 1]:
            cut += 1
        if cut < 1 or cut >= self.n_rows:
            raise ValueError(
                f"a holdout of {holdout_fraction:.0%} of {self.n_rows} rows leaves an empty side; "
                "extract a longer window."
            )
        return self.subset(slice(0, cut)), self.subset(slice(cut, None))


def _shown(row: Any) -> list[tuple[int, int, float, float]]:
    """``(position, candidate index, reward, propensity)`` of every shown item of a frame
    row whose reward is known: the slate's positions, or the decision's arm."""
    ranking = row.get("ranking")
    if ranking is None or (isinstance(ranking, float) and np.isnan(ranking)):
        return [(0, int(row["chosen"]), float(row["reward"]), float(row["propensity"]))]
    rewards = np.asarray(row["position_rewards"], dtype=np.float64)
    marginal = row.get("position_propensities")
    if marginal is None or (isinstance(marginal, float) and np.isnan(marginal)):
        pscore = np.full(len(ranking), np.nan)
        pscore[0] = float(row["propensity"])  # position 0's marginal is its propensity
    else:
        pscore = np.asarray(marginal, dtype=np.float64)
    return [
        (j, int(item), float(rewards[j]), float(pscore[j]))
        for j, item in enumerate(ranking)
        if not np.isnan(rewards[j])  # "drop": a position without a reward
    ]


def replay_from_frame(frame: pd.DataFrame) -> ReplayData:
    """Arrays from a replay DataFrame (the columns of ``eventstore.replay.COLUMNS``):
    one row per shown item (a frame without the slate columns: one per decision)."""
    if len(frame) == 0:
        raise ValueError("the replay window holds no decisions; nothing to train or evaluate on.")
    if "event_id" in frame.columns:
        repeated = frame["event_id"].duplicated()
        if repeated.any():  # each would be weighted as a round of its own
            first = frame["event_id"][repeated].iloc[0]
            raise ValueError(
                f"the replay holds {int(repeated.sum())} repeated decisions (event_id "
                f"{str(first)[:64]!r} among them): a decision is one row, and a repeated "
                "one would count as several rounds."
            )
    contexts, cand_ids, cand_feats, versions, events, logged = [], [], [], [], [], []
    users: list[str | None] = []
    chosen, rewards, pscores, positions, ses = [], [], [], [], []
    len_list = 1
    for row in frame.to_dict("records"):
        shown = _shown(row)
        if not shown:
            continue
        x = np.asarray(row["context"], dtype=np.float64)
        ids = [str(c) for c in row["candidate_ids"]]
        feats = _matrix(row["candidate_features"])
        ranking = row.get("ranking")
        if ranking is not None and not isinstance(ranking, float):
            len_list = max(len_list, len(ranking))
        given = row.get("probabilities")
        first = np.full(len(ids), np.nan)
        if given is not None and not isinstance(given, float) and len(given) == len(ids):
            first = np.asarray(given, dtype=np.float64)
        se = _standard_error(row.get("propensity_se"))
        for position, item, reward, pscore in shown:
            logged.append(first if position == 0 else np.full(len(ids), np.nan))
            ses.append(se if position == 0 else np.nan)
            contexts.append(x)
            cand_ids.append(ids)
            cand_feats.append(feats)
            versions.append(str(row["model_version"]))
            events.append(str(row["event_id"]))
            users.append(_user_hash(row.get("user_hash")))
            chosen.append(item)
            rewards.append(reward)
            pscores.append(pscore)
            positions.append(position)
    if not contexts:
        raise ValueError("the replay window holds no rewarded items; nothing to train on.")
    picked = np.asarray(chosen, dtype=np.intp)
    return ReplayData(
        contexts=np.stack(contexts),
        arm_ids=[cand_ids[i][picked[i]] for i in range(len(cand_ids))],
        arm_features=np.stack([cand_feats[i][picked[i]] for i in range(len(cand_feats))]),
        rewards=np.asarray(rewards, dtype=np.float64),
        propensities=np.asarray(pscores, dtype=np.float64),
        candidate_ids=cand_ids,
        candidate_features=cand_feats,
        chosen=picked,
        model_versions=versions,
        event_ids=events,
        positions=np.asarray(positions, dtype=np.intp),
        len_list=len_list,
        logging_probabilities=logged,
        user_hashes=users,
        propensity_ses=np.asarray(ses, dtype=np.float64),
    )


def _standard_error(value: Any) -> float:
    """A frame's ``propensity_se`` cell: the standard error, NaN where there is none (an
    exact propensity, a decision logged before the column existed)."""
    if value is None:
        return float("nan")
    return float(value)


def _user_hash(value: Any) -> str | None:
    """A frame's ``user_hash`` cell: the hash, or None (a missing user, NaN or empty)."""
    return value if isinstance(value, str) and value else None


def _matrix(rows: Any) -> NDArray[np.float64]:
    """(K, dim_arm) from a list of rows or a Parquet object array of row arrays."""
    stacked = [np.asarray(r, dtype=np.float64) for r in rows]
    if not stacked:
        return np.zeros((0, 0))
    return np.stack(stacked)


def load_replay(path: str | Path) -> ReplayData:
    """Read a replay Parquet file written by :func:`extract_replay`."""
    return replay_from_frame(pd.read_parquet(path))


#: The columns every replay row is read by (the slate columns and ``propensity_se``,
#: ``user_hash`` may be absent: a file of other logs, or of an older banditops).
REQUIRED_COLUMNS = (
    "event_id",
    "model_version",
    "context",
    "candidate_ids",
    "candidate_features",
    "chosen",
    "arm_id",
    "propensity",
    "probabilities",
    REWARD,
)


def vetted_replay(
    path: str | Path,
    rewards: quarantine.Rewards,
    max_share: float = quarantine.MAX_SHARE,
    max_abs: float = quarantine.MAX_ABS,
) -> tuple[ReplayData, pd.DataFrame]:
    """A replay file of any origin (``banditops evaluate``), held to the extraction's
    rules: ``(the data, the rows set aside with their reasons)``.

    A file the retrain did not write skipped the quarantine and the suite: a missing
    column or a ``chosen`` past its candidates raised a ``KeyError``/``IndexError``, and
    ``chosen = -1``, probabilities that do not sum to 1, a propensity the probabilities
    contradict or a reward of 1e308 were evaluated as logged, moving the estimates.

    Raises
    ------
    ValueError
        A column missing, no decisions, or broken rows above ``max_share`` (the first
        named, with its event id).
    """
    frame = pd.read_parquet(path)
    needed = (*REQUIRED_COLUMNS, *((REWARD_COUNT,) if rewards.summed else ()))
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the replay file {path} lacks the column(s) {', '.join(missing)}: a replay has "
            "the columns extract_replay writes (eventstore.replay.COLUMNS)."
        )
    if len(frame) == 0:
        return replay_from_frame(frame), frame  # its own error, naming no row
    kept, set_aside, _ = quarantine.split(frame, max_share, max_abs, rewards, strict=True)
    if len(kept) == 0:  # every row of another width (no context): none left to read
        aside = set_aside.iloc[0]
        raise ValueError(
            f"every one of the replay's {len(frame)} decisions breaks the replay schema; "
            f"the first, event {str(aside['event_id'])[:64]!r}: {aside['reason']}."
        )
    return replay_from_frame(kept), set_aside


def replay_summary(data: ReplayData) -> dict[str, Any]:
    """Row counts and reward statistics, for run tags and logs."""
    return {
        "rows": data.n_rows,
        "reward_mean": float(data.rewards.mean()),
        "arms": len(set(data.arm_ids)),
        "dim_user": data.dim_user,
        "dim_arm": data.dim_arm,
    }
