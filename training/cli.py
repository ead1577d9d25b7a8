"""The ``banditops`` command line: the service's commands plus training and the registry.

Settings come from the same ``BANDITOPS_*`` variables as the service
(:class:`serving.settings.Settings`); the MLflow registry defaults to
``sqlite:///<workspace>/mlflow.db``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from serving.cli import app
from serving.settings import Settings
from training.airflow_cli import airflow_app

app.add_typer(airflow_app, name="airflow")
console = Console(width=140)


def tracking_uri(settings: Settings) -> str:
    """The registry of these settings (embedded default: SQLite under the workspace)."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return f"sqlite:///{(Path(settings.workspace) / 'mlflow.db').resolve()}"


def store_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    return f"sqlite:///{(Path(settings.workspace) / 'banditops.db').resolve()}"


def _registry(settings: Settings):  # type: ignore[no-untyped-def]
    from training.registry import ModelRegistry

    return ModelRegistry(tracking_uri(settings), settings.model_name)


@app.command()
def train(
    days: Annotated[float, typer.Option(min=0.001, help="Replay window: the last N days.")] = 1.0,
    algorithm: Annotated[str, typer.Option(help="Policy to train.")] = "neural_linear",
    options: Annotated[
        str, typer.Option(help="Policy options as JSON, e.g. '{\"hidden\": [50]}'.")
    ] = "{}",
    min_rows: Annotated[int, typer.Option(min=1, help="Fewest rows the window must hold.")] = 100,
    tolerance: Annotated[float, typer.Option(min=0.0, max=0.99, help="Gate tolerance.")] = 0.0,
    auto_promote: Annotated[
        bool, typer.Option(help="Move @production when the gate passes.")
    ] = False,
    run_key: Annotated[
        str | None, typer.Option(help="Idempotency key (default: a timestamp).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of training and evaluation.")] = 0,
) -> None:
    """Retrain on the event store: extract → validate → train → rebuild → evaluate →
    register (@candidate) → gate (@staging) → promote (with --auto-promote)."""
    from training.pipeline import RetrainSettings, run_retrain
    from training.train import TrainConfig

    settings = Settings()
    try:
        opts = json.loads(options)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--options must be a JSON object: {exc}") from exc
    key = run_key or datetime.now(UTC).strftime("cli-%Y%m%dT%H%M%S")
    retrain = RetrainSettings(
        store_url=store_url(settings),
        tracking_uri=tracking_uri(settings),
        runs_dir=str(Path(settings.workspace) / "runs"),
        model_name=settings.model_name,
        train=TrainConfig(algorithm=algorithm, options=opts, seed=seed),
        reward_window=timedelta(seconds=settings.reward_window_s),
        min_rows=min_rows,
        tolerance=tolerance,
        auto_promote=auto_promote,
        promoted_by="banditops train",
    )
    end = datetime.now(UTC)
    with console.status(f"retraining {algorithm} on the last {days:g} day(s)…"):
        outcome = run_retrain(retrain, end - timedelta(days=days), end, key)
    console.print(
        f"version [bold]{outcome.version}[/]: gate {'passed' if outcome.gate_passed else 'failed'}"
        f"{', promoted to @production' if outcome.promoted else ''}"
    )
    for reason in outcome.reasons:
        console.print(f"  • {reason}")


@app.command()
def evaluate(
    candidate: Annotated[Path, typer.Argument(help="Candidate policy state (.npz).")],
    replay: Annotated[Path, typer.Argument(help="Replay Parquet file.")],
    production: Annotated[
        Path | None, typer.Option(help="Production policy state (.npz); default: uniform.")
    ] = None,
    resamples: Annotated[int, typer.Option(min=10, help="Bootstrap resamples.")] = 500,
) -> None:
    """Off-policy evaluation of a candidate against production on a replay file."""
    from training.evaluate import evaluate as run_evaluation

    result = run_evaluation(candidate, production, replay, n_resamples=resamples)
    table = Table(title="off-policy estimates (95% bootstrap intervals)")
    for col in ("estimator", "candidate", "interval", "production", "interval", "ESS"):
        table.add_column(col, justify="right")
    for name, est in result.candidate.estimates.items():
        prod = result.production.estimates.get(name)
        table.add_row(
            name,
            f"{est.value:.4f}",
            f"[{est.ci_low:.4f}, {est.ci_high:.4f}]",
            "-" if prod is None else f"{prod.value:.4f}",
            "-" if prod is None else f"[{prod.ci_low:.4f}, {prod.ci_high:.4f}]",
            f"{est.ess:.0f}",
        )
    console.print(table)
    console.print(f"gate: [bold]{'promote' if result.gate.promote else 'reject'}[/]")
    for reason in result.gate.reasons:
        console.print(f"  • {reason}")


@app.command()
def models() -> None:
    """Registered versions with their aliases, gate results and key metrics."""
    registry = _registry(Settings())
    table = Table(title=f"model {registry.model_name} ({registry.tracking_uri})")
    for col in (
        "version",
        "aliases",
        "gate",
        "DR estimate",
        "DR interval",
        "rows",
        "created by run",
    ):
        table.add_column(col)
    for v in registry.versions():
        m = v.metrics
        dr = m.get("ope.candidate.dr.value")
        table.add_row(
            v.version,
            ", ".join(v.aliases),
            v.tags.get("gate_passed", "-"),
            "-" if dr is None else f"{dr:.4f}",
            "-"
            if dr is None
            else f"[{m['ope.candidate.dr.ci_low']:.4f}, {m['ope.candidate.dr.ci_high']:.4f}]",
            v.tags.get("rows", "-"),
            v.tags.get("run_key", "-"),
        )
    console.print(table)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    to: Annotated[str, typer.Option("--to", help="Alias to move.")] = "production",
    reason: Annotated[
        str, typer.Option(help="Why (recorded in the version's tags).")
    ] = "manual promotion",
    by: Annotated[str, typer.Option(help="Who (recorded).")] = "cli",
) -> None:
    """Move an alias (default @production) to VERSION."""
    from training.registry import RegistryError

    try:
        info = _registry(Settings()).promote(version, by=by, reason=reason, alias=to)
    except RegistryError as exc:
        raise typer.BadParameter(str(exc), param_hint="VERSION") from exc
    console.print(f"@{to} → version {info.version}")


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "manual rollback",
    by: Annotated[str, typer.Option(help="Who (recorded).")] = "cli",
) -> None:
    """Point @production back at the version it held before the current one."""
    from training.registry import RegistryError

    try:
        info = _registry(Settings()).rollback(by=by, reason=reason)
    except RegistryError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(code=1) from exc
    console.print(f"@production → version {info.version}")


@app.command()
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
    Airflow retrain → the service loads @production → day 2 → retrain → day 3; summary.

    With --data: replay a real Open Bandit log instead (no service, no Airflow)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from training.demo import run_demo

    if data is not None:
        from training.demo_obd import print_obd_result, run_obd_demo

        try:
            with console.status(f"replaying {data} …"):
                replayed = run_obd_demo(data, algorithm=algorithm, seed=seed)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--data") from exc
        print_obd_result(replayed, console)
        if json_path is not None:
            json_path.write_text(json.dumps(replayed, indent=2))
        return

    phases = 7
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("starting", total=phases)

        def step(message: str) -> None:
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
            d["model_version"] or "fallback",
            str(d["decisions"]),
            f"{d['ctr']:.4f}",
            f"{d['regret']:.1f}",
            f"{d['regret'] / max(1, d['decisions']):.4f}",
            f"{d['fallback_share']:.2f}",
        )
    console.print(days)
    versions = Table(
        title="per model version: offline estimate (DR, 95% interval) vs CTR realised online"
    )
    for col in ("version", "aliases", "OPE estimate", "interval", "realised CTR"):
        versions.add_column(col, justify="right")
    for v in result["versions"]:
        est, (lo, hi) = v["ope_estimate"], v["ope_ci"]
        versions.add_row(
            v["version"],
            ", ".join(v["aliases"]),
            "-" if est is None else f"{est:.4f}",
            "-" if lo is None else f"[{lo:.4f}, {hi:.4f}]",
            "-" if v["realized_ctr"] is None else f"{v['realized_ctr']:.4f}",
        )
    console.print(versions)
    root = Path(result["workspace"])
    console.print(f"plots: {root / 'demo.png'}   summary: {root / 'demo.json'}")
    console.print("open the UIs on this workspace:")
    console.print(f"  mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'} --port 5000")
    console.print(f"  banditops airflow standalone --workspace {root}  (prints the password)")
    if json_path is not None:
        json_path.write_text(
            json.dumps({"days": result["days"], "versions": result["versions"]}, indent=2)
        )


config_app = typer.Typer(help="Configuration: every BANDITOPS_* setting.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("reference")
def config_reference(
    write: Annotated[
        Path | None, typer.Option(help="Replace the generated block in this file instead.")
    ] = None,
) -> None:
    """Print the settings reference (Markdown) that the README embeds."""
    from training.config_reference import markdown, splice

    if write is None:
        typer.echo(markdown())
        return
    write.write_text(splice(write.read_text(encoding="utf-8")), encoding="utf-8")
    typer.echo(f"updated the settings reference in {write}")


@config_app.command("show")
def config_show() -> None:
    """Print the settings in effect here (secrets masked)."""
    from training.settings import PipelineSettings

    values = PipelineSettings().model_dump(mode="json")
    table = Table("variable", "value")
    for name, value in values.items():
        table.add_row(f"BANDITOPS_{name.upper()}", "-" if value is None else str(value))
    console.print(table)


def main() -> None:  # pragma: no cover - console-script entry
    app()
