"""The policy catalog: every policy's name, class and capabilities, in one table.

Every other package reads this table instead of keeping its own lists: the retrain form's
algorithm list, the neural and shardable sets, the CLI's policy listing and each
capability probe (does it train a network, has it a Bayesian linear head, does it score
candidates on their features, can its head be rebuilt map-reduce over shards).

Importing this module is cheap — plain Python, no numpy and no torch — so a DAG file
can build its form at parse time; a class is imported only when it is asked for
(:meth:`PolicySpec.resolve`, ``POLICIES[name]``).

Adding a policy is one entry in :data:`CATALOG` next to the module that defines it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class PolicySpec:
    """One policy of the catalog.

    Parameters
    ----------
    name : str
        The policy's name (CLI, settings, recorded with every decision); equal to the
        class's ``name`` attribute.
    target : str
        ``"module:Class"`` of the class, imported on first use.
    trains_network : bool
        It trains a network nightly (replay buffer, slow path); the retrain gives it the
        epochs, a seed and the loss.
    linear_head : bool
        Its learned state includes a Bayesian linear head with additive sufficient
        statistics (it implements :class:`bandit_core.head_statistics.LinearHeadPolicy`).
    arm_features : bool
        It scores candidates on their feature vectors (takes ``dim_arm``).
    shardable : bool
        Its head can be rebuilt map-reduce over shards of the replay window (the sum of
        per-shard statistics equals the single-node rebuild).
    summary : str
        One line for listings and docs.
    randomized : bool
        It samples its decisions (Thompson sampling, ε-greedy, uniform), so its logs keep
        some overlap by themselves; a deterministic policy (UCB, an argmax) logs
        propensities 0 and 1 and the retrain gives it an exploration floor by default.
    """

    name: str
    target: str
    trains_network: bool
    linear_head: bool
    arm_features: bool
    shardable: bool
    summary: str
    randomized: bool = True

    def __post_init__(self) -> None:
        if self.target.count(":") != 1:
            raise ValueError(f"target must be 'module:Class'; got {self.target!r}.")
        if self.shardable and not self.linear_head:
            raise ValueError(f"{self.name}: only a policy with a linear head can be shardable.")

    def resolve(self) -> type[Any]:
        """The policy class (imports its module)."""
        return resolve_target(self.target)

    def config_class(self) -> type[Any] | None:
        """The policy's config dataclass, or None for a policy without options."""
        config: type[Any] | None = getattr(self.resolve(), "config_class", None)
        return config

    def option_names(self) -> tuple[str, ...]:
        """Names of the policy's options (the config's fields; ``dim_user`` without one)."""
        config = self.config_class()
        return ("dim_user",) if config is None else tuple(f.name for f in fields(config))

    def uses_arm_features(self, options: Mapping[str, Any]) -> bool:
        """Whether the policy built with ``options`` scores candidates on their features
        (``shared=False`` turns an epsilon-greedy model into per-arm heads)."""
        return self.arm_features and bool(options.get("shared", True))

    def randomizes(self, options: Mapping[str, Any]) -> bool:
        """Whether the policy built with ``options`` samples its decisions
        (``mode="ucb"`` makes a neural policy deterministic, ``epsilon=0`` an ε-greedy one)."""
        if not self.randomized or options.get("mode") == "ucb":
            return False
        return not (self.name == "epsilon_greedy" and options.get("epsilon", 0.1) == 0)


_P = "bandit_core.policies"

#: name → spec of every policy, in listing order.
CATALOG: dict[str, PolicySpec] = {
    s.name: s
    for s in (
        PolicySpec(
            name="linucb",
            target=f"{_P}.linear:LinUCB",
            trains_network=False,
            linear_head=True,
            arm_features=False,
            shardable=True,
            summary=(
                "per-arm (disjoint) LinUCB, Li et al. 2010; unseen arms start at the "
                "prior; equal scores split uniformly (each tied arm gets that "
                'propensity) or, with `ties="first"`, go to the first in candidate '
                "order with propensity 1 (mabwiser's rule; also `shared_linucb`)"
            ),
            randomized=False,
        ),
        PolicySpec(
            name="lints",
            target=f"{_P}.linear:LinTS",
            trains_network=False,
            linear_head=True,
            arm_features=False,
            shardable=True,
            summary=(
                "per-arm linear Thompson sampling, Agrawal & Goyal 2013, with a Normal-"
                "inverse-gamma noise posterior; exact propensities (one-dimensional "
                "quadrature over the independent Normal / Student-t scores)"
            ),
        ),
        PolicySpec(
            name="shared_linucb",
            target=f"{_P}.linear:SharedLinUCB",
            trains_network=False,
            linear_head=True,
            arm_features=True,
            shardable=True,
            summary=(
                "LinUCB with one head on `[x_user; x_arm; x_user ⊗ x_arm (opt.); arm "
                "one-hot (opt.); x_user ⊗ e(arm) (opt., `arm_embedding=m`: a hashed "
                "m-dimensional arm embedding, width independent of the number of arms)]`"
            ),
            randomized=False,
        ),
        PolicySpec(
            name="shared_lints",
            target=f"{_P}.linear:SharedLinTS",
            trains_network=False,
            linear_head=True,
            arm_features=True,
            shardable=True,
            summary=("linear Thompson sampling with the feature map of `shared_linucb`"),
        ),
        PolicySpec(
            name="epsilon_greedy",
            target=f"{_P}.linear:EpsilonGreedy",
            trains_network=False,
            linear_head=True,
            arm_features=True,
            shardable=True,
            summary=("ε-greedy on the posterior mean (shared or per-arm)"),
        ),
        PolicySpec(
            name="uniform",
            target=f"{_P}.uniform:UniformRandom",
            trains_network=False,
            linear_head=False,
            arm_features=False,
            shardable=False,
            summary=(
                "uniform random: the logging policy of experiments and the service's fallback"
            ),
        ),
        PolicySpec(
            name="hybrid_linucb",
            target=f"{_P}.hybrid:HybridLinUCB",
            trains_network=False,
            linear_head=False,
            arm_features=True,
            shardable=False,
            summary=(
                "hybrid LinUCB of Li et al. 2010 (Algorithm 2): shared coefficients on the "
                "shared models' features plus a block per arm on `x_user`, updated block by "
                "block in O(k² + d²) — the posterior of the dense shared model with "
                "`x_user ⊗ one-hot(arm)` without its (k + K·d)² cost"
            ),
            randomized=False,
        ),
        PolicySpec(
            name="hybrid_lints",
            target=f"{_P}.hybrid:HybridLinTS",
            trains_network=False,
            linear_head=False,
            arm_features=True,
            shardable=False,
            summary="the hybrid model of `hybrid_linucb` with Thompson sampling",
        ),
        PolicySpec(
            name="linucb_arm_features",
            target=f"{_P}.arm_features:LinUCBArmFeatures",
            trains_network=False,
            linear_head=True,
            arm_features=True,
            shardable=False,
            summary=(
                "per-arm LinUCB on `[x_user; x_arm]` (θ_a on the user context and the "
                "candidate's own features)"
            ),
            randomized=False,
        ),
        PolicySpec(
            name="lints_arm_features",
            target=f"{_P}.arm_features:LinTSArmFeatures",
            trains_network=False,
            linear_head=True,
            arm_features=True,
            shardable=False,
            summary=(
                "per-arm linear Thompson sampling on `[x_user; x_arm]`, exact propensities "
                "by quadrature"
            ),
        ),
        PolicySpec(
            name="logistic_ts",
            target=f"{_P}.logistic:LogisticTS",
            trains_network=False,
            linear_head=False,
            arm_features=True,
            shardable=False,
            summary=(
                "logistic Thompson sampling for 0/1 rewards (Laplace approximation, "
                "Chapelle & Li 2011); Monte-Carlo propensities with their standard error"
            ),
        ),
        PolicySpec(
            name="neural_linear",
            target=f"{_P}.neural.neural_linear:NeuralLinear",
            trains_network=True,
            linear_head=True,
            arm_features=True,
            shardable=True,
            summary=(
                "neural bandit (Riquelme et al. 2018): an MLP encoder with a Bayesian "
                "linear head (fast path per reward, slow path retrains and rebuilds the"
                ' head; Thompson sampling, or `mode="ucb"` for LinUCB on the learned '
                "features); torch, CUDA when present"
            ),
        ),
        PolicySpec(
            name="ensemble",
            target=f"{_P}.neural.ensemble:BootstrappedEnsemble",
            trains_network=True,
            linear_head=False,
            arm_features=True,
            shardable=False,
            summary=(
                'bootstrapped ensemble of MLPs (Riquelme et al. 2018), `mode="ts"` or '
                '`"ucb"`; torch'
            ),
        ),
        PolicySpec(
            name="dropout",
            target=f"{_P}.neural.dropout:MCDropout",
            trains_network=True,
            linear_head=False,
            arm_features=True,
            shardable=False,
            summary=(
                "MC-dropout MLP (Riquelme et al. 2018; concrete dropout rates learnt), "
                '`mode="ts"` or `"ucb"`; torch'
            ),
        ),
    )
}

#: Wrappers restored from state by name (they wrap a catalog policy; not trainable alone).
WRAPPERS: dict[str, str] = {
    "exploration_floor": f"{_P}.wrappers:ExplorationFloor",
    "exposure_cap": f"{_P}.wrappers:ExposureCap",
    "overlap": f"{_P}.overlap:Overlap",
    "position_bias": f"{_P}.position:PositionBias",
}

#: Every policy name, sorted (the retrain form's choices).
ALGORITHMS: tuple[str, ...] = tuple(sorted(CATALOG))
#: Policies that train a network.
NEURAL: tuple[str, ...] = tuple(n for n, s in CATALOG.items() if s.trains_network)
#: Policies whose head is rebuilt map-reduce over shards.
SHARDABLE: tuple[str, ...] = tuple(n for n, s in CATALOG.items() if s.shardable)


def policy_spec(name: str) -> PolicySpec:
    """The catalog entry of ``name``; ``ValueError`` naming the choices if unknown."""
    spec = CATALOG.get(name)
    if spec is None:
        raise ValueError(f"Unknown policy {name!r}; expected one of: {', '.join(ALGORITHMS)}.")
    return spec


def resolve_target(target: str) -> type[Any]:
    """The class named by ``"module:Class"``."""
    module, _, attr = target.partition(":")
    cls: type[Any] = getattr(importlib.import_module(module), attr)
    return cls


#: The README's policy table sits between these markers (generated by :func:`policy_table`).
TABLE_BEGIN = "<!-- policy-catalog:begin (generated by bandit_core.catalog.policy_table) -->"
TABLE_END = "<!-- policy-catalog:end -->"


def policy_table() -> str:
    """The catalog as the README's Markdown table (name, capabilities, summary)."""
    rows = [
        "| policy | network | linear head | arm features | sharded rebuild | randomized "
        "| what it is |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in CATALOG.values():
        flags = [
            spec.trains_network,
            spec.linear_head,
            spec.arm_features,
            spec.shardable,
            spec.randomized,
        ]
        marks = " | ".join("yes" if f else "" for f in flags)
        rows.append(f"| `{spec.name}` | {marks} | {spec.summary} |")
    return "\n".join(rows)


class _LazyClasses(Mapping[str, type[Any]]):
    """name → class over :data:`CATALOG`; membership and iteration import nothing."""

    def __getitem__(self, name: str) -> type[Any]:
        return CATALOG[name].resolve()

    def __iter__(self) -> Iterator[str]:
        return iter(CATALOG)

    def __len__(self) -> int:
        return len(CATALOG)

    def __repr__(self) -> str:
        return f"POLICIES({', '.join(CATALOG)})"


#: name → policy class (resolved on access).
POLICIES: Mapping[str, type[Any]] = _LazyClasses()
