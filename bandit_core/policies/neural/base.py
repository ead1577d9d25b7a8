"""What the neural policies share: config, input checks, replay buffer, the slow-path
trigger and lossless state.

A neural policy scores candidate ``a`` for context ``x`` from the encoder input
``z(x, a) = [x_user ; x_arm ; x_user ⊗ x_arm (optional) ; one-hot(arm id) (optional)]``
built by :class:`~bandit_core.features.FeatureMap`, the same φ the shared linear models
use. With ``interactions`` the network starts from the hybrid linear model's features
(one ReLU layer on ``[x ; a]`` alone represents per-arm functions poorly when the arm
features are one-hot ids). Learning has two speeds:

* **fast** — every reward is stored in the replay buffer and, for policies with a
  Bayesian head, added to the head at once (O(d²)); the network is not touched;
* **slow** — every ``retrain_every`` observations (or on demand through :meth:`retrain`)
  the network is trained on the whole buffer, then :meth:`_after_retrain` lets the policy
  refresh whatever depends on it (neural-linear rebuilds its head from scratch).

Randomness: decisions use the ``rng`` passed to ``select``; initialisation and training
(mini-batch order, bootstrap weights, dropout masks) use a CPU :class:`torch.Generator`
seeded from ``numpy.random.default_rng(seed)``, whose state is part of the policy state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, cast

import numpy as np
import torch
from numpy.typing import NDArray

from bandit_core._validation import (
    Constraint,
    FloatArray,
    Interval,
    IsBool,
    IsStr,
    LayerWidths,
    OneOf,
    OptionalOf,
    as_finite_float,
    delegate,
    validate_params,
)
from bandit_core.exploration import tied_with_max
from bandit_core.features import FEATURE_PARAMS, FeatureMap
from bandit_core.nets import (
    ConcreteDropout,
    MemberMLP,
    TrainSpec,
    generator_from,
    generator_state,
    load_module_arrays,
    module_arrays,
    resolve_device,
    restore_generator,
    to_numpy,
    to_tensor,
    train_network,
)
from bandit_core.policies.base import (
    check_candidates,
    check_context,
    check_contexts,
    check_rng,
    check_updates,
    to_decision,
)
from bandit_core.policies.linear import build_config
from bandit_core.policies.neural.buffer import ReplayBuffer
from bandit_core.types import SCHEMA_VERSION, Candidates, Decision, DecisionBatch, PolicyState
from bandit_core.work import PER_CANDIDATE, mlp_work

IntArray = NDArray[np.intp]

_NEURAL_PARAMS: dict[str, Constraint] = {
    "dim_user": Interval(int, 0, None),
    "dim_arm": Interval(int, 0, None),
    "interactions": IsBool(),
    "arm_embedding": Interval(int, 0, None),
    "retrain_every": Interval(int, 1, None),
    "epochs": Interval(int, 1, None),
    "max_train_steps": Interval(int, 1, None),
    "batch_size": Interval(int, 1, None),
    "learning_rate": Interval(float, 0.0, None, closed="neither"),
    "grad_clip": Interval(float, 0.0, None, closed="neither"),
    "loss": OneOf(("mse", "bce")),
    "buffer_size": OptionalOf(Interval(int, 1, None)),
    "seed": Interval(int, 0, None),
    "hidden": LayerWidths(),
    "device": IsStr(),
    **delegate("FeatureMap", FEATURE_PARAMS, ("arm_vocabulary",)),
}


@dataclass(frozen=True, kw_only=True)
class NeuralConfig:
    """Hyperparameters every neural policy shares.

    Parameters
    ----------
    dim_user, dim_arm : int
        Widths of the user context and of each candidate's features.
    arm_vocabulary : tuple of str
        Arms that get a one-hot block in the encoder input (empty for none).
    interactions : bool
        Add the ``x_user ⊗ x_arm`` block to the encoder input.
    arm_embedding : int
        Add ``x_user ⊗ e(arm id)`` with a hashed ``arm_embedding``-dimensional arm
        embedding (0: none): an interaction that does not widen with the number of arms.
    hidden : tuple of int
        Hidden layer widths of the ReLU network (Riquelme et al. 2018 use ``(50,)`` or
        ``(100, 100)``).
    retrain_every : int
        Observations between two slow-path trainings.
    epochs, max_train_steps, batch_size, learning_rate, grad_clip
        Each training: ``epochs`` shuffled passes over the buffer in mini-batches of
        ``batch_size`` with Adam at ``learning_rate``, gradient norm clipped at
        ``grad_clip``, at most ``max_train_steps`` steps.
    loss : {"mse", "bce"}
        Squared error, or binary cross-entropy for rewards in {0, 1} (the network output
        is then a logit and the scores are probabilities).
    buffer_size : int or None
        Keep only the last ``buffer_size`` observations; ``None`` keeps all.
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda[:i]"``.
    seed : int
        Seeds initialisation and training (see the module docstring).
    """

    dim_user: int
    dim_arm: int = 0
    arm_vocabulary: tuple[str, ...] = ()
    interactions: bool = False
    arm_embedding: int = 0
    hidden: tuple[int, ...] = (50,)
    retrain_every: int = 50
    epochs: int = 5
    max_train_steps: int = 200
    batch_size: int = 512
    learning_rate: float = 1e-3
    grad_clip: float = 5.0
    loss: str = "mse"
    buffer_size: int | None = None
    device: str = "auto"
    seed: int = 0

    #: constraints of the subclass's own fields, merged with the shared table
    extra_params: ClassVar[dict[str, Constraint]] = {}

    @classmethod
    def constraints(cls) -> dict[str, Constraint]:
        """The constraint of every field (the contract suite checks that none is missing)."""
        return {**_NEURAL_PARAMS, **cls.extra_params}

    def __post_init__(self) -> None:
        name = type(self).__name__
        object.__setattr__(self, "arm_vocabulary", tuple(self.arm_vocabulary))
        validate_params(name, {"hidden": self.hidden}, _NEURAL_PARAMS)
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        validate_params(name, asdict(self), self.constraints())
        resolve_device(self.device)
        self.feature_map()

    def feature_map(self) -> FeatureMap:
        """Builds the encoder input ``[x_user ; x_arm ; x_user ⊗ x_arm ; one-hot ; x_user ⊗ e]``."""
        return FeatureMap(
            self.dim_user, self.dim_arm, self.interactions, self.arm_vocabulary, self.arm_embedding
        )

    def train_spec(self, dropout: float = 0.0) -> TrainSpec:
        return TrainSpec(
            epochs=self.epochs,
            max_steps=self.max_train_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            grad_clip=self.grad_clip,
            loss=self.loss,
            dropout=dropout,
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        out["arm_vocabulary"] = list(self.arm_vocabulary)
        return out


class NeuralPolicy:
    """Config + network + replay buffer; subclasses define :meth:`_choose`.

    Learned state (trailing underscore): ``net_`` the network, ``buffer_`` the replay
    buffer, ``since_retrain_`` observations since the last training, ``n_retrains_`` and
    ``last_train_loss_``.
    """

    name: str
    config_class: ClassVar[type[NeuralConfig]]

    def __init__(self, config: NeuralConfig | None = None, **options: Any) -> None:
        # linear.build_config is typed for linear configs; the logic is the same
        built = build_config(cast(Any, self.config_class), self.name, config, options)
        self.config: NeuralConfig = built
        self.features = self.config.feature_map()
        self.device = resolve_device(self.config.device)
        self.generator_ = generator_from(np.random.default_rng(self.config.seed))
        self.net_ = MemberMLP(
            self.features.dim, self.config.hidden, self._members(), self.generator_
        ).to(self.device)
        self.net_.eval()
        self.buffer_ = ReplayBuffer(self.features.dim, self.config.buffer_size, self._n_weights())
        self.since_retrain_ = 0
        self.n_retrains_ = 0
        self.last_train_loss_ = float("nan")
        self.model_version: str | None = None

    # -- hooks ----------------------------------------------------------------
    def _members(self) -> int:
        """Networks trained side by side (ensemble members)."""
        return 1

    def _n_weights(self) -> int:
        """Per-row bootstrap weights stored in the buffer (0: unweighted training)."""
        return 0

    def _passes(self) -> int:
        """Forward passes of the network per decision (members, or dropout passes)."""
        return self._members()

    def _head_work(self, n: int) -> int:
        """Work of a linear head on the network's features (none here)."""
        return 0

    def decision_work(self, n: int) -> int:
        """Work units of one choice among ``n`` candidates (:mod:`bandit_core.work`):
        the network's forward passes, then any head."""
        forward = mlp_work(self.features.dim, self.config.hidden)
        return n * (self._passes() * forward + PER_CANDIDATE) + self._head_work(n)

    def _choose(
        self, inputs: FloatArray, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
        """``inputs`` (n, K, D) → choice (n,), probabilities (n, K), scores (n, K) and the
        point estimate (n, K) used to flag exploration."""
        raise NotImplementedError

    def _choose_se(
        self, inputs: FloatArray, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray, FloatArray | None]:
        """:meth:`_choose` and the propensities' standard errors (None: exact)."""
        return (*self._choose(inputs, rng), None)

    def _learn_fast(self, inputs: FloatArray, rewards: FloatArray) -> None:
        """Fast path for rows ``inputs`` (m, D); the network must not change here."""

    def _row_weights(self, m: int) -> FloatArray | None:
        return None

    def _after_retrain(self) -> None:
        """Refresh what depends on the network (called after every training)."""

    def _concrete(self) -> ConcreteDropout | None:
        """Learned dropout rates trained with the network, if any."""
        return None

    def _extra_arrays(self) -> dict[str, NDArray[Any]]:
        return {}

    def _load_extra(self, arrays: dict[str, NDArray[Any]]) -> None:
        pass

    # -- shared pieces ---------------------------------------------------------
    @property
    def network(self) -> MemberMLP:
        return self.net_

    def _tensor(self, values: FloatArray) -> torch.Tensor:
        return to_tensor(values, self.device)

    def _loss_link(self, out: torch.Tensor) -> torch.Tensor:
        """Network output → predicted mean reward (sigmoid of the logit under BCE)."""
        return torch.sigmoid(out) if self.config.loss == "bce" else out

    # -- decisions ---------------------------------------------------------------
    def select(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        x = check_context(context, self.config.dim_user)
        cands = check_candidates(candidates, self.config.dim_arm, self.name)
        batch, explored = self._decide(x, cands, check_rng(rng))
        return to_decision(batch, cands, bool(explored[0]), self.model_version)

    def select_batch(
        self, contexts: Any, candidates: Any, rng: np.random.Generator
    ) -> DecisionBatch:
        x = check_contexts(contexts, self.config.dim_user)
        cands = check_candidates(candidates, self.config.dim_arm, self.name)
        if x.shape[0] == 0:
            return DecisionBatch.empty(len(cands.ids), self.name)
        return self._decide(x, cands, check_rng(rng))[0]

    def _decide(
        self, contexts: FloatArray, candidates: Candidates, rng: np.random.Generator
    ) -> tuple[DecisionBatch, NDArray[np.bool_]]:
        inputs = self.features.build(contexts, candidates.features, candidates.ids)
        choice, probs, scores, mean, se = self._choose_se(inputs, rng)
        rows = np.arange(choice.shape[0])
        batch = DecisionBatch(choice, probs[rows, choice], probs, scores, self.name, se)
        return batch, ~tied_with_max(mean)[rows, choice]

    # -- learning ------------------------------------------------------------------
    def update(self, context: Any, arm_id: Any, reward: Any, arm_features: Any = None) -> None:
        feats = None if arm_features is None else [arm_features]
        self.update_batch(check_context(context, self.config.dim_user), [arm_id], [reward], feats)

    def update_batch(
        self, contexts: Any, arm_ids: Any, rewards: Any, arm_features: Any = None
    ) -> None:
        """Learn from ``n`` rewards in order (fast path per row, slow path at every
        ``retrain_every``-th observation); equal to ``n`` calls of :meth:`update`."""
        x, ids, r, feats = check_updates(
            contexts, arm_ids, rewards, arm_features, self.config.dim_user, self.config.dim_arm
        )
        if self.config.loss == "bce" and ((r < 0.0) | (r > 1.0)).any():
            bad = float(r[(r < 0.0) | (r > 1.0)][0])
            raise ValueError(f"rewards must lie in [0, 1] with loss='bce'; got {bad!r}.")
        if not ids:
            return
        inputs = self.features.build_rows(x, feats, ids)
        # a retraining due in this batch can fail (a network that diverges, a head whose
        # precision is numerically singular on the new features): then nothing is learnt
        due = self.since_retrain_ + inputs.shape[0] >= self.config.retrain_every
        saved = self.to_state() if due else None
        try:
            start = 0
            while start < inputs.shape[0]:
                room = self.config.retrain_every - self.since_retrain_
                stop = min(inputs.shape[0], start + room)
                rows = slice(start, stop)
                self._learn_fast(inputs[rows], r[rows])
                self.buffer_.add(inputs[rows], r[rows], self._row_weights(stop - start))
                self.since_retrain_ += stop - start
                if self.since_retrain_ >= self.config.retrain_every:
                    self._retrain()
                start = stop
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            if saved is None:
                raise
            self._restore(saved)
            raise ValueError(
                f"retraining on these rewards failed, so none of them was learnt: {exc}"
            ) from exc

    def revise_reward(
        self,
        context: Any,
        arm_id: Any,
        old_reward: Any,
        new_reward: Any,
        arm_features: Any = None,
    ) -> None:
        """The reward of an update already made becomes ``new_reward``: the fast-path
        model moves as if it had learnt ``new_reward`` at once, and the stored observation
        (the slow path's training data) carries it from now on.

        Raises ``ValueError`` for bad input, when no such observation is stored, and for
        policies whose fast path cannot revise (ensemble, dropout).
        """
        feats = None if arm_features is None else [arm_features]
        x, ids, r, f = check_updates(
            check_context(context, self.config.dim_user),
            [arm_id],
            [new_reward],
            feats,
            self.config.dim_user,
            self.config.dim_arm,
        )
        old = as_finite_float("old_reward", old_reward)
        inputs = self.features.build_rows(x, f, ids)[0]
        index = self.buffer_.find(inputs, old)
        self._revise_fast(inputs, old, float(r[0]))
        self.buffer_.set_reward(index, float(r[0]))

    def _revise_fast(self, inputs: FloatArray, old: float, new: float) -> None:
        raise ValueError(
            f"{self.name} cannot revise a learnt reward online (its fast path keeps no "
            "additive statistics); the nightly retrain learns the revised reward."
        )

    def retrain(
        self, stages: int = 1, after_stage: Callable[[int, float], None] | None = None
    ) -> float:
        """Slow path, also callable on demand: train the network on the whole buffer,
        then refresh what depends on it. Returns the last epoch's mean training loss.

        Parameters
        ----------
        stages : int
            Split the ``epochs`` into runs of ``max(1, epochs // stages)`` epochs (the
            last one shorter), each a call of the trainer that goes on with the same
            network, optimiser seed stream and generator — so a learning curve can be
            recorded between them (the nightly retrain's).
        after_stage : callable or None
            Called as ``after_stage(epochs_done, stage_loss)`` after every stage, before
            the head (or whatever depends on the network) is refreshed.
        """
        validate_params("retrain", {"stages": stages}, {"stages": Interval(int, 1, None)})
        if after_stage is not None and not callable(after_stage):
            raise ValueError(
                f"after_stage must be callable or None; got {type(after_stage).__name__}."
            )
        saved = self.to_state()
        try:
            return self._retrain(stages, after_stage)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            self._restore(saved)
            raise ValueError(f"retraining failed; the policy is as it was before: {exc}") from exc
        except BaseException:  # the caller's after_stage raised, or an interrupt
            self._restore(saved)
            raise

    def _retrain(
        self, stages: int = 1, after_stage: Callable[[int, float], None] | None = None
    ) -> float:
        """:meth:`retrain` without its rollback (the caller restores on failure)."""
        if len(self.buffer_):
            spec = self._train_spec()
            inputs = self._tensor(self.buffer_.inputs)
            targets = self._tensor(self.buffer_.rewards)
            weights = None
            if self.buffer_.n_weights:
                weights = self._tensor(self.buffer_.weights.T)
            per_stage = max(1, spec.epochs // stages)
            done = 0
            while done < spec.epochs:
                epochs = min(per_stage, spec.epochs - done)
                self.last_train_loss_ = train_network(
                    self.net_,
                    inputs,
                    targets,
                    replace(spec, epochs=epochs),
                    self.generator_,
                    weights,
                    self._concrete(),
                )
                done += epochs
                if after_stage is not None:
                    after_stage(done, self.last_train_loss_)
        self._after_retrain()
        from bandit_core.policies.registry import check_state_arrays

        try:  # a network that diverged (a learning rate too large for these rewards)
            check_state_arrays(self.to_state())
        except ValueError as exc:
            raise ValueError(f"the retrained model is not finite: {exc}") from exc
        self.since_retrain_ = 0
        self.n_retrains_ += 1
        return self.last_train_loss_

    def predict_reward(self, inputs: FloatArray) -> FloatArray:
        """The network's point prediction of the mean reward for encoder inputs
        ``inputs`` (n, D) → (n,) (the members' mean, through the loss's link)."""
        with torch.inference_mode():
            out = self.net_(self._tensor(inputs)[None]).mean(0)
            pred: FloatArray = to_numpy(self._loss_link(out))
        return pred

    def _train_spec(self) -> TrainSpec:
        return self.config.train_spec()

    # -- state -----------------------------------------------------------------------
    def _restore(self, state: PolicyState) -> None:
        """Become the policy ``state`` describes (a rollback: bit-identical decisions)."""
        self.__dict__.update(type(self).from_state(state).__dict__)

    def to_state(self) -> PolicyState:
        meta = {
            "model_version": self.model_version,
            "since_retrain": self.since_retrain_,
            "n_retrains": self.n_retrains_,
            "last_train_loss": None if np.isnan(self.last_train_loss_) else self.last_train_loss_,
        }
        arrays: dict[str, NDArray[Any]] = module_arrays(self.net_, "net.")
        arrays.update(self.buffer_.to_arrays("buffer."))
        arrays["train_rng"] = generator_state(self.generator_)
        arrays.update(self._extra_arrays())
        return PolicyState(
            self.name, {**self.config.to_json(), "__meta__": meta}, arrays, SCHEMA_VERSION
        )

    @classmethod
    def from_state(cls, state: PolicyState) -> NeuralPolicy:
        if state.policy != cls.name:
            raise ValueError(f"state is for policy {state.policy!r}, not {cls.name!r}.")
        options = dict(state.config)
        meta = options.pop("__meta__", {})
        for key in ("hidden", "arm_vocabulary"):
            if key in options:
                options[key] = tuple(options[key])
        device = options.get("device")
        if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
            # trained on a GPU, served where there is none (the arrays are the same):
            # the state named its training device and every CPU replica refused it
            options["device"] = "cpu"
        policy = cls(**options)
        load_module_arrays(policy.net_, state.arrays, "net.")
        policy.buffer_.load_arrays(state.arrays, "buffer.")
        policy.generator_ = restore_generator(state.arrays["train_rng"])
        policy._load_extra(state.arrays)
        policy.model_version = meta.get("model_version")
        policy.since_retrain_ = int(meta.get("since_retrain", 0))
        policy.n_retrains_ = int(meta.get("n_retrains", 0))
        loss = meta.get("last_train_loss")
        policy.last_train_loss_ = float("nan") if loss is None else float(loss)
        return policy
