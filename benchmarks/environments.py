"""Benchmark environments and the context streams the regret harness replays.

Every environment turns a seed into a :class:`Stream`: per step a context, its candidate
set, the expected reward of every candidate and one uniform draw for the reward noise.
The harness builds the stream once per seed and replays it to every policy, so all
policies (ours and the peers) see the same contexts and the same noise, and the regret is
exact (it uses the expected rewards, not the noisy ones).

* ``wheel``, ``linear``, ``logistic`` — :mod:`bandit_core.envs` (wheel bandit of
  Riquelme, Tucker & Snoek, ICLR 2018; disjoint linear Gaussian; logistic clicks with
  user × item interactions);
* ``sparse_linear`` — disjoint linear with only ``nonzero`` active coordinates per arm;
* ``drift`` — disjoint linear whose weights switch at ``switch_at`` (non-stationary);
* ``cold_start`` — arms with features arrive during the run (new items);
* ``classification`` — any CSV: one arm per class, reward 1 for the true class;
* ``many_arms`` — a seeded synthetic classification bandit with many arms (30 classes, 16
  features, two Gaussian clusters per class): few observations per arm, classes not
  linearly separable;
* ``digits`` — scikit-learn's bundled digits (10 classes, 64 pixels) as a classification
  bandit, without a CSV.

``python -m benchmarks.environments digits OUT.csv`` writes scikit-learn's bundled digits
as a CSV with a ``label`` column.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.special import ndtri

from bandit_core.envs import (
    Environment,
    LinearEnvironment,
    LogisticClickEnvironment,
    WheelEnvironment,
)
from bandit_core.types import Candidates

FloatArray = np.ndarray


@dataclass
class Stream:
    """The replayable steps of one seed (all lists have length ``steps``)."""

    contexts: list[FloatArray]
    candidates: list[Candidates]
    means: list[FloatArray]
    uniforms: FloatArray

    def __len__(self) -> int:
        return len(self.contexts)

    def reward_scale(self) -> float:
        """``R = max_t max_a |μ_t(a)|``: the size of the rewards (50 on the wheel, 1 for a
        classification bandit); the harness divides what learners see by it."""
        return max(float(np.abs(m).max()) for m in self.means) or 1.0

    def uniform_regret(self) -> float:
        """Exact expected cumulative regret of the uniform policy on this stream
        (Σ_t max_a μ_t(a) − mean_a μ_t(a)): the "Uniform = 100" normaliser."""
        return float(sum(m.max() - m.mean() for m in self.means))


class BenchEnvironment(Protocol):
    # read-only: implementations are frozen dataclasses or compute these
    @property
    def name(self) -> str: ...

    @property
    def dim_user(self) -> int: ...

    @property
    def dim_arm(self) -> int: ...

    @property
    def binary_rewards(self) -> bool: ...

    def stream(self, steps: int, rng: np.random.Generator) -> Stream: ...

    def reward(self, means: FloatArray, arm: int, u: float) -> float: ...


@dataclass
class Stationary:
    """Adapter: a :mod:`bandit_core.envs` environment as a benchmark environment."""

    env: Environment
    binary_rewards: bool = False

    @property
    def name(self) -> str:
        return self.env.name

    @property
    def dim_user(self) -> int:
        return self.env.dim_user

    @property
    def dim_arm(self) -> int:
        return self.env.dim_arm

    def stream(self, steps: int, rng: np.random.Generator) -> Stream:
        """Same draw order as :func:`bandit_core.simulate.run_simulation`: context, then u."""
        contexts, cands, means = [], [], []
        uniforms = np.empty(steps)
        for t in range(steps):
            x, c = self.env.sample(rng)
            uniforms[t] = rng.random()
            contexts.append(x)
            cands.append(c)
            means.append(self.env.expected_rewards(x, c))
        return Stream(contexts, cands, means, uniforms)

    def reward(self, means: FloatArray, arm: int, u: float) -> float:
        return self.env.reward(means, arm, u)


def _one_hot_candidates(n_arms: int) -> Candidates:
    return Candidates(tuple(str(a) for a in range(n_arms)), np.eye(n_arms))


def _gaussian_reward(means: FloatArray, arm: int, u: float, noise: float) -> float:
    return float(means[arm] + noise * ndtri(u))


def sparse_linear(
    rng: np.random.Generator, n_arms: int = 10, dim: int = 20, nonzero: int = 3, noise: float = 0.1
) -> Stationary:
    """Disjoint linear rewards whose weights ``θ_a`` have ``nonzero`` active coordinates."""
    if not 1 <= nonzero <= dim:
        raise ValueError(f"nonzero must be in [1, dim={dim}]; got {nonzero}.")
    theta = np.zeros((n_arms, dim))
    for a in range(n_arms):
        active = rng.choice(dim, size=nonzero, replace=False)
        theta[a, active] = rng.standard_normal(nonzero) / np.sqrt(nonzero)
    return Stationary(LinearEnvironment(theta, float(noise), name="sparse_linear"))


@dataclass
class DriftEnvironment:
    """Disjoint linear rewards whose weights switch from ``theta`` to ``theta_after`` at
    step ``switch_at`` (an abrupt change: the best arm changes for most contexts)."""

    theta: FloatArray
    theta_after: FloatArray
    switch_at: int
    noise: float = 0.1
    name: str = "drift"
    binary_rewards: bool = False
    arm_one_hot: bool = True

    @classmethod
    def make(
        cls, rng: np.random.Generator, n_arms: int = 5, dim: int = 6, switch_at: int = 2000
    ) -> DriftEnvironment:
        if switch_at < 0:
            raise ValueError(f"switch_at must be a step index >= 0; got {switch_at}.")
        scale = 1.0 / np.sqrt(dim)
        return cls(
            rng.standard_normal((n_arms, dim)) * scale,
            rng.standard_normal((n_arms, dim)) * scale,
            switch_at,
        )

    @property
    def dim_user(self) -> int:
        return int(self.theta.shape[1])

    @property
    def dim_arm(self) -> int:
        return int(self.theta.shape[0])

    def stream(self, steps: int, rng: np.random.Generator) -> Stream:
        cands = _one_hot_candidates(self.dim_arm)
        contexts = [rng.standard_normal(self.dim_user) for _ in range(steps)]
        uniforms = rng.random(steps)
        means = [
            (self.theta if t < self.switch_at else self.theta_after) @ x
            for t, x in enumerate(contexts)
        ]
        return Stream(contexts, [cands] * steps, means, uniforms)

    def reward(self, means: FloatArray, arm: int, u: float) -> float:
        return _gaussian_reward(means, arm, u, self.noise)


@dataclass
class ColdStartEnvironment:
    """Items with features arrive during the run.

    ``E[r | x, y] = xᵀ W y + vᵀ y`` for user ``x ~ N(0, I)`` and item features ``y``;
    ``initial_items`` items are available at step 0 and one more joins every
    ``arrival_every`` steps; each step offers all items available so far. A policy that
    scores items by their features can rank a new item at once; a per-arm model starts
    it at the prior.
    """

    items: FloatArray  # (n_items, dim_arm)
    interaction: FloatArray  # (dim_user, dim_arm)
    item_weights: FloatArray  # (dim_arm,)
    initial_items: int
    arrival_every: int
    noise: float = 0.1
    name: str = "cold_start"
    binary_rewards: bool = False

    @classmethod
    def make(
        cls,
        rng: np.random.Generator,
        n_items: int = 20,
        dim_user: int = 5,
        dim_arm: int = 4,
        initial_items: int = 5,
        arrival_every: int = 200,
    ) -> ColdStartEnvironment:
        if not 1 <= initial_items <= n_items:
            raise ValueError(
                f"initial_items must be in [1, n_items={n_items}]; got {initial_items}."
            )
        return cls(
            rng.standard_normal((n_items, dim_arm)),
            rng.standard_normal((dim_user, dim_arm)) / np.sqrt(dim_user * dim_arm),
            0.3 * rng.standard_normal(dim_arm),
            initial_items,
            arrival_every,
        )

    @property
    def dim_user(self) -> int:
        return int(self.interaction.shape[0])

    @property
    def dim_arm(self) -> int:
        return int(self.items.shape[1])

    def available(self, t: int) -> int:
        return min(int(self.items.shape[0]), self.initial_items + t // self.arrival_every)

    def stream(self, steps: int, rng: np.random.Generator) -> Stream:
        contexts, cands, means = [], [], []
        sets: dict[int, Candidates] = {}
        for t in range(steps):
            k = self.available(t)
            if k not in sets:
                sets[k] = Candidates(tuple(f"item-{i}" for i in range(k)), self.items[:k])
            x = rng.standard_normal(self.dim_user)
            contexts.append(x)
            cands.append(sets[k])
            means.append(self.items[:k] @ (self.interaction.T @ x + self.item_weights))
        return Stream(contexts, cands, means, rng.random(steps))

    def reward(self, means: FloatArray, arm: int, u: float) -> float:
        return _gaussian_reward(means, arm, u, self.noise)


@dataclass
class ClassificationEnvironment:
    """Classification as a bandit: one arm per class, reward 1 for the true class else 0.

    Features are z-scored per column (a constant column becomes 0); each pass over the
    rows follows a fresh permutation drawn from the stream's generator. Candidates carry
    the class one-hot as features and the class label as id.
    """

    features: FloatArray  # (n, dim_user)
    labels: np.ndarray  # (n,) class index
    classes: tuple[str, ...]
    name: str = "classification"
    binary_rewards: bool = True
    #: candidates carry the one-hot of their class as features
    arm_one_hot: bool = True
    dim_arm: int = field(init=False)

    def __post_init__(self) -> None:
        self.dim_arm = len(self.classes)

    @property
    def dim_user(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_rows(self) -> int:
        return int(self.features.shape[0])

    @classmethod
    def from_arrays(
        cls, features: Any, labels: Any, name: str = "classification"
    ) -> ClassificationEnvironment:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"features must be a non-empty 2-D array; got shape {x.shape}.")
        raw = np.asarray(labels)
        if raw.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},); got {raw.shape}.")
        names, index = np.unique(raw.astype(str), return_inverse=True)
        if names.size < 2:
            raise ValueError(f"a classification bandit needs at least 2 classes; got {names.size}.")
        std = x.std(axis=0)
        z = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
        return cls(z, index.astype(np.intp), tuple(str(n) for n in names), name=name)

    @classmethod
    def from_csv(cls, path: str | Path, label_column: str) -> ClassificationEnvironment:
        """Read a CSV with a header row; ``label_column`` is the class, every other
        column a numeric feature."""
        path = Path(path)
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path} is empty; expected a header row.")
            if label_column not in header:
                raise ValueError(
                    f"--label-column {label_column!r} is not a column of {path}; "
                    f"columns are: {', '.join(header)}."
                )
            target = header.index(label_column)
            rows = list(reader)
        labels = [row[target] for row in rows]
        feature_cols = [i for i in range(len(header)) if i != target]
        values = np.empty((len(rows), len(feature_cols)))
        for r, row in enumerate(rows):
            if len(row) != len(header):
                raise ValueError(
                    f"{path} line {r + 2} has {len(row)} fields; expected {len(header)}."
                )
            for c, col in enumerate(feature_cols):
                try:
                    values[r, c] = float(row[col])
                except ValueError as exc:
                    raise ValueError(
                        f"{path} line {r + 2}, column {header[col]!r}: expected a number, "
                        f"got {row[col]!r}."
                    ) from exc
        return cls.from_arrays(values, labels, name=path.stem)

    def stream(self, steps: int, rng: np.random.Generator) -> Stream:
        passes = -(-steps // self.n_rows)
        order = np.concatenate([rng.permutation(self.n_rows) for _ in range(passes)])[:steps]
        k = self.dim_arm
        cands = Candidates(self.classes, np.eye(k))
        eye = np.eye(k)
        contexts = [self.features[i] for i in order]
        means = [eye[self.labels[i]] for i in order]
        return Stream(contexts, [cands] * steps, means, np.zeros(steps))

    def reward(self, means: FloatArray, arm: int, u: float) -> float:
        return float(means[arm])


def write_digits_csv(path: str | Path) -> Path:
    """scikit-learn's bundled digits (1,797 rows, 64 pixels) as a CSV with ``label``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"pixel_{i}" for i in range(data.data.shape[1])] + ["label"])
        for x, y in zip(data.data, data.target, strict=True):
            writer.writerow([f"{v:g}" for v in x] + [str(int(y))])
    return path


def many_arms(
    rng: np.random.Generator,
    n_arms: int = 30,
    dim: int = 16,
    clusters: int = 2,
    separation: float = 1.5,
    n_rows: int = 10_000,
) -> ClassificationEnvironment:
    """A synthetic classification bandit with many arms, its parameters drawn from ``rng``.

    Each of the ``n_arms`` classes is a mixture of ``clusters`` Gaussian clusters: centres
    ``N(0, separation² I)`` in ``dim`` dimensions, unit-variance noise around them, equal
    weights; ``n_rows`` rows with uniformly drawn classes. With two clusters per class no
    linear score separates the classes, and with 30 arms each arm is seen rarely — the
    regime where per-arm models thin out.
    """
    if n_arms < 2 or dim < 1 or clusters < 1 or n_rows < 1:
        raise ValueError(
            "many_arms needs n_arms >= 2, dim >= 1, clusters >= 1 and n_rows >= 1; got "
            f"n_arms={n_arms}, dim={dim}, clusters={clusters}, n_rows={n_rows}."
        )
    centres = separation * rng.standard_normal((n_arms, clusters, dim))
    labels = rng.integers(0, n_arms, size=n_rows)
    which = rng.integers(0, clusters, size=n_rows)
    x = centres[labels, which] + rng.standard_normal((n_rows, dim))
    names = np.array([f"class-{c:02d}" for c in range(n_arms)])
    return ClassificationEnvironment.from_arrays(x, names[labels], name="many_arms")


def digits_environment() -> ClassificationEnvironment:
    """scikit-learn's bundled digits as a classification bandit (1,797 rows, 10 arms)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return ClassificationEnvironment.from_arrays(data.data, data.target, name="digits")


#: name → builder(seed rng, options) for the simulated environments
SIMULATED: dict[str, Callable[..., BenchEnvironment]] = {
    "wheel": lambda rng, delta=0.5: Stationary(WheelEnvironment(float(delta))),
    "linear": lambda rng, **kw: Stationary(LinearEnvironment.make(rng, **kw)),
    "sparse_linear": lambda rng, **kw: sparse_linear(rng, **kw),
    "logistic": lambda rng, **kw: Stationary(
        LogisticClickEnvironment.make(rng, **kw), binary_rewards=True
    ),
    "drift": lambda rng, **kw: DriftEnvironment.make(rng, **kw),
    "cold_start": lambda rng, **kw: ColdStartEnvironment.make(rng, **kw),
    "many_arms": lambda rng, **kw: many_arms(rng, **kw),
    "digits": lambda rng: digits_environment(),
}

ENVIRONMENTS = (*SIMULATED, "classification")


def make_environment(name: str, seed: int, **options: Any) -> BenchEnvironment:
    """The environment ``name`` for ``seed`` (its hidden parameters drawn from the seed).

    ``classification`` needs ``data`` (a CSV path) and ``label_column``.
    """
    if name == "classification":
        missing = [k for k in ("data", "label_column") if options.get(k) is None]
        if missing:
            raise ValueError(
                f"--env classification needs --data CSV and --label-column COL; missing {missing}."
            )
        return ClassificationEnvironment.from_csv(options["data"], options["label_column"])
    builder = SIMULATED.get(name)
    if builder is None:
        raise ValueError(
            f"Unknown environment {name!r}; expected one of: {', '.join(ENVIRONMENTS)}."
        )
    rng = np.random.default_rng([seed, 7])
    return builder(rng, **options)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "digits":
        raise SystemExit("usage: python -m benchmarks.environments digits OUT.csv")
    print(write_digits_csv(sys.argv[2]))
