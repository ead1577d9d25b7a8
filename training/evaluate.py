"""Offline evaluation of a candidate against production on the same held-out window.

Both policies are scored by every estimator of :mod:`validation.ope` (with bootstrap
intervals) on the last ``holdout_fraction`` of the replay window, and the promotion gate
of :mod:`validation.gate` decides. Before the first model is promoted, "production" is the
service's fallback — the uniform policy — evaluated the same way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core import Candidates, Policy, load_policy, make_policy
from bandit_core.policies.registry import input_widths
from eventstore.admission import Admission
from training.replay import HOLDOUT_FRACTION, ReplayData, load_replay
from validation.gate import (
    GateDecision,
    GateRule,
    WeightedSupport,
    decide,
    merge_ranges,
    reward_range,
    unsupported_terms,
    weight_terms,
)
from validation.ope import LoggedBatch, OPEReport, evaluate_policy
from validation.ope.evaluate import (
    PairedDifference,
    evaluate_policy_in_blocks,
    paired_difference,
    policy_action_dist,
    slate_policy_action_dist,
)
from validation.ope.inputs import BanditFeedback
from validation.ope.propensity_error import MAX_REL_ERROR, flag_propensity_error
from validation.ope.report import strict_json

log = logging.getLogger(__name__)

REPORT_FILE = "evaluation.json"
#: Most entries of the held-out window's largest dense array (512 MiB of float64); a
#: window offering more distinct candidates is evaluated in blocks
#: (:func:`validation.ope.evaluate.evaluate_policy_in_blocks`), so that clients sending
#: fresh candidate ids cannot make the nightly evaluation need tens of GB.
DENSE_ENTRIES = 1 << 26
#: Rounds, and distinct candidates, of one block (a round alone may offer more).
BLOCK_ROUNDS = 256
BLOCK_ACTIONS = 4096


def dense_entries(data: ReplayData) -> int:
    """Entries of the largest array a dense evaluation of ``data`` builds: the reward
    model's features ``[context ; arm features ; arm one-hot]`` of every (round,
    distinct candidate), or the (round, candidate, slot) distributions."""
    distinct = len({arm for ids in data.candidate_ids for arm in ids})
    width = data.dim_user + data.dim_arm + distinct
    return data.n_rows * distinct * max(width, data.len_list)


def block_bounds(
    candidate_ids: Iterable[Sequence[str]],
    *,
    start: int = 0,
    rounds: int = BLOCK_ROUNDS,
    actions: int = BLOCK_ACTIONS,
    candidate_features: Iterable[Any] | None = None,
) -> list[tuple[int, int]]:
    """Consecutive rows, numbered from ``start``, in blocks ``[lo, hi)`` of at most
    ``rounds`` rounds and (but for a block of one round) ``actions`` distinct candidates;
    with ``candidate_features`` (each row's, in the order of its ids), a block also ends
    before a row that offers one of its candidates with other features, so that within a
    block each candidate has one feature vector, the one every row of it offered.

    The cut depends on the rows alone: the single-node evaluation and the held-out
    shards (:func:`training.shards.plan`) block a window the same way whatever its
    number of shards.
    """
    if rounds < 1 or actions < 1:
        raise ValueError(f"rounds and actions must be at least 1; got {rounds} and {actions}.")
    out: list[tuple[int, int]] = []
    lo = stop = start
    seen: dict[str, NDArray[np.float64] | None] = {}
    features = iter(candidate_features) if candidate_features is not None else None
    for i, ids in enumerate(candidate_ids, start):
        rows = None if features is None else np.asarray(next(features), dtype=np.float64)
        fresh = set(ids) - seen.keys()
        moved = rows is not None and any(
            (held := seen.get(arm)) is not None and not np.array_equal(held, row)
            for arm, row in zip(ids, rows, strict=True)
        )
        if i > lo and (i - lo >= rounds or len(seen) + len(fresh) > actions or moved):
            out.append((lo, i))
            lo, seen = i, {}
        for k, arm in enumerate(ids):
            seen.setdefault(arm, None if rows is None else rows[k])
        stop = i + 1
    if stop > lo:
        out.append((lo, stop))
    return out


def blocks_of(data: ReplayData) -> list[slice]:
    """The rows of ``data`` in the blocks of :func:`block_bounds` (by features too)."""
    bounds = block_bounds(data.candidate_ids, candidate_features=data.candidate_features)
    return [slice(lo, hi) for lo, hi in bounds]


def features_vary(data: ReplayData) -> bool:
    """Whether some candidate is offered with different features in different rows (a
    client that sends each item's price or freshness with the request)."""
    first: dict[str, NDArray[np.float64]] = {}
    for ids, rows in zip(data.candidate_ids, data.candidate_features, strict=True):
        for arm, row in zip(ids, rows, strict=True):
            held = first.setdefault(arm, row)
            if held is not row and not np.array_equal(held, row):
                return True
    return False


def logged_batch(data: ReplayData) -> LoggedBatch:
    """The replay rows as a :class:`LoggedBatch` over the union of their candidate sets.

    An arm's features are taken from its first appearance in the rows, so each arm must
    have one feature vector in them (:func:`features_vary`; :func:`blocks_of` cuts a
    window so that each block does); each row marks
    which arms it actually offered (``available``). Slate rows keep their position
    (``positions`` / ``len_list``, with the marginal propensity at it); rows whose
    propensity at their position was not logged (NaN) are left out.
    """
    known = np.isfinite(data.propensities)
    if not known.all():
        data = data.subset(np.flatnonzero(known))
    index: dict[str, int] = {}
    feats: list[np.ndarray] = []
    for ids, rows in zip(data.candidate_ids, data.candidate_features, strict=True):
        for arm, row in zip(ids, rows, strict=True):
            if arm not in index:
                index[arm] = len(index)
                feats.append(row)
    k = len(index)
    available = np.zeros((data.n_rows, k), dtype=bool)
    for i, ids in enumerate(data.candidate_ids):
        available[i, [index[a] for a in ids]] = True
    candidates = Candidates(tuple(index), np.asarray(feats, dtype=np.float64).reshape(k, -1))
    actions = np.array([index[a] for a in data.arm_ids], dtype=np.intp)
    return LoggedBatch(
        contexts=data.contexts,
        candidates=candidates,
        actions=actions,
        rewards=data.rewards,
        pscore=data.propensities,
        positions=data.row_positions,
        len_list=data.len_list,
        available=None if available.all() else available,
        user_hashes=None if data.user_hashes is None else tuple(data.user_hashes),
    )


def logging_matrix(data: ReplayData, batch: LoggedBatch) -> np.ndarray:
    """The logging policy's probabilities (n, n_actions) over ``batch``'s actions: 0 for an
    action a row did not offer, NaN rows where the window has no logged probabilities."""
    index = {arm: j for j, arm in enumerate(batch.candidates.ids)}
    out = np.full((data.n_rows, len(index)), np.nan)
    if data.logging_probabilities is None:
        return out
    for i, (ids, probs) in enumerate(
        zip(data.candidate_ids, data.logging_probabilities, strict=True)
    ):
        if np.isfinite(probs).all():
            out[i] = 0.0
            out[i, [index[a] for a in ids]] = probs
    return out


def support_terms(
    data: ReplayData, batch: LoggedBatch, threshold: float, action_dist: np.ndarray
) -> tuple[float, int] | None:
    """:func:`validation.gate.unsupported_terms` of a policy's ``action_dist`` (n, K, 1)
    on the rows ``data`` (their ``batch``): the additive parts of the support check, so
    that the shards of a window can be summed; None for slates or rows without logged
    probabilities."""
    if batch.len_list > 1 or data.logging_probabilities is None:
        return None
    mu = logging_matrix(data, batch)  # NaN rows: not logged with their probabilities
    if not np.isfinite(mu).all(axis=1).any():
        return None
    return unsupported_terms(action_dist[:, :, 0], mu, threshold)


def candidate_dist(
    policy: Policy, batch: LoggedBatch, rng: np.random.Generator, slates: bool
) -> np.ndarray:
    """The policy's ``action_dist`` (n, K, len_list) as its estimates read it: position-wise
    for a slate window (``slates``), else one choice at every slot."""
    if slates and batch.len_list > 1:
        return slate_policy_action_dist(policy, batch, rng)
    return policy_action_dist(policy, batch, rng)


def support_of(
    policy: Policy, data: ReplayData, batch: LoggedBatch, threshold: float, seed: int
) -> float | WeightedSupport | None:
    """:func:`validation.gate.unsupported_mass` of ``policy`` on the held-out rows
    ``data`` (their ``batch``); for slates or a window without logged probabilities, the
    share estimated from its importance weights (:class:`validation.gate.WeightedSupport`)."""
    return _support_in_blocks(policy, [data], [batch], threshold, seed)


def support_from_dist(
    data: ReplayData, batch: LoggedBatch, threshold: float, dist: np.ndarray
) -> float | WeightedSupport | None:
    """:func:`support_of` from the candidate's ``action_dist`` its estimates read (the
    feedback of :func:`validation.ope.evaluate_policy`: no second pass of the policy)."""
    terms = support_terms(data, batch, threshold, dist)
    if terms is not None:
        return terms[0] / terms[1]
    return WeightedSupport.of(
        weight_terms(dist, batch.actions, batch.positions, batch.pscore, batch.len_list)
    )


def _support_in_blocks(
    policy: Policy,
    parts: list[ReplayData],
    batches: list[LoggedBatch],
    threshold: float,
    seed: int,
) -> float | WeightedSupport | None:
    """:func:`support_of` summed over the blocks of a blocked evaluation."""
    rng = np.random.default_rng(seed)
    mass = rounds = 0.0
    weights = np.zeros((max(b.len_list for b in batches), 3))
    for part, batch in zip(parts, batches, strict=True):
        dist = candidate_dist(policy, batch, rng, slates=batch.len_list > 1)
        terms = support_terms(part, batch, threshold, dist)
        if terms is not None:
            mass, rounds = mass + terms[0], rounds + terms[1]
        weights[: batch.len_list] += weight_terms(
            dist, batch.actions, batch.positions, batch.pscore, batch.len_list
        )
    return mass / rounds if rounds else WeightedSupport.of(weights)


@dataclass(frozen=True)
class PropensityFlags:
    """The held-out rows whose logged propensity is a Monte-Carlo estimate too uncertain
    for importance weighting (:func:`validation.ope.flag_propensity_error`): of ``rows``
    rows, ``monte_carlo`` logged an estimate with its standard error and ``flagged`` of
    those exceed ``max_rel_error``; ``examples`` names some of their decisions."""

    rows: int
    monte_carlo: int
    flagged: int
    max_rel_error: float = MAX_REL_ERROR
    examples: tuple[str, ...] = ()

    #: decisions named in ``examples``, at most
    EXAMPLES = 10

    @classmethod
    def of(cls, data: ReplayData) -> PropensityFlags:
        p = data.propensities
        se = data.propensity_ses if data.propensity_ses is not None else np.full(p.shape, np.nan)
        known = np.isfinite(p) & (p > 0.0)  # a slate position whose marginal is not logged
        flags = np.zeros(p.shape, dtype=bool)
        flags[known] = flag_propensity_error(p[known], se[known], MAX_REL_ERROR)
        named = [data.event_ids[i] for i in np.flatnonzero(flags)[: cls.EXAMPLES]]
        return cls(
            int(known.sum()),
            int(np.isfinite(se[known]).sum()),
            int(flags.sum()),
            examples=tuple(named),
        )

    def merge(self, other: PropensityFlags) -> PropensityFlags:
        return PropensityFlags(
            self.rows + other.rows,
            self.monte_carlo + other.monte_carlo,
            self.flagged + other.flagged,
            self.max_rel_error,
            (self.examples + other.examples)[: self.EXAMPLES],
        )

    def note(self) -> str | None:
        """A line for the OPE reports when some rows are flagged."""
        if not self.flagged:
            return None
        return (
            f"{self.flagged} of {self.rows} held-out rows have a Monte-Carlo propensity whose "
            f"relative standard error exceeds {self.max_rel_error:g}: their importance "
            f"weights are uncertain (e.g. decisions {', '.join(self.examples[:3])})."
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"examples": list(self.examples)}

    def to_arrays(self) -> dict[str, Any]:
        return {
            "propensity_flags": np.array([self.rows, self.monte_carlo, self.flagged]),
            "propensity_max_rel_error": np.array(self.max_rel_error),
            "propensity_examples": np.array(self.examples, dtype=np.str_),
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> PropensityFlags:
        rows, monte_carlo, flagged = (int(v) for v in arrays["propensity_flags"])
        examples = tuple(str(e) for e in arrays["propensity_examples"])
        bound = float(arrays["propensity_max_rel_error"])
        return cls(rows, monte_carlo, flagged, bound, examples)


@dataclass(frozen=True)
class EvaluationResult:
    """Both reports, the gate's decision and the held-out rows' propensity flags."""

    candidate: OPEReport
    production: OPEReport
    gate: GateDecision
    propensity: PropensityFlags | None = None
    #: the candidate minus production on the same rounds (None on the sharded path)
    difference: PairedDifference | None = None

    def __post_init__(self) -> None:
        note = None if self.propensity is None else self.propensity.note()
        if note is not None:  # in both reports, where their estimates are read
            for name in ("candidate", "production"):
                report = getattr(self, name)
                if note not in report.notes:
                    object.__setattr__(
                        self, name, dataclasses.replace(report, notes=(*report.notes, note))
                    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_dict(),
            "production": self.production.to_dict(),
            "gate": self.gate.to_dict(),
            "propensity_error": None if self.propensity is None else self.propensity.to_dict(),
            "difference": None if self.difference is None else self.difference.to_dict(),
        }

    def write_report(self, out_dir: str | Path) -> Path:
        """Write ``evaluation.json`` only (a gate check added after :meth:`write`: the
        plots show the estimates, which it does not change)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(strict_json(self.to_dict()), indent=2, default=str, allow_nan=False)
        (out / REPORT_FILE).write_text(text)
        return out

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics for both policies and the decision."""
        out = {
            **self.candidate.to_mlflow_metrics("ope.candidate"),
            **self.production.to_mlflow_metrics("ope.production"),
        }
        out["gate.promote"] = float(self.gate.promote)
        if self.difference is not None:
            for key in ("value", "ci_low", "ci_high"):
                if np.isfinite(figure := getattr(self.difference, key)):
                    out[f"ope.difference.{self.difference.estimator}.{key}"] = float(figure)
        for check in self.gate.checks:
            if check.name == "support":
                out["gate.unsupported_mass"] = check.value
        if self.propensity is not None:
            out["ope.propensity_monte_carlo_rows"] = float(self.propensity.monte_carlo)
            out["ope.propensity_flagged_rows"] = float(self.propensity.flagged)
        return out

    def write(self, out_dir: str | Path) -> Path:
        """Write ``evaluation.json`` and both interval plots into ``out_dir``."""
        out = self.write_report(out_dir)
        self.candidate.plot(out / "ope_candidate.png")
        self.production.plot(out / "ope_production.png")
        return out


def production_policy(
    path: str | Path | None,
    dim_user: int,
    dim_arm: int | None = None,
    *,
    digest: str | None = None,
    admission: Admission | None = None,
) -> tuple[Policy, str | None]:
    """The policy the candidate is compared with, and a note when it is not production's:
    the uniform policy when there is no production, when its state no longer loads (a
    version saved by an older banditops in a layout this one refuses; the service then
    serves its fallback, so that is what the candidate would replace) or when it takes
    other widths than the window's ``dim_user`` / ``dim_arm`` (the catalog's features
    changed: the service refuses production's requests of the new width and serves its
    fallback). Before, such a production stopped every retrain (upgrade helper, stop 45;
    a width change, hostile-data helper, stop 49).

    The state is loaded as the service loads it
    (:meth:`~eventstore.admission.Admission.registered_policy`): against the SHA-256 its
    registration recorded (``digest``; None: not checked) and under ``admission``'s
    limits (default: the settings' defaults), declared sizes checked before anything is
    allocated. A refused state (an artifact changed in the registry, one declaring more
    than the limits) does not load, as above. Before, the retrain read production with
    no check at all: 1 MB of deflated zeros declaring 1 GiB took 1.1 GiB of its memory
    (security audit)."""
    if path is None:
        return make_policy("uniform", dim_user=dim_user), None
    try:
        policy = (admission or Admission()).registered_policy(Path(path), digest)
    except ValueError as exc:  # AdmissionError too: refused, as one that does not load
        why = f"the production version's state does not load ({exc})"
    else:
        own_user, own_arm, _ = input_widths(policy)
        user_ok = own_user is None or own_user == dim_user
        arm_ok = dim_arm is None or own_arm == 0 or own_arm == dim_arm
        if user_ok and arm_ok:
            return policy, None
        why = (
            f"the production version takes dim_user={own_user}, dim_arm={own_arm}; the "
            f"window's decisions have dim_user={dim_user}, dim_arm={dim_arm}"
        )
    note = (
        f"{why}; compared with the uniform policy, what the service serves while it cannot "
        "use production"
    )
    log.warning("%s", note)
    return make_policy("uniform", dim_user=dim_user), note


def evaluate(
    candidate_state: str | Path,
    production_state: str | Path | None,
    replay: str | Path | ReplayData,
    *,
    holdout_fraction: float = HOLDOUT_FRACTION,
    rule: GateRule,
    n_resamples: int,
    seed: int = 0,
    out_dir: str | Path | None = None,
    production_digest: str | None = None,
    admission: Admission | None = None,
) -> EvaluationResult:
    """OPE of candidate and production on the held-out window, and the gate decision.

    ``replay`` is a file the retrain's extraction wrote (quarantined already) or data;
    a file of any other origin goes through :func:`training.replay.vetted_replay` first,
    as ``banditops evaluate`` does. Writes ``<out_dir>/evaluation.json`` and the interval
    plots when ``out_dir`` is given. Production's state is loaded against
    ``production_digest`` under ``admission`` (:func:`production_policy`).
    """
    data = replay if isinstance(replay, ReplayData) else load_replay(replay)
    _, holdout = data.split(holdout_fraction)
    candidate = load_policy(candidate_state)
    production, refused = production_policy(
        production_state,
        holdout.dim_user,
        holdout.dim_arm,
        digest=production_digest,
        admission=admission,
    )
    slates = holdout.len_list > 1  # position-wise: both policies rank the logged positions
    feedback: list[BanditFeedback] = []  # the rounds each was estimated on, for the pairing
    # one candidate table for the whole window scored every row with each item's
    # features from its first appearance: with features sent per request the policy was
    # judged on stale features (a model worth 0.83 estimated at 0.37, and rejected;
    # audit, stop 54). Blocks within which each item has one feature vector are exact.
    if not features_vary(holdout) and dense_entries(holdout) <= DENSE_ENTRIES:
        batch = logged_batch(holdout)
        rep_c, rep_p = (
            evaluate_policy(
                policy,
                batch,
                np.random.default_rng(seed),
                n_resamples=n_resamples,
                slates=slates,
                feedback_out=feedback,
            )
            for policy in (candidate, production)
        )
        # the candidate's distribution its estimates read (a slate's is a Monte-Carlo pass)
        dist = feedback[0].action_dist
        support = support_from_dist(holdout, batch, rule.support_threshold, dist)
        rewards = reward_range(batch.rewards)
    else:
        parts = [holdout.subset(block) for block in blocks_of(holdout)]
        batches = [logged_batch(part) for part in parts]
        rep_c, rep_p = (
            evaluate_policy_in_blocks(
                policy,
                batches,
                np.random.default_rng(seed),
                n_resamples=n_resamples,
                slates=slates,
                feedback_out=feedback,
            )
            for policy in (candidate, production)
        )
        support = _support_in_blocks(candidate, parts, batches, rule.support_threshold, seed)
        rewards = merge_ranges(reward_range(b.rewards) for b in batches)
    if refused is not None:
        rep_p = dataclasses.replace(rep_p, notes=(*rep_p.notes, refused))
    difference = paired_difference(
        feedback[0],
        feedback[1],
        rule.estimator,
        np.random.default_rng(seed),
        n_resamples=n_resamples,
        level=rule.difference_level,
    )
    gate = decide(rep_c, rep_p, rule, support, rewards, difference)
    result = EvaluationResult(rep_c, rep_p, gate, PropensityFlags.of(holdout), difference)
    if out_dir is not None:
        result.write(out_dir)
    return result
