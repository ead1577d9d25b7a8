"""The ``banditops`` command line."""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bandit_core import make_policy
from bandit_core.catalog import ALGORITHMS, CATALOG, policy_spec
from bandit_core.envs import (
    Environment,
    LinearEnvironment,
    LogisticClickEnvironment,
    WheelEnvironment,
)
from bandit_core.simulate import run_simulation
from serving.catalog.commands import catalog_app
from serving.commands import db_app, serve, store_app

app = typer.Typer(
    help="banditops: contextual bandits with exact propensities, from simulation to serving.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

ENVIRONMENTS = ("linear", "wheel", "logistic")


def _make_env(name: str, seed: int, delta: float) -> Environment:
    rng = np.random.default_rng(seed)
    if name == "linear":
        return LinearEnvironment.make(rng, n_arms=10, dim=8)
    if name == "wheel":
        return WheelEnvironment(delta)
    if name == "logistic":
        return LogisticClickEnvironment.make(
            rng, n_items=30, dim_user=6, dim_arm=4, n_candidates=10
        )
    raise typer.BadParameter(f"--env must be one of {', '.join(ENVIRONMENTS)}; got {name!r}.")


def _policy_for(name: str, env: Environment) -> Any:
    options: dict[str, Any] = {"dim_user": env.dim_user}
    spec = policy_spec(name)
    if spec.arm_features:
        options.update(dim_arm=env.dim_arm, interactions=True)
    if "n_sim" in spec.option_names():
        options["n_sim"] = 200
    return make_policy(name, **options)


def _run(
    env_name: str, policies: list[str], steps: int, seed: int, delta: float
) -> list[dict[str, Any]]:
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("simulating", total=len(policies))
        for name in policies:
            env = _make_env(env_name, seed, delta)
            policy = _policy_for(name, env)
            started = time.perf_counter()
            result = run_simulation(
                env, policy, steps, np.random.default_rng(seed + 1), np.random.default_rng(seed + 2)
            )
            rows.append(
                {
                    "policy": name,
                    "steps": steps,
                    "cumulative_regret": result.cumulative_regret,
                    "cumulative_reward": result.cumulative_reward,
                    "mean_reward": result.cumulative_reward / steps,
                    "mean_propensity": float(result.propensities.mean()),
                    "seconds": time.perf_counter() - started,
                }
            )
            progress.advance(task)
    baseline = next((r["cumulative_regret"] for r in rows if r["policy"] == "uniform"), None)
    for r in rows:
        r["normalized_regret"] = 100.0 * r["cumulative_regret"] / baseline if baseline else None
    return rows


def _print(title: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for col in (
        "policy",
        "mean reward",
        "cumulative regret",
        "regret (uniform = 100)",
        "mean propensity",
        "seconds",
    ):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        norm = r["normalized_regret"]
        table.add_row(
            r["policy"],
            f"{r['mean_reward']:.4f}",
            f"{r['cumulative_regret']:.1f}",
            "-" if norm is None else f"{norm:.1f}",
            f"{r['mean_propensity']:.3f}",
            f"{r['seconds']:.2f}",
        )
    console.print(table)


@app.command()
def simulate(
    env: Annotated[str, typer.Option(help=f"Environment: {', '.join(ENVIRONMENTS)}.")] = "linear",
    policies: Annotated[
        str, typer.Option(help="Comma-separated policy names.")
    ] = "uniform,linucb,lints",
    steps: Annotated[int, typer.Option(min=1, help="Steps per policy.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the environment and the policies.")] = 0,
    delta: Annotated[float, typer.Option(min=0.01, max=0.99, help="Wheel radius δ.")] = 0.5,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results here.")
    ] = None,
) -> None:
    """Run policies online on a seeded simulated environment and compare their regret."""
    names = [p.strip() for p in policies.split(",") if p.strip()]
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise typer.BadParameter(
            f"unknown policy {unknown[0]!r}; expected some of {', '.join(ALGORITHMS)}.",
            param_hint="--policies",
        )
    rows = _run(env, names, steps, seed, delta)
    _print(f"{env}: {steps} steps, seed {seed}", rows)
    if json_path is not None:
        json_path.write_text(json.dumps({"env": env, "seed": seed, "results": rows}, indent=2))


@app.command(name="policies")
def list_policies() -> None:
    """List the available policies and their options with defaults."""
    table = Table(title="policies")
    table.add_column("name")
    table.add_column("options (default)")
    for name in ALGORITHMS:
        config_class = policy_spec(name).config_class()
        if config_class is None:
            opts = "dim_user (None)"
        else:
            opts = ", ".join(
                f"{f.name} ({'required' if f.default is MISSING else f.default!r})"
                for f in fields(config_class)
            )
        table.add_row(name, opts)
    console.print(table)


# The service commands live in serving/commands.py.
app.command()(serve)
app.add_typer(db_app, name="db")
app.add_typer(store_app, name="store")
app.add_typer(catalog_app, name="catalog")


def main() -> None:  # pragma: no cover - console-script entry
    app()
