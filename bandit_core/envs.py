"""Seeded simulation environments with known expected rewards (for regret).

Each environment draws its hidden parameters from the generator given to ``make`` and,
per step, a context with its candidate set from the generator given to ``sample``; the
expected reward of every candidate is known, so regret is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.special import ndtri

from bandit_core._validation import FloatArray, Interval, validate_params
from bandit_core.types import Candidates


class Environment(Protocol):
    # read-only: implementations are frozen dataclasses or compute these
    @property
    def name(self) -> str: ...

    @property
    def dim_user(self) -> int: ...

    @property
    def dim_arm(self) -> int: ...

    def sample(self, rng: np.random.Generator) -> tuple[FloatArray, Candidates]:
        """One context (dim_user,) and its candidate set."""
        ...

    def expected_rewards(self, context: FloatArray, candidates: Candidates) -> FloatArray:
        """Mean reward of every candidate, shape (K,)."""
        ...

    def reward(self, means: FloatArray, arm: int, u: float) -> float:
        """The reward of candidate ``arm`` given the expected rewards ``means`` and a
        uniform draw ``u`` in (0, 1) (common random numbers: every policy compared on the
        same stream sees the same noise)."""
        ...


def _one_hot_candidates(n_arms: int) -> Candidates:
    return Candidates(tuple(str(a) for a in range(n_arms)), np.eye(n_arms))


@dataclass(frozen=True)
class LinearEnvironment:
    """Disjoint linear rewards ``r = θ_aᵀ x + ε``, ``x ~ N(0, I)``, ``θ_a ~ N(0, I/d)``.

    Candidates carry their one-hot id as features, so shared models with interactions
    can represent the disjoint model exactly.
    """

    theta: FloatArray  # (n_arms, dim)
    noise: float
    name: str = "linear"

    @classmethod
    def make(
        cls, rng: np.random.Generator, n_arms: int = 10, dim: int = 8, noise: float = 0.1
    ) -> LinearEnvironment:
        validate_params(
            "LinearEnvironment",
            {"n_arms": n_arms, "dim": dim, "noise": noise},
            {
                "n_arms": Interval(int, 1, None),
                "dim": Interval(int, 1, None),
                "noise": Interval(float, 0.0, None),
            },
        )
        return cls(rng.standard_normal((n_arms, dim)) / np.sqrt(dim), float(noise))

    @property
    def dim_user(self) -> int:
        return int(self.theta.shape[1])

    @property
    def dim_arm(self) -> int:
        return int(self.theta.shape[0])

    def sample(self, rng: np.random.Generator) -> tuple[FloatArray, Candidates]:
        return rng.standard_normal(self.dim_user), _one_hot_candidates(self.dim_arm)

    def expected_rewards(self, context: FloatArray, candidates: Candidates) -> FloatArray:
        arms = np.array([int(a) for a in candidates.ids])
        out: FloatArray = self.theta[arms] @ context
        return out

    def reward(self, means: FloatArray, arm: int, u: float) -> float:
        return float(means[arm] + self.noise * ndtri(u))


@dataclass(frozen=True)
class WheelEnvironment:
    """The wheel bandit (Riquelme, Tucker & Snoek, ICLR 2018, §4 "Wheel Bandit").

    Five arms; x uniform on the unit disc; arm 4 pays μ1 = 1.2 and the others μ2 = 1.0,
    except when ‖x‖ ≥ δ, where the arm of x's quadrant ((+,+)→0, (+,−)→1, (−,+)→2,
    (−,−)→3) pays μ3 = 50. Gaussian noise σ = 0.01.
    """

    delta: float
    mu1: float = 1.2
    mu2: float = 1.0
    mu3: float = 50.0
    noise: float = 0.01
    name: str = "wheel"
    dim_user: int = 2
    dim_arm: int = 5

    def __post_init__(self) -> None:
        validate_params(
            "WheelEnvironment",
            {"delta": self.delta},
            {"delta": Interval(float, 0.0, 1.0, closed="neither")},
        )

    def sample(self, rng: np.random.Generator) -> tuple[FloatArray, Candidates]:
        radius = np.sqrt(rng.random())
        angle = rng.random() * 2.0 * np.pi
        return np.array([radius * np.cos(angle), radius * np.sin(angle)]), _one_hot_candidates(5)

    def expected_rewards(self, context: FloatArray, candidates: Candidates) -> FloatArray:
        means = np.full(5, self.mu2)
        means[4] = self.mu1
        if np.linalg.norm(context) >= self.delta:
            x, y = context
            quadrant = (0 if y >= 0 else 1) if x >= 0 else (2 if y >= 0 else 3)
            means[quadrant] = self.mu3
        arms = np.array([int(a) for a in candidates.ids])
        out: FloatArray = means[arms]
        return out

    def reward(self, means: FloatArray, arm: int, u: float) -> float:
        return float(means[arm] + self.noise * ndtri(u))

    def uniform_regret_per_step(self) -> float:
        """Expected per-step regret of the uniform policy (closed form)."""
        d2 = self.delta**2
        return 0.8 * d2 * (self.mu1 - self.mu2) + (1 - d2) * (
            0.2 * (self.mu3 - self.mu1) + 0.6 * (self.mu3 - self.mu2)
        )


def _sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-z))
    return out


@dataclass(frozen=True)
class LogisticClickEnvironment:
    """Clicks from a logistic model with user × item interactions.

    ``P(click | x, y) = σ(c + uᵀx + vᵀy + xᵀ W y)`` for a user with features x and an item
    with features y; every step offers ``n_candidates`` items from a catalog of
    ``item_features.shape[0]`` items.
    """

    item_features: FloatArray  # (n_items, dim_arm)
    user_weights: FloatArray  # (dim_user,)
    item_weights: FloatArray  # (dim_arm,)
    interaction: FloatArray  # (dim_user, dim_arm)
    bias: float
    n_candidates: int
    name: str = "logistic"

    @classmethod
    def make(
        cls,
        rng: np.random.Generator,
        n_items: int = 20,
        dim_user: int = 6,
        dim_arm: int = 4,
        n_candidates: int = 10,
        bias: float = -2.0,
        interaction_scale: float = 1.5,
    ) -> LogisticClickEnvironment:
        validate_params(
            "LogisticClickEnvironment",
            {
                "n_items": n_items,
                "dim_user": dim_user,
                "dim_arm": dim_arm,
                "n_candidates": n_candidates,
            },
            {k: Interval(int, 1, None) for k in ("n_items", "dim_user", "dim_arm", "n_candidates")},
        )
        if n_candidates > n_items:
            raise ValueError(
                f"n_candidates must be at most n_items ({n_items}); got {n_candidates}."
            )
        return cls(
            item_features=rng.standard_normal((n_items, dim_arm)),
            user_weights=0.3 * rng.standard_normal(dim_user),
            item_weights=0.3 * rng.standard_normal(dim_arm),
            interaction=interaction_scale
            * rng.standard_normal((dim_user, dim_arm))
            / np.sqrt(dim_user * dim_arm),
            bias=float(bias),
            n_candidates=n_candidates,
        )

    @property
    def dim_user(self) -> int:
        return int(self.user_weights.shape[0])

    @property
    def dim_arm(self) -> int:
        return int(self.item_weights.shape[0])

    def sample(self, rng: np.random.Generator) -> tuple[FloatArray, Candidates]:
        context = rng.standard_normal(self.dim_user)
        items = np.sort(
            rng.choice(self.item_features.shape[0], size=self.n_candidates, replace=False)
        )
        return context, Candidates(tuple(f"item-{i}" for i in items), self.item_features[items])

    def expected_rewards(self, context: FloatArray, candidates: Candidates) -> FloatArray:
        y = candidates.features
        logits = (
            self.bias
            + context @ self.user_weights
            + y @ self.item_weights
            + y @ (self.interaction.T @ context)
        )
        return _sigmoid(logits)

    def reward(self, means: FloatArray, arm: int, u: float) -> float:
        return float(u < means[arm])
