"""The training commands of ``banditops``: retrain, evaluate, list, promote and roll back
registered versions (registered on the root app by :mod:`ops.cli`).

Settings come from the core ``BANDITOPS_*`` variables (:class:`eventstore.settings.CoreSettings`);
the MLflow registry defaults to ``sqlite:///<workspace>/mlflow.db``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from eventstore.settings import CoreSettings as Settings

# The commands import the pipeline (torch, MLflow, Great Expectations, matplotlib) and the
# registry when they run, not here: the root CLI imports this module for every command,
# including `banditops serve` in the service image, which has none of the [train] group.

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
    from modelregistry.registry import ModelRegistry

    return ModelRegistry(tracking_uri(settings), settings.model_name)


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


def promote(
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    to: Annotated[str, typer.Option("--to", help="Alias to move.")] = "production",
    reason: Annotated[
        str, typer.Option(help="Why (recorded in the version's tags).")
    ] = "manual promotion",
    by: Annotated[str, typer.Option(help="Who (recorded).")] = "cli",
    force: Annotated[
        bool, typer.Option("--force", help="Promote a version whose gate failed.")
    ] = False,
) -> None:
    """Move an alias (default @production) to VERSION (one whose gate failed: --force)."""
    from modelregistry.registry import RegistryError

    try:
        info = _registry(Settings()).promote(version, by=by, reason=reason, alias=to, force=force)
    except RegistryError as exc:
        raise typer.BadParameter(str(exc), param_hint="VERSION") from exc
    if info.tags.get("gate_passed") == "false":
        console.print(f"[yellow]warning:[/] version {info.version} failed its gate; forced.")
    console.print(f"@{to} → version {info.version}")


def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "manual rollback",
    by: Annotated[str, typer.Option(help="Who (recorded).")] = "cli",
) -> None:
    """Point @production back at the version it held before the current one."""
    from modelregistry.registry import RegistryError

    try:
        info = _registry(Settings()).rollback(by=by, reason=reason)
    except RegistryError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(code=1) from exc
    console.print(f"@production → version {info.version}")
