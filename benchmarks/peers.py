"""Peer libraries run through their own Python APIs inside the regret harness.

* Vowpal Wabbit (``vowpalwabbit.Workspace``) with ``--cb_explore_adf``: one multi-line
  example per decision — a ``shared`` line with the user context in namespace ``s`` and one
  line per candidate in namespace ``a`` (an id token plus the candidate's features);
  ``-q sa`` crosses them, and on the wheel ``--interactions ssa`` adds the quadratic user
  terms per action. Exploration: ``--squarecb``, ``--bag 5`` or ``--epsilon 0.05``. VW
  returns the probability of every action; we draw from it with our generator and teach it
  ``action:cost:probability`` with cost = −reward.
* mabwiser (``MAB`` with ``LearningPolicy.LinUCB(alpha=1.0)`` / ``LinTS(alpha=1.0)``):
  disjoint per-arm ridge models on the user context; it is initialised with an empty
  ``fit`` and learns with ``partial_fit``. Its argmax breaks ties by arm order.

Each peer is optional: :func:`peer_unavailable` returns why it cannot run (a missing
import), and the harness reports it instead of failing.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bandit_core.exploration import sample_categorical
from bandit_core.types import Candidates

VW_EXPLORATION = {
    "vw_squarecb": "--squarecb",
    "vw_bag": "--bag 5",
    "vw_epsilon": "--epsilon 0.05",
}
MABWISER_POLICIES = {"mabwiser_linucb": "LinUCB", "mabwiser_lints": "LinTS"}
PEERS = (*VW_EXPLORATION, *MABWISER_POLICIES)

_MODULES = {
    **dict.fromkeys(VW_EXPLORATION, "vowpalwabbit"),
    **dict.fromkeys(MABWISER_POLICIES, "mabwiser.mab"),
}


def peer_unavailable(name: str) -> str | None:
    """``None`` when peer ``name`` can run here, else the reason it cannot."""
    module = _MODULES.get(name)
    if module is None:
        return f"unknown peer {name!r}; expected one of: {', '.join(PEERS)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc}); install the 'bench' extra"
    return None


def _fmt(prefix: str, values: np.ndarray) -> str:
    return " ".join(f"{prefix}{i}:{v:.9g}" for i, v in enumerate(values) if v != 0.0)


@dataclass
class VWAgent:
    """A Vowpal Wabbit ``--cb_explore_adf`` learner."""

    name: str
    args: str
    workspace: Any = field(repr=False)

    @classmethod
    def make(cls, name: str, seed: int, quadratic_user: bool) -> VWAgent:
        from vowpalwabbit import Workspace

        extra = " --interactions ssa" if quadratic_user else ""
        args = f"--cb_explore_adf {VW_EXPLORATION[name]} -q sa{extra} --quiet --random_seed {seed}"
        return cls(name, args, Workspace(args))

    @staticmethod
    def _lines(
        context: np.ndarray, candidates: Candidates, label: tuple[int, float, float] | None
    ) -> list[str]:
        lines = [f"shared |s {_fmt('x', context)}"]
        for i, arm_id in enumerate(candidates.ids):
            head = ""
            if label is not None and label[0] == i:
                head = f"0:{label[1]:.9g}:{label[2]:.9g} "
            lines.append(f"{head}|a id_{arm_id} {_fmt('y', candidates.features[i])}".rstrip())
        return lines

    def choose(
        self, context: np.ndarray, candidates: Candidates, rng: np.random.Generator
    ) -> tuple[int, float]:
        pmf = np.asarray(
            self.workspace.predict(self._lines(context, candidates, None)), dtype=np.float64
        )
        pmf = pmf / pmf.sum()
        arm = int(sample_categorical(pmf[None], rng)[0])
        return arm, float(pmf[arm])

    def learn(
        self,
        context: np.ndarray,
        candidates: Candidates,
        arm: int,
        reward: float,
        propensity: float,
    ) -> None:
        self.workspace.learn(self._lines(context, candidates, (arm, -reward, propensity)))

    def close(self) -> None:
        self.workspace.finish()


@dataclass
class MabwiserAgent:
    """A mabwiser disjoint linear bandit on the user context."""

    name: str
    mab: Any = field(repr=False)
    deterministic: bool

    @classmethod
    def make(cls, name: str, seed: int, dim_user: int, arms: tuple[str, ...]) -> MabwiserAgent:
        from mabwiser.mab import MAB, LearningPolicy

        kind = MABWISER_POLICIES[name]
        policy = getattr(LearningPolicy, kind)(alpha=1.0)
        mab = MAB(list(arms), policy, seed=seed)
        mab.fit([], [], np.zeros((0, dim_user)))
        return cls(name, mab, kind == "LinUCB")

    def choose(
        self, context: np.ndarray, candidates: Candidates, rng: np.random.Generator
    ) -> tuple[int, float]:
        for arm_id in candidates.ids:
            if arm_id not in self.mab.arms:
                self.mab.add_arm(arm_id)
        expectations = self.mab.predict_expectations(context[None])
        values = np.array([expectations[a] for a in candidates.ids])
        arm = int(np.argmax(values))  # mabwiser's own rule: first arm among ties
        return arm, 1.0 if self.deterministic else float("nan")

    def learn(
        self,
        context: np.ndarray,
        candidates: Candidates,
        arm: int,
        reward: float,
        propensity: float,
    ) -> None:
        self.mab.partial_fit([candidates.ids[arm]], [reward], context[None])

    def close(self) -> None:
        pass


def make_peer(name: str, seed: int, env: Any, first: Candidates) -> VWAgent | MabwiserAgent:
    """Peer ``name`` for environment ``env``; ``first`` is the first step's candidate set.

    Raises
    ------
    RuntimeError
        When the peer's library is missing (the message says which).
    """
    reason = peer_unavailable(name)
    if reason is not None:
        raise RuntimeError(reason)
    if name in VW_EXPLORATION:
        return VWAgent.make(name, seed, quadratic_user=env.name == "wheel")
    return MabwiserAgent.make(name, seed, env.dim_user, first.ids)
