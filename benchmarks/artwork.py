"""The artwork-personalisation scenario (Netflix's "pick the artwork for each title") and
its regret run.

    python -m benchmarks.artwork --steps 4000 --seeds 0,1,2 --json artwork.json

World (seeded): ``genres`` genres; a user's context is her taste, a Dirichlet draw over the
genres; a title belongs to one or two genres and has 3–10 artwork variants. A variant's
visual features are ``[emphasis (genres) ; style (styles)]``: which genre the picture
plays up (mostly one of the title's own genres) and a few style traits (close-up face,
brightness, text...). The click probability of variant v of title t for taste x is

    P(click) = σ(b + a_t + β · xᵀ e_v + s_vᵀ w + γ · (xᵀ e_v)² · 1[face_v]),

so the best artwork depends on the user (taste × emphasis), plus a style effect that is
the same for everyone and a non-linear "faces sell the matching genre" term. Variant 0
is the studio's default.

Run: every step a user arrives and ``titles_per_step`` titles are put in front of her;
the policy picks one artwork per title (a grouped decision,
:func:`bandit_core.grouped.select_grouped`), clicks are drawn from common random numbers
and every title's click is learnt at once. ``new_titles`` titles launch at
``launch_at`` (a fraction of the run), and from then on every step shows at least one of
them with probability ``new_share``: their first impressions are cold starts.

Policies: the shared neural-linear Thompson policy on ``[taste ; variant features ;
taste ⊗ variant features]`` (one model for every title, so a new title's artworks are
scored from their features at once), shared linear TS on the same features, per-title
LinTS (one disjoint posterior per artwork on the taste), the fixed default artwork, and
uniformly random artwork (the normaliser: regret relative to it, uniform = 100). Regret
is exact (expected clicks), overall and on the new titles after their launch.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bandit_core import Candidates, Group, make_policy, select_grouped
from bandit_core.policies.base import Policy

FloatArray = np.ndarray
POLICIES = ("neural_linear", "shared_lints", "per_title_lints", "default", "uniform")


@dataclass(frozen=True)
class ArtworkWorld:
    """Titles, their artwork variants and the click model (see the module docstring)."""

    genres: int
    styles: int
    title_genres: FloatArray  # (n_titles, genres) 0/1
    title_appeal: FloatArray  # (n_titles,)
    variants: tuple[FloatArray, ...]  # per title (n_v, genres + styles)
    style_weights: FloatArray  # (styles,)
    launch: FloatArray  # (n_titles,) step at which the title becomes available
    bias: float = -1.5
    beta: float = 3.0
    gamma: float = 6.0

    @classmethod
    def make(
        cls,
        rng: np.random.Generator,
        steps: int,
        n_titles: int = 60,
        new_titles: int = 20,
        genres: int = 6,
        styles: int = 3,
        launch_at: float = 0.5,
    ) -> ArtworkWorld:
        total = n_titles + new_titles
        title_genres = np.zeros((total, genres))
        variants = []
        for t in range(total):
            own = rng.choice(genres, size=int(rng.integers(1, 3)), replace=False)
            title_genres[t, own] = 1.0
            n_v = int(rng.integers(3, 11))
            focus = np.where(
                rng.random(n_v) < 0.8, rng.choice(own, size=n_v), rng.integers(0, genres, n_v)
            )
            emphasis = np.zeros((n_v, genres))
            emphasis[np.arange(n_v), focus] = 1.0
            emphasis = 0.7 * emphasis + 0.3 * rng.dirichlet(np.ones(genres), size=n_v)
            style = (rng.random((n_v, styles)) < 0.5).astype(float)
            variants.append(np.hstack([emphasis, style]))
        launch = np.zeros(total)
        launch[n_titles:] = int(launch_at * steps)
        return cls(
            genres=genres,
            styles=styles,
            title_genres=title_genres,
            title_appeal=0.3 * rng.standard_normal(total),
            variants=tuple(variants),
            style_weights=np.array([0.4, -0.3, 0.2, 0.1, -0.1][:styles]),
            launch=launch,
        )

    @property
    def dim_arm(self) -> int:
        return self.genres + self.styles

    @property
    def n_titles(self) -> int:
        return len(self.variants)

    def user(self, rng: np.random.Generator) -> FloatArray:
        out: FloatArray = rng.dirichlet(np.full(self.genres, 0.3))
        return out

    def click_probabilities(self, taste: FloatArray, title: int) -> FloatArray:
        """P(click) of every variant of ``title`` for ``taste``, shape (n_v,)."""
        v = self.variants[title]
        match = v[:, : self.genres] @ taste
        face = v[:, self.genres]
        logit = (
            self.bias
            + self.title_appeal[title]
            + self.beta * match
            + v[:, self.genres :] @ self.style_weights
            + self.gamma * match**2 * face
        )
        out: FloatArray = 1.0 / (1.0 + np.exp(-logit))
        return out

    def group(self, title: int) -> Group:
        n_v = self.variants[title].shape[0]
        ids = tuple(f"t{title}/a{v}" for v in range(n_v))
        return Group(f"t{title}", Candidates(ids, self.variants[title]))


@dataclass
class Stream:
    """Per step: the taste, the titles shown and one uniform per title (CRN)."""

    tastes: FloatArray  # (steps, genres)
    titles: list[list[int]]
    uniforms: FloatArray  # (steps, titles_per_step)


def make_stream(
    world: ArtworkWorld,
    steps: int,
    rng: np.random.Generator,
    titles_per_step: int = 3,
    new_share: float = 0.5,
) -> Stream:
    tastes = np.stack([world.user(rng) for _ in range(steps)])
    titles = []
    for t in range(steps):
        live = np.flatnonzero(world.launch <= t)
        new = live[world.launch[live] > 0]
        shown = list(rng.choice(live, size=titles_per_step, replace=False))
        if new.size and rng.random() < new_share and not set(shown) & set(new.tolist()):
            shown[-1] = int(rng.choice(new))
        titles.append([int(x) for x in shown])
    return Stream(tastes, titles, rng.random((steps, titles_per_step)))


# ----------------------------------------------------------------------------- agents
class FixedDefault:
    """Always the studio's default artwork (variant 0)."""

    name = "default"
    model_version = None

    def pick(self, taste: FloatArray, groups: list[Group], rng: np.random.Generator) -> list[int]:
        return [0] * len(groups)

    def learn(self, taste: FloatArray, group: Group, arm: int, reward: float) -> None:
        pass


class UniformArtwork(FixedDefault):
    name = "uniform"

    def pick(self, taste: FloatArray, groups: list[Group], rng: np.random.Generator) -> list[int]:
        return [int(rng.integers(len(g.candidates))) for g in groups]


class BanditAgent:
    """A ``bandit_core`` policy deciding every title of a step with ``select_grouped``."""

    def __init__(self, name: str, policy: Policy) -> None:
        self.name, self.policy = name, policy

    def pick(self, taste: FloatArray, groups: list[Group], rng: np.random.Generator) -> list[int]:
        return [d.arm for d in select_grouped(self.policy, taste, groups, rng).decisions]

    def learn(self, taste: FloatArray, group: Group, arm: int, reward: float) -> None:
        c = group.candidates
        self.policy.update(taste, c.ids[arm], reward, c.features[arm])


def make_agent(name: str, world: ArtworkWorld, seed: int) -> Any:
    du, da = world.genres, world.dim_arm
    if name == "default":
        return FixedDefault()
    if name == "uniform":
        return UniformArtwork()
    if name == "per_title_lints":
        return BanditAgent(name, make_policy("lints", dim_user=du))
    if name == "shared_lints":
        return BanditAgent(
            name, make_policy("shared_lints", dim_user=du, dim_arm=da, interactions=True, n_sim=100)
        )
    if name == "neural_linear":
        policy = make_policy(
            "neural_linear",
            dim_user=du,
            dim_arm=da,
            interactions=True,
            hidden=(50,),
            loss="mse",
            retrain_every=100,
            epochs=10,
            max_train_steps=100,
            batch_size=512,
            learning_rate=3e-3,
            lambda_prior=0.25,
            a0=6.0,
            b0=6.0,
            n_sim=100,
            device="cpu",
            seed=seed,
        )
        return BanditAgent(name, policy)
    raise ValueError(f"Unknown policy {name!r}; expected one of: {', '.join(POLICIES)}.")


# ----------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    policy: str
    seed: int
    impressions: int
    clicks: float
    regret: float
    uniform_regret: float
    new_impressions: int
    new_regret: float
    new_uniform_regret: float
    seconds: float

    def row(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["normalized_regret"] = 100.0 * self.regret / self.uniform_regret
        out["new_normalized_regret"] = (
            100.0 * self.new_regret / self.new_uniform_regret if self.new_uniform_regret else None
        )
        out["ctr"] = self.clicks / self.impressions
        return out


def run_agent(agent: Any, world: ArtworkWorld, stream: Stream, seed: int) -> RunResult:
    rng = np.random.default_rng(seed + 1000)
    totals = np.zeros(6)  # impressions, clicks, regret, uniform, new regret, new uniform
    new_impressions = 0
    busy = 0.0
    for t, titles in enumerate(stream.titles):
        taste = stream.tastes[t]
        groups = [world.group(title) for title in titles]
        start = time.perf_counter()
        arms = agent.pick(taste, groups, rng)
        busy += time.perf_counter() - start
        for j, (title, group, arm) in enumerate(zip(titles, groups, arms, strict=True)):
            p = world.click_probabilities(taste, title)
            reward = float(stream.uniforms[t, j] < p[arm])
            start = time.perf_counter()
            agent.learn(taste, group, arm, reward)
            busy += time.perf_counter() - start
            regret, uniform = p.max() - p[arm], p.max() - p.mean()
            totals += (1.0, reward, regret, uniform, 0.0, 0.0)
            if world.launch[title] > 0:
                new_impressions += 1
                totals[4:] += (regret, uniform)
    return RunResult(
        agent.name,
        seed,
        int(totals[0]),
        float(totals[1]),
        float(totals[2]),
        float(totals[3]),
        new_impressions,
        float(totals[4]),
        float(totals[5]),
        busy,
    )


def run(
    policies: Sequence[str],
    steps: int,
    seeds: Sequence[int],
    titles_per_step: int = 3,
    n_titles: int = 60,
    new_titles: int = 20,
    console: Console | None = None,
) -> list[RunResult]:
    torch.set_num_threads(1)
    results = []
    for seed in seeds:
        world = ArtworkWorld.make(np.random.default_rng(seed), steps, n_titles, new_titles)
        stream = make_stream(world, steps, np.random.default_rng(seed + 1), titles_per_step)
        for name in policies:
            result = run_agent(make_agent(name, world, seed), world, stream, seed)
            results.append(result)
            if console is not None:
                console.print(
                    f"seed {seed} {name}: regret {result.regret:.1f} "
                    f"(new titles {result.new_regret:.1f}), {result.seconds:.0f} s"
                )
    return results


def summarise(results: list[RunResult]) -> list[dict[str, Any]]:
    """Mean and standard error over seeds, per policy."""
    out = []
    for name in dict.fromkeys(r.policy for r in results):
        rows = [r.row() for r in results if r.policy == name]
        entry: dict[str, Any] = {"policy": name, "seeds": len(rows)}
        for key in ("normalized_regret", "new_normalized_regret", "ctr", "regret", "new_regret"):
            values = np.array([r[key] for r in rows], dtype=float)
            entry[key] = float(values.mean())
            entry[key + "_se"] = (
                float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
            )
        entry["seconds"] = float(np.mean([r["seconds"] for r in rows]))
        out.append(entry)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--titles-per-step", type=int, default=3)
    parser.add_argument("--titles", type=int, default=60, help="Titles at launch.")
    parser.add_argument("--new-titles", type=int, default=20, help="Titles added mid-run.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    names = [p for p in args.policies.split(",") if p]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        parser.error(
            f"--policies: unknown policy {unknown[0]!r}; expected some of {', '.join(POLICIES)}"
        )
    if args.steps < 10:
        parser.error(f"--steps must be at least 10; got {args.steps}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    console = Console()
    results = run(
        names, args.steps, seeds, args.titles_per_step, args.titles, args.new_titles, console
    )
    summary = summarise(results)
    table = Table(
        title=f"artwork: {args.steps} steps × {args.titles_per_step} titles, seeds {seeds}"
    )
    for col in ("policy", "regret (uniform = 100)", "new titles (uniform = 100)", "CTR", "seconds"):
        table.add_column(col, justify="left" if col == "policy" else "right")

    def show(value: float | None, se: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.1f}" if se is None else f"{value:.1f} ± {se:.1f}"

    for s in summary:
        table.add_row(
            s["policy"],
            show(s["normalized_regret"], s["normalized_regret_se"]),
            show(s["new_normalized_regret"], s["new_normalized_regret_se"]),
            f"{s['ctr']:.4f}",
            f"{s['seconds']:.0f}",
        )
    console.print(table)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "artwork",
                    "steps": args.steps,
                    "titles_per_step": args.titles_per_step,
                    "titles": args.titles,
                    "new_titles": args.new_titles,
                    "seeds": seeds,
                    "summary": summary,
                    "runs": [r.row() for r in results],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
