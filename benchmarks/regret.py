"""Regret benchmark: every policy (ours and the peers) on the same context streams.

    python -m benchmarks.regret --env wheel --delta 0.5,0.9 \\
        --policies uniform,linucb,lints,shared_lints,neural_linear,ensemble,dropout,vw_squarecb \\
        --steps 20000 --seeds 0,1,2 --json wheel.json --plot wheel.png

    python -m benchmarks.environments digits digits.csv
    python -m benchmarks.regret --env classification --data digits.csv --label-column label \\
        --policies ... --seeds 0,1,2 --json digits.json

For each environment and seed the stream (contexts, candidate sets, expected rewards,
noise draws) is built once and replayed to every policy in turn, in this process and this
loop. Regret is exact (expected rewards); the normalised regret divides a run's cumulative
regret by the exact expected regret of the uniform policy on the same stream (Uniform = 100,
as in Riquelme, Tucker & Snoek, ICLR 2018). ``seconds`` is the time spent inside the
policy's own calls (choose + learn), not in building the stream.

Every learner, ours and the peers alike, is taught ``reward / R`` where ``R`` is the
stream's reward scale (``--reward-scale auto``: the largest expected reward in absolute
value, 50 on the wheel, 1 for classification): VW's squarecb and the α of LinUCB assume
rewards of order one (on the raw wheel rewards VW squarecb's regret is about ten times
higher). Regret and cumulative reward are reported in the environment's own units.

A peer whose library is missing is listed under "not run" and in the JSON (``missing``);
the rest of the run goes on. ``--set policy.option=value`` overrides a policy's option
(e.g. ``--set neural_linear.hidden=100,100``; JSON for objects:
``--set 'shared_linucb.segment_floors={"group_0": 0.1}'``). ``--users N`` gives every step
a user among N (hashed, drawn from its own seeded stream, the same for every policy): our
policies decide each step for its user, so floors per hashed user group
(``segment_user_groups``) apply as in the service; the peers have no such floors.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from threadpoolctl import threadpool_limits

from bandit_core import make_policy
from bandit_core.catalog import CATALOG
from bandit_core.option_text import parse_overrides
from bandit_core.policies.arm_features import candidates_for
from bandit_core.policies.base import Policy
from bandit_core.policies.overlap import for_users
from bandit_core.types import Candidates, Decision
from bandit_core.user_groups import simulated_users
from benchmarks.environments import ENVIRONMENTS, BenchEnvironment, Stream, make_environment
from benchmarks.peers import PEERS, make_peer, peer_unavailable

#: harness entries that run a registered policy with other options: name → policy
HARNESS_VARIANTS = {"neural_linear_emb": "neural_linear"}
#: width of the hashed arm embedding of ``neural_linear_emb``
ARM_EMBEDDING = 8
#: our policies: every catalog entry, and the harness's variants of them
OURS = (*CATALOG, *HARNESS_VARIANTS)
DEFAULT_POLICIES = (
    "uniform",
    "linucb",
    "lints",
    "shared_lints",
    "neural_linear",
    "ensemble",
    "dropout",
)
#: points kept per regret curve (for the plot)
CURVE_POINTS = 200
#: the largest simulated user population (``--users``)
MAX_USERS = 1_000_000_000


# ----------------------------------------------------------------------------- policies
def policy_options(name: str, env: BenchEnvironment) -> dict[str, Any]:
    """Default options of our policy ``name`` on ``env``.

    One rule for every environment (no per-environment tuning):

    * ``linucb`` uses α = 1 and λ = 1, the peers' mabwiser setting (the same algorithm);
    * linear TS uses the library defaults (λ = 1, a0 = b0 = 6, v = 1), shared linear TS
      with 100 extra draws for the propensities (per-arm ones are exact); logistic TS
      (rewards in [0, 1]) the library defaults (λ = 1, intercept) on the hybrid features;
      for binary rewards every Normal-inverse-gamma head uses
      b0 = 1.5, so the prior mean of σ² (b0 / (a0 − 1) = 0.3) is about the largest
      Bernoulli variance (0.25) instead of 1.2;
    * the neural policies share one network shape, ``(50,)`` ReLU units on
      ``[x ; a ; x ⊗ a]`` (the hybrid model's φ), retrained every 50 observations (20 for
      binary rewards) with at most 100 Adam steps of 512 rows; neural-linear uses the
      prior of Riquelme et al. (2018): λ = 0.25, a0 = b0 = 6 (b0 = 1.5 for binary rewards);
      the ensemble (5 members) and dropout (concrete, initial rate 0.2) use Thompson
      sampling, with the BCE loss for binary rewards;
    * the hybrid models share ``z = [x ; a ; x ⊗ a]`` and learn a block per arm on ``x``,
      with the settings of LinUCB and linear TS above; where the arm features are the arm's
      one-hot (classification, drift) ``x ⊗ a`` is left out of z: it is what the per-arm
      blocks already are;
    * ``neural_linear_emb`` is neural-linear for many arms: its input crosses the context
      with a hashed 8-dimensional arm embedding instead of the arm features,
      ``[x ; a ; x ⊗ e(a)]``, so the network does not widen with the number of arms
      (``x ⊗ a`` has d·K inputs when the arm features are a one-hot), and its head also
      sees that input (``head_inputs``: the wide part of a wide & deep model, so the head
      holds the shared linear model on it and the network adds what is not linear);
      everything else as neural-linear.
    """
    du, da = env.dim_user, env.dim_arm
    hybrid = {"dim_user": du, "dim_arm": da, "interactions": not getattr(env, "arm_one_hot", False)}
    shared = {"dim_user": du, "dim_arm": da}
    binary = env.binary_rewards
    prior = {"b0": 1.5} if binary else {}
    neural: dict[str, Any] = {
        **shared,
        "interactions": da > 0,
        "hidden": (50,),
        "loss": "bce" if binary else "mse",
        "retrain_every": 20 if binary else 50,
        "learning_rate": 3e-3,
        "epochs": 10,
        "max_train_steps": 100,
        "batch_size": 512,
    }
    neural_linear = {
        **neural,
        "loss": "mse",
        "lambda_prior": 0.25,
        "a0": 6.0,
        "b0": 6.0,
        "n_sim": 100,
        **prior,
    }
    table: dict[str, dict[str, Any]] = {
        "uniform": {"dim_user": du},
        "linucb": {"dim_user": du, "alpha": 1.0},
        "lints": {"dim_user": du, **prior},
        "shared_linucb": {**shared, "interactions": True, "alpha": 1.0},
        "shared_lints": {**shared, "interactions": True, "n_sim": 100, **prior},
        "epsilon_greedy": {**shared, "interactions": True, "epsilon": 0.05},
        "logistic_ts": {**shared, "interactions": True, "n_sim": 100},
        "neural_linear": neural_linear,
        "ensemble": {**neural, "n_members": 5, "mode": "ts"},
        "dropout": {**neural, "dropout": 0.2, "mode": "ts", "n_sim": 100},
        "hybrid_linucb": {**hybrid, "alpha": 1.0},
        "neural_linear_emb": {
            **neural_linear,
            "interactions": False,
            "arm_embedding": ARM_EMBEDDING,
            "head_inputs": True,
        },
        "hybrid_lints": {**hybrid, "n_sim": 100, **prior},
    }
    if name not in table:  # a policy without a benchmark setting: its library defaults
        arm = {"dim_arm": da} if CATALOG[name].arm_features else {}
        return {"dim_user": du, **arm}
    return dict(table[name])


@dataclass
class PolicyAgent:
    """One of our policies behind the harness's choose/learn interface; ``user`` is the
    user hash the next decision is for (``run_agent`` sets it when the run has users)."""

    name: str
    policy: Policy
    user: str | None = None

    def choose(
        self, context: np.ndarray, candidates: Candidates, rng: np.random.Generator
    ) -> tuple[int, float]:
        d = self.choose_decision(context, candidates, rng)
        return d.arm, d.propensity

    def choose_decision(
        self, context: np.ndarray, candidates: Candidates, rng: np.random.Generator
    ) -> Decision:
        """The policy's whole decision (features passed only if the policy uses them)."""
        policy = self.policy if self.user is None else for_users(self.policy, [self.user])
        return policy.select(context, candidates_for(self.policy, candidates), rng)

    def learn(
        self,
        context: np.ndarray,
        candidates: Candidates,
        arm: int,
        reward: float,
        propensity: float,
    ) -> None:
        arm_features = candidates.features[arm] if candidates.dim else None
        self.policy.update(context, candidates.ids[arm], reward, arm_features)

    def close(self) -> None:
        pass


def make_agent(
    name: str,
    env: BenchEnvironment,
    seed: int,
    first: Candidates,
    overrides: dict[str, dict[str, Any]],
) -> Any:
    """Our policy or a peer; raises ``RuntimeError`` for a peer that cannot run here."""
    if name in PEERS:
        return make_peer(name, seed, env, first)
    if name not in OURS:
        raise ValueError(f"Unknown policy {name!r}; expected one of: {', '.join((*OURS, *PEERS))}.")
    options = {**policy_options(name, env), **overrides.get(name, {})}
    policy = HARNESS_VARIANTS.get(name, name)
    if CATALOG[policy].trains_network:
        options.setdefault("seed", seed)
    return PolicyAgent(name, make_policy(policy, **options))


# ----------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    policy: str
    seed: int
    steps: int
    cumulative_regret: float
    cumulative_reward: float
    normalized_regret: float
    seconds: float
    curve: list[float] = field(default_factory=list, repr=False)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("curve")
        return out


def run_agent(
    agent: Any,
    env: BenchEnvironment,
    stream: Stream,
    rng: np.random.Generator,
    seed: int,
    on_step: Callable[[int], None] | None = None,
    reward_scale: float = 1.0,
    chosen: list[int] | None = None,
    users: Sequence[str] | None = None,
) -> RunResult:
    """Replay ``stream`` to ``agent`` online; regret from the expected rewards.

    The agent learns from ``reward / reward_scale``; the result is in the env's units.
    Numpy and scipy run on one BLAS thread during the replay (the service's setting).
    ``chosen``, when given, receives the index of the arm chosen at every step; ``users``
    (one per step) says whom each of our policies' decisions is for.
    """
    steps = len(stream)
    regrets = np.empty(steps)
    reward_sum = 0.0
    busy = 0.0
    step_users = users if isinstance(agent, PolicyAgent) else None  # peers: no users
    # one BLAS thread (numpy's and scipy's OpenBLAS), as in the service and
    # benchmarks.latency: a step's matrices are small, and waking BLAS worker threads
    # costs more than they give (docs/benchmarks.md, issue 23's digits timing)
    with threadpool_limits(limits=1, user_api="blas"):
        for t in range(steps):
            x, cands, means = stream.contexts[t], stream.candidates[t], stream.means[t]
            if step_users is not None:
                agent.user = step_users[t]
            start = time.perf_counter()
            arm, prop = agent.choose(x, cands, rng)
            busy += time.perf_counter() - start
            if chosen is not None:
                chosen.append(arm)
            reward = env.reward(means, arm, float(stream.uniforms[t]))
            start = time.perf_counter()
            agent.learn(x, cands, arm, reward / reward_scale, prop)
            busy += time.perf_counter() - start
            regrets[t] = means.max() - means[arm]
            reward_sum += reward
            if on_step is not None and (t + 1) % 100 == 0:
                on_step(100)
    if on_step is not None:
        on_step(steps % 100)
    agent.close()
    cumulative = np.cumsum(regrets)
    marks = np.unique(np.linspace(0, steps - 1, min(steps, CURVE_POINTS)).astype(int))
    return RunResult(
        policy=agent.name,
        seed=seed,
        steps=steps,
        cumulative_regret=float(cumulative[-1]),
        cumulative_reward=reward_sum,
        normalized_regret=100.0 * float(cumulative[-1]) / stream.uniform_regret(),
        seconds=busy,
        curve=[float(v) for v in cumulative[marks]],
    )


@dataclass
class EnvironmentReport:
    env: str
    options: dict[str, Any]
    steps: int
    seeds: list[int]
    results: list[RunResult]
    missing: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "options": self.options,
            "steps": self.steps,
            "seeds": self.seeds,
            "missing": self.missing,
            "results": [r.row() for r in self.results],
        }


def run_environment(
    env_name: str,
    env_options: dict[str, Any],
    policies: Sequence[str],
    steps: int | None,
    seeds: Sequence[int],
    overrides: dict[str, dict[str, Any]],
    progress: Progress | None = None,
    reward_scale: str = "auto",
    n_users: int = 0,
) -> EnvironmentReport:
    """All ``policies`` × ``seeds`` on one environment (``reward_scale``: "auto" or a
    number; ``n_users``: see ``--users`` in the module docstring)."""
    missing = {p: r for p in policies if p in PEERS and (r := peer_unavailable(p)) is not None}
    runnable = [p for p in policies if p not in missing]
    results: list[RunResult] = []
    label = env_name + "".join(f" {k}={v}" for k, v in env_options.items() if k != "data")
    n_steps = 0
    for seed in seeds:
        env = make_environment(env_name, seed, **env_options)
        n_steps = steps if steps is not None else getattr(env, "n_rows", 0) or 1000
        stream = env.stream(n_steps, np.random.default_rng([seed, 11]))
        scale = stream.reward_scale() if reward_scale == "auto" else float(reward_scale)
        users = (
            simulated_users(n_users, n_steps, np.random.default_rng([seed, 17]))
            if n_users
            else None
        )
        for name in runnable:
            agent = make_agent(name, env, seed, stream.candidates[0], overrides)
            task = None
            if progress is not None:
                task = progress.add_task(f"{label} seed={seed} {name}", total=n_steps)
            advance: Callable[[int], None] | None = None
            if progress is not None and task is not None:
                advance = _advancer(progress, task)
            rng = np.random.default_rng([seed, 13])
            results.append(run_agent(agent, env, stream, rng, seed, advance, scale, users=users))
            if progress is not None and task is not None:
                progress.remove_task(task)
    name = (
        env_name
        if env_name != "classification"
        else f"classification:{Path(env_options['data']).stem}"
    )
    if "delta" in env_options:
        name = f"{env_name} delta={env_options['delta']}"
    public: dict[str, Any] = {
        k: str(v) if isinstance(v, Path) else v for k, v in env_options.items()
    }
    public["reward_scale"] = reward_scale
    return EnvironmentReport(name, public, n_steps, list(seeds), results, missing)


def _advancer(progress: Progress, task: Any) -> Callable[[int], None]:
    def advance(n: int) -> None:
        progress.advance(task, n)

    return advance


# ----------------------------------------------------------------------------- output
@dataclass(frozen=True)
class Summary:
    policy: str
    n: int
    regret_mean: float
    regret_se: float
    normalized_mean: float
    normalized_se: float
    reward_mean: float
    seconds_mean: float
    seconds_per_1000: float


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    se = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else float("nan")
    return float(arr.mean()), se


def summarise(report: EnvironmentReport) -> list[Summary]:
    """Per-policy mean ± standard error over seeds, best normalised regret first."""
    out = []
    for name in dict.fromkeys(r.policy for r in report.results):
        runs = [r for r in report.results if r.policy == name]
        reg = _mean_se([r.cumulative_regret for r in runs])
        norm = _mean_se([r.normalized_regret for r in runs])
        secs = float(np.mean([r.seconds for r in runs]))
        steps = float(np.mean([r.steps for r in runs]))
        out.append(
            Summary(
                name,
                len(runs),
                reg[0],
                reg[1],
                norm[0],
                norm[1],
                float(np.mean([r.cumulative_reward for r in runs])),
                secs,
                1000.0 * secs / steps,
            )
        )
    return sorted(out, key=lambda s: s.normalized_mean)


def _pm(mean: float, se: float, digits: int) -> str:
    return f"{mean:,.{digits}f}" if math.isnan(se) else f"{mean:,.{digits}f} ± {se:,.{digits}f}"


def print_table(report: EnvironmentReport, console: Console) -> None:
    table = Table(title=f"{report.env} — {report.steps:,} steps, seeds {report.seeds}")
    for col in (
        "policy",
        "cumulative regret",
        "normalised (Uniform=100)",
        "cumulative reward",
        "seconds",
        "s / 1k steps",
    ):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for s in summarise(report):
        table.add_row(
            s.policy,
            _pm(s.regret_mean, s.regret_se, 1),
            _pm(s.normalized_mean, s.normalized_se, 2),
            f"{s.reward_mean:,.1f}",
            f"{s.seconds_mean:.1f}",
            f"{s.seconds_per_1000:.3f}",
        )
    console.print(table)
    for peer, reason in report.missing.items():
        console.print(f"[yellow]not run:[/yellow] {peer}: {reason}")


def markdown_table(report: EnvironmentReport) -> str:
    """The summary of :func:`summarise` as a Markdown table (for docs/benchmarks.md)."""
    lines = [
        f"**{report.env}** — {report.steps:,} steps, seeds {', '.join(map(str, report.seeds))}",
        "",
        "| policy | cumulative regret | normalised (Uniform = 100) | cumulative reward "
        "| s / 1,000 steps |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in summarise(report):
        lines.append(
            f"| {s.policy} | {_pm(s.regret_mean, s.regret_se, 1)} | "
            f"{_pm(s.normalized_mean, s.normalized_se, 2)} | {s.reward_mean:,.1f} | "
            f"{s.seconds_per_1000:.3f} |"
        )
    for peer, reason in report.missing.items():
        lines.append(f"\nnot run: {peer}: {reason}")
    return "\n".join(lines)


def load_reports(path: Path) -> list[EnvironmentReport]:
    """Reports back from a ``--json`` file (one object or a list of them; no curves)."""
    payload = json.loads(Path(path).read_text())
    out = []
    for item in payload if isinstance(payload, list) else [payload]:
        results = [RunResult(**row) for row in item["results"]]
        out.append(
            EnvironmentReport(
                item["env"], item["options"], item["steps"], item["seeds"], results, item["missing"]
            )
        )
    return out


def plot_curves(reports: Sequence[EnvironmentReport], path: Path) -> Path:
    """Cumulative regret against steps, mean over seeds with a ±1 s.e. band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(6.5 * len(reports), 4.5), squeeze=False)
    for ax, report in zip(axes[0], reports, strict=True):
        # get_cmap is typed as a Colormap; "tab20" is a ListedColormap, which has .colors
        colours: Sequence[Any] = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]
        for i, s in enumerate(summarise(report)):
            curves = np.array([r.curve for r in report.results if r.policy == s.policy])
            x = np.linspace(1, report.steps, curves.shape[1])
            mean = curves.mean(axis=0)
            style = "--" if s.policy in PEERS else "-"  # peers dashed
            label = f"{s.policy} ({s.normalized_mean:.1f})"
            (line,) = ax.plot(x, mean, style, color=colours[i % len(colours)], label=label)
            if curves.shape[0] > 1:
                se = curves.std(axis=0, ddof=1) / math.sqrt(curves.shape[0])
                ax.fill_between(x, mean - se, mean + se, color=line.get_color(), alpha=0.2)
        ax.set_title(report.env)
        ax.set_xlabel("step")
        ax.set_ylabel("cumulative regret")
        ax.set_yscale("symlog")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.regret", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--env", required=True, choices=ENVIRONMENTS)
    p.add_argument("--delta", default=None, help="wheel radius δ; a comma list runs several wheels")
    p.add_argument("--data", type=Path, default=None, help="CSV for --env classification")
    p.add_argument("--label-column", default=None, help="class column of --data")
    p.add_argument(
        "--policies",
        default=",".join(DEFAULT_POLICIES),
        help=f"comma list of: {', '.join((*OURS, *PEERS))}",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per run (classification: one pass by default)",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--set", action="append", default=[], metavar="POLICY.OPTION=VALUE")
    p.add_argument(
        "--reward-scale", default="auto", help="learners see reward / R; 'auto' = max |E r|"
    )
    p.add_argument(
        "--users",
        type=_users,
        default=0,
        help="simulated users (0: none); our policies decide each step for its user",
    )
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _users(text: str) -> int:
    """``--users``: 0 to a billion."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
    if not 0 <= value <= MAX_USERS:
        raise argparse.ArgumentTypeError(f"expected 0 to {MAX_USERS}; got {text}")
    return value


def _env_variants(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.env == "classification":
        return [{"data": args.data, "label_column": args.label_column}]
    if args.env == "wheel":
        deltas = [float(d) for d in (args.delta or "0.5").split(",")]
        return [{"delta": d} for d in deltas]
    if args.delta is not None:
        raise ValueError("--delta only applies to --env wheel.")
    return [{}]


def main(argv: Sequence[str] | None = None) -> list[EnvironmentReport]:
    args = build_parser().parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in OURS and p not in PEERS]
    if unknown:
        raise SystemExit(
            f"unknown policies {unknown}; expected some of: {', '.join((*OURS, *PEERS))}"
        )
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    overrides = parse_overrides(args.set)
    torch.set_num_threads(args.threads)
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    reports = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with warnings.catch_warnings():
        # third-party peers (pandas inside mabwiser) warn about their own deprecations
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        with Progress(*columns, console=console, disable=args.quiet, transient=True) as progress:
            for variant in _env_variants(args):
                report = run_environment(
                    args.env,
                    variant,
                    policies,
                    args.steps,
                    seeds,
                    overrides,
                    progress,
                    reward_scale=args.reward_scale,
                    n_users=args.users,
                )
                reports.append(report)
                progress.console.print()
                print_table(report, progress.console)
    if args.json is not None:
        payload: Any = reports[0].to_json() if len(reports) == 1 else [r.to_json() for r in reports]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {args.json}")
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_curves(reports, args.plot)
        console.print(f"wrote {args.plot}")
    return reports


if __name__ == "__main__":
    main()
