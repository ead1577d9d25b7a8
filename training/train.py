"""Train a candidate policy on a replay window and rebuild its head.

The features are built by the policy itself through ``bandit_core.FeatureMap`` — the same
builder serving uses — from the logged context, the chosen arm's features and its id.

* linear policies train by rebuilding their head from the training rows;
* neural policies fill their replay buffer (fast path only), train the network on it in
  ``curve_points`` stages (each stage one call of the slow path's trainer, so the learning
  curve records train and validation loss after every stage), then rebuild the head from
  every stored row re-encoded by the final network.

A "diagnosing linear failure" report compares a linear head with a network of the same
shape on one split of the training rows.

Slates: every shown item is a training row with its position (:mod:`training.replay`).
When the window holds slates, a shared policy learns a position bias by default: it is
trained on ``[x_arm ; e_position]`` and saved as a :class:`bandit_core.PositionBias` with
``position_slots`` = the longest slate of the window (``TrainConfig.position_slots``
overrides it; 0 turns it off), so the served model scores position j of a slate with
that position's one-hot and learns each reward at the position it names.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bandit_core import MAX_ABS_INPUT, Policy, PositionBias, load_policy, make_policy, save_policy
from bandit_core.catalog import ALGORITHMS, policy_spec
from bandit_core.diagnostics import (
    MIN_ROWS,
    VALIDATION_FRACTION,
    diagnosable,
    diagnose_linear_failure,
)
from bandit_core.head_statistics import LinearHeadPolicy
from bandit_core.policies.position import split_position, update_batch_skipping
from bandit_core.policies.registry import catalog_policy
from training.replay import HOLDOUT_FRACTION, ReplayData, load_replay

log = logging.getLogger(__name__)

STATE_FILE = "policy_state.npz"
RESULT_FILE = "train.json"
#: Never retrain the network on the request path: the slow path runs nightly.
NO_ONLINE_RETRAIN = 2**31 - 1


@dataclass(frozen=True)
class TrainConfig:
    """What to train.

    Parameters
    ----------
    algorithm : str
        A registered policy name (default ``lints``; the nightly run compares candidates,
        :mod:`training.challengers`).
    options : dict
        Policy options (``alpha``, ``hidden``, ``epochs``, ``lambda_prior``…); ``dim_user``
        and ``dim_arm`` come from the data.
    holdout_fraction : float
        The last share of the window (in time) held out for the offline evaluation.
    min_rows : int
        Fewest decisions the replay window must hold (the data validation's row floor,
        ``PipelineSettings.retrain_min_rows`` in a retrain: one number for both); 1, the
        default, sets none.
    curve_points : int
        Stages of the neural learning curve.
    seed : int
        Seeds the network, its training and the diagnostic split.
    position_slots : int or None
        Positions of the position-bias term. None (default): the longest slate in the
        window when it holds slates and the policy uses arm features, else none; 0: no
        position bias; n > 0: n slots (at least the longest slate; shared policies only).
        May also be given as ``options["position_slots"]`` (the retrain DAG's
        ``policy_options``): the position bias is part of the served policy.
    """

    algorithm: str = "lints"
    options: dict[str, Any] = field(default_factory=dict)
    holdout_fraction: float = HOLDOUT_FRACTION
    min_rows: int = 1
    curve_points: int = 5
    seed: int = 0
    position_slots: int | None = None

    def __post_init__(self) -> None:
        if "position_slots" in self.options:
            if self.position_slots is not None:
                raise ValueError("position_slots is given twice (field and options); give it once.")
            options = dict(self.options)
            object.__setattr__(self, "position_slots", options.pop("position_slots"))
            object.__setattr__(self, "options", options)
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm must be one of {', '.join(ALGORITHMS)}; got {self.algorithm!r}."
            )
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1); got {self.holdout_fraction!r}.")
        if self.min_rows < 1 or self.curve_points < 1:
            raise ValueError("min_rows and curve_points must be at least 1.")
        for key in ("dim_user", "dim_arm"):
            if key in self.options:
                raise ValueError(f"options must not set {key!r}: it comes from the replay data.")
        if self.position_slots is not None and (
            isinstance(self.position_slots, bool)
            or not isinstance(self.position_slots, int)
            or self.position_slots < 0
        ):
            raise ValueError(
                f"position_slots must be None or an int >= 0; got {self.position_slots!r}."
            )

    def uses_arm_features(self) -> bool:
        """Whether the algorithm scores candidates on their features (shared models)."""
        return policy_spec(self.algorithm).uses_arm_features(self.options)

    def slots_for(self, data: ReplayData) -> int:
        """The position slots to train with on ``data`` (see ``position_slots``)."""
        if self.position_slots is None:
            return data.len_list if data.len_list > 1 and self.uses_arm_features() else 0
        if self.position_slots and not self.uses_arm_features():
            raise ValueError(
                f"position_slots needs a policy that uses arm features; {self.algorithm!r} "
                "does not (use a shared or neural policy, or position_slots=0)."
            )
        return self.position_slots


@dataclass(frozen=True)
class TrainResult:
    """Paths and numbers a training run leaves behind (all JSON-able)."""

    state_path: str
    algorithm: str
    n_train: int
    n_holdout: int
    metrics: dict[str, float]
    curve: list[dict[str, float]]
    diagnostics: str
    position_slots: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    challengers: list[dict[str, Any]] = field(default_factory=list)
    #: The training rows (positions in the replay window) the head refused, which a
    #: network's buffer left out too: a sharded rebuild leaves them out as well
    #: (:func:`training.shards.shard_statistics`), so that it learns the rows the
    #: single-node rebuild learns even where the network that judged them has changed.
    refused_rows: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, path: str | Path) -> TrainResult:
        return cls(**json.loads(Path(path).read_text()))


def build_policy(config: TrainConfig, data: ReplayData, n_train: int) -> Policy:
    options = dict(config.options)
    options.update(dim_user=data.dim_user)
    spec = policy_spec(config.algorithm)
    if spec.arm_features:
        options["dim_arm"] = data.dim_arm
    if spec.trains_network:
        options.setdefault("seed", config.seed)
        options["retrain_every"] = NO_ONLINE_RETRAIN
        options["buffer_size"] = max(n_train, int(options.get("buffer_size") or 0))
        options.setdefault("loss", "bce" if set(np.unique(data.rewards)) <= {0.0, 1.0} else "mse")
    return make_policy(config.algorithm, **options)


def _mse(policy: Any, data: ReplayData) -> float:
    """Validation loss of the network's point prediction for the logged arms."""
    inputs = policy.features.build_rows(data.contexts, data.arm_features, data.arm_ids)
    return float(np.mean((policy.predict_reward(inputs) - data.rewards) ** 2))


def _train_neural(
    policy: Any, train: ReplayData, holdout: ReplayData | None, points: int
) -> tuple[list[dict[str, float]], list[int]]:
    """Fill the buffer (fast path only), then one slow-path training in ``points``
    stages, recording train and validation loss after each (the learning curve; no
    validation loss for the whole-window refit, which holds nothing out). The rows the
    head refuses are left out of the buffer too, named (:func:`learn_skipping`); their
    indices are the second item."""
    refused = learn_skipping(policy, train)
    curve: list[dict[str, float]] = []

    def record(epochs: int, loss: float) -> None:
        point = {"epoch": float(epochs), "train_loss": float(loss)}
        if holdout is not None:
            point["val_loss"] = _mse(policy, holdout)
        curve.append(point)

    policy.retrain(stages=points, after_stage=record)
    return curve, refused


def train(
    replay_path: str | Path,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    whole_window: bool = False,
) -> TrainResult:
    """Train ``config.algorithm`` on the first part of the replay window (the part the
    offline evaluation does not score), or with ``whole_window`` on every row of it — the
    refit of the version that is registered: the same procedure, the same seed, no rows
    held out (and no diagnostic, which the evaluated training already computed).

    Writes ``<out_dir>/policy_state.npz`` and ``<out_dir>/train.json`` (overwriting a
    previous attempt of the same run) and returns the result.
    """
    data = load_replay(replay_path)
    slots = config.slots_for(data)
    if slots:
        data = data.with_position_features(slots)
    train_part: ReplayData
    holdout: ReplayData | None
    if whole_window:
        train_part, holdout = data, None
    else:
        train_part, holdout = data.split(config.holdout_fraction)
    decisions = len(set(data.event_ids))
    if decisions < config.min_rows:
        raise ValueError(
            f"the replay window has {decisions} decisions; min_rows is {config.min_rows}."
        )
    policy: Any = build_policy(config, data, train_part.n_rows)
    if policy_spec(config.algorithm).trains_network:
        curve, refused = _train_neural(policy, train_part, holdout, config.curve_points)
    else:
        refused = rebuild_rows(policy, train_part)
        curve = []
    diag = None if whole_window else _diagnose(policy, train_part, config.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = save_policy(PositionBias(policy, slots) if slots else policy, out / STATE_FILE)
    n_holdout = 0 if holdout is None else holdout.n_rows
    metrics = {
        **({} if diag is None else diag.as_metrics()),
        "n_train": float(train_part.n_rows),
        "n_holdout": float(n_holdout),
        "position_slots": float(slots),
        "rows_refused": float(len(refused)),
    }
    if curve:
        metrics.update({k: v for k, v in curve[-1].items() if k != "epoch"})
    result = TrainResult(
        state_path=str(state),
        algorithm=config.algorithm,
        n_train=train_part.n_rows,
        n_holdout=n_holdout,
        metrics=metrics,
        curve=curve,
        diagnostics="" if diag is None else diag.summary(),
        position_slots=slots,
        options=dict(config.options),
        refused_rows=[int(i) for i in refused],
    )
    (out / RESULT_FILE).write_text(result.to_json())
    return result


def rebuild_rows(policy: Any, part: ReplayData) -> list[int]:
    """Rebuild ``policy``'s head from ``part``'s rows; the indices of the rows it refused.

    When the head refuses the whole rebuild (a precision that is not positive definite:
    one decision whose interaction features, products of inputs near the bound, are
    ~10¹² failed every nightly run of an interaction model while it stayed in the
    window), the rows are learnt in order from the prior, skipping those the head
    refuses, as recovery and replica sync do
    (:func:`bandit_core.policies.position.update_batch_skipping`), and they are named
    in the log.
    """
    try:
        policy.rebuild(part.contexts, part.arm_ids, part.rewards, part.arm_features)
        return []
    except (ValueError, np.linalg.LinAlgError) as exc:
        log.warning("the head refused the rebuild (%s); learning the rows one batch at a time", exc)
    none = slice(0, 0)
    policy.rebuild(
        part.contexts[none], part.arm_ids[none], part.rewards[none], part.arm_features[none]
    )
    return learn_skipping(policy, part)


def learn_skipping(policy: Any, part: ReplayData) -> list[int]:
    """Learn ``part``'s rows in order, skipping those the policy refuses (one batch when
    it refuses none: :func:`~bandit_core.policies.position.update_batch_skipping`); the
    indices of the refused rows, named in the log. A row out of scale beside the others
    (``outlier_ratio``) failed a neural policy's whole retrain, where the service had
    refused that one reward."""
    refused = update_batch_skipping(
        policy, part.contexts, part.arm_ids, part.rewards, part.arm_features, None
    )
    if refused:
        named = ", ".join(repr(str(part.event_ids[i])[:64]) for i in refused[:5])
        log.warning(
            "the head refused %d of %d rows (events %s%s): left out",
            len(refused),
            part.n_rows,
            named,
            ", …" if len(refused) > 5 else "",
        )
    return refused


def _diagnose(policy: Any, data: ReplayData, seed: int) -> Any:
    policy = catalog_policy(policy)  # the model inside its overlap floor
    config = policy.config if policy_spec(policy.name).config_class() is not None else None
    features = None if config is None else config.feature_map()
    if features is not None:
        inputs = features.build_rows(data.contexts, data.arm_features, data.arm_ids)
    else:  # per-arm models: context and a one-hot of the arm
        arms = sorted(set(data.arm_ids))
        one_hot = np.eye(len(arms))[[arms.index(a) for a in data.arm_ids]]
        inputs = np.hstack([data.contexts, one_hot])
    hidden = tuple(getattr(config, "hidden", (50,)))
    # rows whose model features pass the bound every input is held to (interactions of
    # inputs near it) are left out of the diagnostic, not the run
    within = np.all(np.abs(inputs) <= MAX_ABS_INPUT, axis=1)
    if not within.any():
        log.warning("no row's model features are within %g: no diagnostic", MAX_ABS_INPUT)
        return None
    if not diagnosable(int(within.sum())):  # a window of 28 rows passed validation, then
        # failed here naming this optional step's internals (audit, stop 54)
        log.warning(
            "%d training rows are too few for the linear-failure diagnostic (it holds out "
            "%g of them, at least %d on each side): no diagnostic",
            int(within.sum()),
            VALIDATION_FRACTION,
            MIN_ROWS,
        )
        return None
    if not within.all():
        log.warning(
            "the linear-failure diagnostic leaves out %d rows whose model features exceed %g",
            int((~within).sum()),
            MAX_ABS_INPUT,
        )
    return diagnose_linear_failure(
        inputs[within], data.rewards[within], np.random.default_rng(seed), hidden=hidden, epochs=20
    )


def rebuild_head(
    state_path: str | Path,
    replay_path: str | Path,
    out_path: str | Path,
    holdout_fraction: float | None = HOLDOUT_FRACTION,
) -> Path:
    """Rebuild the Bayesian head completely, on the final network, from the training rows.

    Neural policies re-encode every stored row with their current network (chunked);
    linear policies rebuild their head from the training part of the replay window. The
    held-out part is left out so the offline evaluation stays honest;
    ``holdout_fraction`` None (the whole-window refit) rebuilds from every row. A
    position-aware model's head is rebuilt on its rows' ``[x_arm ; e_position]``.
    """
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    loaded: Any = load_policy(state_path)
    policy, slots = split_position(loaded)  # an overlap floor forwards the rebuild
    spec = policy_spec(catalog_policy(policy).name)
    if spec.trains_network:
        if spec.linear_head:  # re-encode every stored row with the final network
            left_out = policy.rebuild_head()
            if left_out.size:
                log.warning(
                    "%d of the %d buffered rows are out of scale under the final network: "
                    "left out of the head (buffer rows %s%s)",
                    left_out.size,
                    policy.buffer_.inputs.shape[0],
                    left_out[:5].tolist(),
                    ", …" if left_out.size > 5 else "",
                )
    else:
        data = load_replay(replay_path)
        if slots:
            data = data.with_position_features(slots)
        train_part = data if holdout_fraction is None else data.split(holdout_fraction)[0]
        rebuild_rows(policy, train_part)
    return save_policy(loaded, out_path)


def head_rows(state_path: str | Path) -> int | None:
    """The rows in the Bayesian head's statistics of a saved policy (its ``count_``
    summed over heads, through wrappers); None for a policy without one. A discounted
    head counts its rows discounted."""
    policy: Any = load_policy(state_path)
    while policy is not None:
        if isinstance(policy, LinearHeadPolicy):
            return round(float(np.sum(policy.head.count_)))
        policy = getattr(policy, "inner", None)
    return None
