"""The ``banditops`` command line, assembled here from every package's commands.

The service's (:mod:`serving.commands`, :mod:`serving.catalog.commands`), training's
(:mod:`training.commands`) and the operational ones defined here or in :mod:`ops`;
``banditops --help`` lists them (every command the README names is checked to exist).
"""

from __future__ import annotations

import inspect
import json
import os
import time
import tomllib
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from bandit_core import make_policy
from bandit_core.catalog import ALGORITHMS, CATALOG, policy_spec
from bandit_core.envs import (
    Environment,
    LinearEnvironment,
    LogisticClickEnvironment,
    WheelEnvironment,
)
from bandit_core.option_text import parse_overrides
from bandit_core.policies.overlap import floor_of_policy
from bandit_core.simulate import run_simulation
from bandit_core.user_groups import simulated_users, user_group_key
from eventstore.console import error, warning
from eventstore.contract import MLFLOW_CLIENT_ENV
from eventstore.settings import WORKSPACE_ENV, setting_problems, workspace_file, workspace_of
from ops import config_file
from ops.airflow_cli import airflow_app
from ops.config_reference import markdown, splice, unknown_variables
from serving.catalog.commands import catalog_app
from serving.commands import db_app, serve, store_app
from training.commands import evaluate, models, promote, rollback, rollout_app, train


class _Commands(TyperGroup):
    """The root command group: a bad ``BANDITOPS_*`` setting met by any command ends it
    with each field and what it expects (exit 2), never a traceback."""

    def invoke(self, ctx: Any) -> Any:  # typer's own click Context
        for line in unknown_variables(os.environ):
            warning(line)
        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            for problem in setting_problems(exc):
                error(problem)
            raise typer.Exit(2) from None
        except Exception as exc:
            if not is_operator_error(exc):
                raise  # a bug: its traceback is what a report needs
            error(operator_message(exc))
            raise typer.Exit(2) from None


#: Libraries whose exceptions say what an operator gave them wrong (a database URL, a
#: migration revision, a registry or its alias), named by module so that the CLI needs
#: none of them imported.
_OPERATOR_LIBRARIES = ("sqlalchemy.", "alembic.", "mlflow.", "pydantic_settings.")


def is_operator_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports bad input, configuration or a refusal (one line, exit 2)
    rather than a bug (a traceback): a ``ValueError`` (our clear messages, bad JSON), an
    ``OSError`` (a path), a registry's refusal, or an error of the libraries above."""
    from modelregistry.registry import RegistryError

    if isinstance(exc, (ValueError, OSError, RegistryError)):
        return True
    return any(type(exc).__module__.startswith(m) for m in _OPERATOR_LIBRARIES)


def operator_message(exc: BaseException) -> str:
    """The first line of ``exc``'s message, with its type when that is a library's."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, (ValueError, OSError)) and type(exc).__module__ == "builtins":
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


app = typer.Typer(
    cls=_Commands,
    help="banditops: contextual bandits with exact propensities, from simulation to serving.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
wide = Console(width=140)

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


def _policy_for(name: str, env: Environment, overrides: dict[str, Any]) -> Any:
    options: dict[str, Any] = {"dim_user": env.dim_user}
    spec = policy_spec(name)
    if spec.arm_features:
        options.update(dim_arm=env.dim_arm, interactions=True)
    if "n_sim" in spec.option_names():
        options["n_sim"] = 200
    return make_policy(name, **{**options, **overrides})


def _by_group(
    policy: Any, users: Sequence[str | None] | None, props: np.ndarray
) -> dict[str, float]:
    """The smallest propensity of each hashed user group (policies with group floors)."""
    groups = (floor_of_policy(policy) or {}).get("segment_user_groups")
    if users is None or groups is None:
        return {}
    keys = np.array([user_group_key(u, groups) for u in users[: props.size]])
    return {str(k): float(props[keys == k].min()) for k in sorted(set(keys.tolist()))}


def _run(
    env_name: str,
    policies: list[str],
    steps: int,
    seed: int,
    delta: float,
    overrides: dict[str, dict[str, Any]],
    n_users: int,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    users = (
        None if n_users == 0 else simulated_users(n_users, steps, np.random.default_rng(seed + 3))
    )
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("simulating", total=len(policies))
        for name in policies:
            env = _make_env(env_name, seed, delta)
            try:
                policy = _policy_for(name, env, overrides.get(name, {}))
            except (TypeError, ValueError) as exc:
                raise typer.BadParameter(f"{name}: {exc}", param_hint="--set") from None
            started = time.perf_counter()
            result = run_simulation(
                env,
                policy,
                steps,
                np.random.default_rng(seed + 1),
                np.random.default_rng(seed + 2),
                users=users,
            )
            rows.append(
                {
                    "policy": name,
                    "steps": steps,
                    "cumulative_regret": result.cumulative_regret,
                    "cumulative_reward": result.cumulative_reward,
                    "mean_reward": result.cumulative_reward / steps,
                    "mean_propensity": float(result.propensities.mean()),
                    "min_propensity": float(result.propensities.min()),
                    "min_propensity_by_group": _by_group(policy, users, result.propensities),
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
        "min propensity",
        "seconds",
    ):
        table.add_column(col, justify="left" if col == "policy" else "right")
    grouped = any(r["min_propensity_by_group"] for r in rows)
    if grouped:
        table.add_column("min propensity per user group")
    for r in rows:
        norm = r["normalized_regret"]
        cells = [
            r["policy"],
            f"{r['mean_reward']:.4f}",
            f"{r['cumulative_regret']:.1f}",
            "-" if norm is None else f"{norm:.1f}",
            f"{r['mean_propensity']:.3f}",
            f"{r['min_propensity']:.4f}",
            f"{r['seconds']:.2f}",
        ]
        if grouped:
            by_group = r["min_propensity_by_group"].items()
            cells.append(", ".join(f"{k} {v:.4f}" for k, v in by_group) or "-")
        table.add_row(*cells)
    wide.print(table)


def simulate(
    env: Annotated[str, typer.Option(help=f"Environment: {', '.join(ENVIRONMENTS)}.")] = "linear",
    policies: Annotated[
        str, typer.Option(help="Comma-separated policy names.")
    ] = "uniform,linucb,lints",
    steps: Annotated[int, typer.Option(min=1, max=10_000_000, help="Steps per policy.")] = 2000,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the environment and the policies.")] = 0,
    delta: Annotated[float, typer.Option(min=0.01, max=0.99, help="Wheel radius δ.")] = 0.5,
    set_options: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="POLICY.OPTION=VALUE",
            help="A policy option (repeatable), e.g. shared_linucb.floor=0.02 or "
            "shared_linucb.segment_floors='{\"group_0\": 0.1}' (JSON for objects).",
        ),
    ] = None,
    users: Annotated[
        int,
        typer.Option(
            min=0,
            max=1_000_000_000,
            help="Simulated users (0: none): each step decides for one of them, so floors "
            "per hashed user group (segment_user_groups) apply as in the service.",
        ),
    ] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results here.")
    ] = None,
) -> None:
    """Run policies online on a seeded simulated environment and compare their regret."""
    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not names:
        raise typer.BadParameter(
            f"name at least one policy, comma-separated, of {', '.join(ALGORITHMS)}.",
            param_hint="--policies",
        )
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise typer.BadParameter(
            f"unknown policy {unknown[0]!r}; expected some of {', '.join(ALGORITHMS)}.",
            param_hint="--policies",
        )
    try:
        overrides = parse_overrides(set_options or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from None
    stray = sorted(set(overrides) - set(names))
    if stray:
        raise typer.BadParameter(
            f"options for {stray[0]!r}, which --policies does not run.", param_hint="--set"
        )
    rows = _run(env, names, steps, seed, delta, overrides, users)
    _print(f"{env}: {steps} steps, seed {seed}", rows)
    if json_path is not None:
        json_path.write_text(json.dumps({"env": env, "seed": seed, "results": rows}, indent=2))


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


def demo(
    users: Annotated[int, typer.Option(min=10, help="Simulated users (fixed profiles).")] = 400,
    requests: Annotated[int, typer.Option(min=600, help="Requests per simulated day.")] = 2500,
    workspace: Annotated[
        Path, typer.Option(help="Folder for every store, registry and log.")
    ] = Path("workspace/demo"),
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary here.")
    ] = None,
    algorithm: Annotated[str, typer.Option(help="Policy the nightly DAG trains.")] = "shared_lints",
    seed: Annotated[int, typer.Option(help="Seed of the simulation and training.")] = 0,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="An Open Bandit Dataset campaign folder (random.csv, bts.csv, …): train on "
            "its uniform-random log and compare off-policy with the logging policy and BTS.",
        ),
    ] = None,
) -> None:
    """The whole loop on embedded defaults: service (fallback) → day 1 over HTTP → nightly
    Airflow retrain → the service loads @production → day 2 → retrain → day 3 → day 4, a
    worse version's staged rollout rolled back at its first stage; summary.

    With --data: replay a real Open Bandit log instead (no service, no Airflow)."""
    # the demos pull in the service, the pipelines and MLflow: imported when run, so that
    # every other command starts fast
    from eventstore.outcomes import FALLBACK
    from modelregistry.report import candidate_names, display
    from ops.demo import run_demo

    if data is not None:
        from ops.demo_obd import print_obd_result, run_obd_demo

        try:
            with wide.status(f"replaying {data} …"):
                replayed = run_obd_demo(data, algorithm=algorithm, seed=seed)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--data") from exc
        print_obd_result(replayed, console)
        if json_path is not None:
            json_path.write_text(json.dumps(replayed, indent=2))
        return

    phases = 9
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("starting", total=phases)

        def step(message: str) -> None:
            # each phase as a line too: the bar is redrawn over (the "replacing the
            # previous demo" notice was lost) and is not drawn at all without a terminal
            bar.console.print(message, markup=False)
            bar.update(task, description=message, advance=1)

        result = run_demo(
            workspace,
            users=users,
            requests_per_day=requests,
            seed=seed,
            algorithm=algorithm,
            progress=step,
        )
        bar.update(task, completed=phases, description="done")
    days = Table(title="per day (CTR and regret against the best candidate of each request)")
    for col in (
        "day",
        "model version",
        "decisions",
        "CTR",
        "regret",
        "regret / decision",
        "fallback share",
    ):
        days.add_column(col, justify="right")
    for d in result["days"]:
        days.add_row(
            str(d["day"]),
            d["model_version"] or FALLBACK,
            str(d["decisions"]),
            f"{d['ctr']:.4f}",
            f"{d['regret']:.1f}",
            f"{d['regret'] / max(1, d['decisions']):.4f}",
            f"{d['fallback_share']:.2f}",
        )
    wide.print(days)
    versions = Table(
        title="per model version: offline estimate (DR, 95% interval) vs CTR realised online"
    )
    for col in (
        "version",
        "aliases",
        "window rows",
        "rows its head learnt",
        "floor",
        "candidates compared",
        "OPE estimate",
        "interval",
        "realised CTR",
    ):
        versions.add_column(col, justify="right")
    for v in result["versions"]:
        est, (lo, hi) = v["ope_estimate"], v["ope_ci"]
        versions.add_row(
            v["version"],
            ", ".join(v["aliases"]),
            display(v["window_rows"]),
            display(v["head_rows"]),
            display(v["floor"]),
            candidate_names(v["candidates"]),
            "-" if est is None else f"{est:.4f}",
            "-" if lo is None else f"[{lo:.4f}, {hi:.4f}]",
            "-" if v["realized_ctr"] is None else f"{v['realized_ctr']:.4f}",
        )
    wide.print(versions)
    print_rollout(result["rollout"])
    root = Path(result["workspace"])
    wide.print(f"plots: {root / 'demo.png'}   summary: {root / 'demo.json'}")
    wide.print("open the UIs on this workspace:")
    wide.print(f"  mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'} --port 5000")
    wide.print(f"  banditops airflow standalone --workspace {root}  (prints the password)")
    if json_path is not None:
        json_path.write_text(
            json.dumps({k: result[k] for k in ("days", "versions", "rollout")}, indent=2)
        )


def print_rollout(rollout: dict[str, Any]) -> None:
    """Day 4 of the demo: each controller step of the worse candidate's rollout."""

    def num(value: float | None, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec)

    table = Table(
        title=f"day 4: staged rollout of version {rollout['candidate_version']} "
        f"(deliberately worse) against production {rollout['production_version']}"
    )
    for col in ("step", "action", "stage", "share", "n prod", "n cand", "mean prod",
                "mean cand", "Δ", "confidence sequence"):  # fmt: skip
        table.add_column(col, justify="right")
    for i, s in enumerate(rollout["steps"], 1):
        table.add_row(
            str(i),
            s["action"],
            "-" if s["stage"] is None else str(s["stage"]),
            num(s["share"], ".0%"),
            str(s["n_production"] or 0),
            str(s["n_candidate"] or 0),
            num(s["mean_production"]),
            num(s["mean_candidate"]),
            num(s["diff"]),
            "-" if s["ci_low"] is None else f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]",
        )
    wide.print(table)
    for i, s in enumerate(rollout["steps"], 1):
        wide.print(f"  {i}. {s['action']}: {s['reason']}")
    users = rollout["users"]
    wide.print(
        f"outcome: {rollout['outcome']}; @production {rollout['production_after']} "
        f"(was {rollout['production_version']}), @staging "
        f"{rollout['staging_after'] or 'removed'}; users who saw the candidate: "
        f"{users['candidate']} of {users['all']} ({rollout['candidate_user_share']:.1%}) "
        f"over {rollout['decisions']} requests ({rollout['seconds']:.0f} s)"
    )


config_app = typer.Typer(help="Configuration: every BANDITOPS_* setting.", no_args_is_help=True)


@config_app.command("reference")
def config_reference(
    write: Annotated[
        Path | None, typer.Option(help="Replace the generated block in this file instead.")
    ] = None,
) -> None:
    """Print the settings reference (Markdown) that the README embeds."""
    if write is None:
        typer.echo(markdown())
        return
    write.write_text(splice(write.read_text(encoding="utf-8")), encoding="utf-8")
    typer.echo(f"updated the settings reference in {write}")


@config_app.command("show")
def config_show(
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace to read (default: BANDITOPS_WORKSPACE).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {variable: {value, source}} as JSON.")
    ] = False,
) -> None:
    """Print every setting in effect here, secrets masked, and where it came from:
    env (a BANDITOPS_* variable), file (the workspace's banditops.toml) or default."""
    rows = config_file.effective(workspace)  # a bad setting: named by the root group
    path = config_file.file_in_effect(workspace)
    if not path.parent.is_dir():  # a mistyped folder would read as "every default"
        typer.echo(
            f"note: the workspace folder {path.parent} does not exist; no file sets anything.",
            err=True,
        )
    if as_json:
        typer.echo(
            json.dumps({r.variable: {"value": r.value, "source": r.origin} for r in rows}, indent=2)
        )
        return
    state = "" if path.is_file() else " (absent)"
    table = Table("variable", "value", "source", title=f"workspace file: {path}{state}")
    for r in rows:
        source = f"file ({r.section})" if r.origin == "file" else r.origin
        table.add_row(r.variable, "-" if r.value is None else str(r.value), source)
    wide.print(table)


@config_app.command("init")
def config_init(
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace to write (default: BANDITOPS_WORKSPACE).")
    ] = None,
    values: Annotated[
        list[str] | None,
        typer.Option("--set", help="NAME=VALUE (VALUE as TOML, or plain text); repeatable."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Write <workspace>/banditops.toml: the given settings, every other one commented out
    with its default."""
    root = workspace_of({} if workspace is None else {"workspace": workspace})
    path = workspace_file(root)
    if path.exists() and not force:
        raise typer.BadParameter(f"{path} exists; pass --force to replace it.")
    settings: dict[str, object] = {}
    for item in values or []:
        name, sep, text = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected NAME=VALUE; got {item!r}.", param_hint="--set")
        try:
            settings[name.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            settings[name.strip()] = text
    try:
        written = config_file.write(root, settings, template=True)
    except ValidationError as exc:
        raise typer.BadParameter("; ".join(setting_problems(exc)), param_hint="--set") from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from exc
    typer.echo(f"wrote {written}")


# ---------------------------------------------------------------- the root app, in one place
app.command()(simulate)
app.command(name="policies")(list_policies)
app.command()(serve)  # serving/commands.py
app.add_typer(db_app, name="db")
app.add_typer(store_app, name="store")
app.add_typer(catalog_app, name="catalog")
for command in (train, evaluate, models, promote, rollback):  # training/commands.py
    app.command()(command)
app.add_typer(rollout_app, name="rollout")  # training/commands.py
app.command()(demo)
app.add_typer(airflow_app, name="airflow")  # ops/airflow_cli.py
app.add_typer(config_app, name="config")


def _one_line(doc: str) -> str:
    """A docstring's first paragraph as one line (reStructuredText's ``x`` as `x`)."""
    first = inspect.cleandoc(doc).split("\n\n")[0]
    return " ".join(first.split()).replace("``", "`")


def _listing_help(typer_app: typer.Typer) -> None:
    """Give every command of ``typer_app`` (and of its groups) the first paragraph of its
    docstring, on one line, as the help its group's listing shows: Typer's rich listing
    keeps a docstring's line breaks, which cut sentences in two."""
    for info in typer_app.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if info.short_help is None and doc:
            info.short_help = _one_line(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _listing_help(group.typer_instance)


_listing_help(app)


@app.callback()
def root(
    workspace: Annotated[
        Path | None,
        typer.Option(
            help="The workspace (its banditops.toml configures every command); sets "
            "BANDITOPS_WORKSPACE for this command and the processes it starts."
        ),
    ] = None,
) -> None:
    """banditops: contextual bandits with exact propensities, from simulation to serving."""
    for variable, value in MLFLOW_CLIENT_ENV.items():  # this command's and its children's
        os.environ.setdefault(variable, value)
    if workspace is not None:
        os.environ[WORKSPACE_ENV] = str(workspace.expanduser().resolve())


def main() -> None:  # pragma: no cover - console-script entry
    app()
