"""The training commands of ``banditops``: retrain, evaluate, list, promote and roll back
registered versions (registered on the root app by :mod:`ops.cli`).

Settings come from the ``BANDITOPS_*`` variables (:class:`training.settings.PipelineSettings`);
the MLflow registry defaults to ``sqlite:///<workspace>/mlflow.db``. ``banditops train``'s
options are the retrain form (:data:`training.form.RETRAIN_FORM`), as in the DAG.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import secrets
import typing
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from eventstore.console import error, warning
from eventstore.contract import gate_verdict
from eventstore.settings import CoreSettings as Settings
from eventstore.settings import check_readable, env_name
from training.form import RETRAIN_FORM, FormField
from training.settings import N_RESAMPLES_MAX, N_RESAMPLES_MIN, PipelineSettings

# The commands import the pipeline (torch, MLflow, Great Expectations, matplotlib) and the
# registry when they run, not here: the root CLI imports this module for every command,
# including `banditops serve` in the service image, which has none of the [train] group.

console = Console(width=140)

#: Python type of each form kind on the command line (an object is given as JSON).
_CLI_TYPES: dict[str, type] = {
    "number": float,
    "integer": int,
    "boolean": bool,
    "string": str,
    "date": str,
    "object": str,
}


def _registry(settings: Settings):  # type: ignore[no-untyped-def]
    from modelregistry.registry import ModelRegistry, client_defaults

    client_defaults()  # a command waits seconds, not minutes, for a registry that is down
    return ModelRegistry.from_settings(settings)


def train_option(field: FormField) -> inspect.Parameter:
    """The ``banditops train`` option of a retrain form field (default None: the form's
    default, which :func:`training.runspec.plan` fills in and checks)."""
    flag = f"--{field.name.replace('_', '-')}"
    decls = [f"{flag}/--no-{field.name.replace('_', '-')}"] if field.kind == "boolean" else [flag]
    if field.setting:
        default = f"{env_name(field.setting or '')}, else {_setting_default(field)}"
    else:
        default = "none" if field.default is None else json.dumps(field.default)
    kind = "JSON object: " if field.kind == "object" else ""
    help_text = f"{kind}{field.description} Must be {field.expectation()} (default: {default})."
    value_type: Any = _CLI_TYPES[field.kind] | None
    annotation: Any = Annotated[  # built at run time: one option per form field
        value_type,
        typer.Option(*decls, help=help_text, show_default=False),
    ]
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def _setting_default(field: FormField) -> Any:
    """The setting's default, as the help shows it (a factory's value for ``{}``)."""
    info = PipelineSettings.model_fields[field.setting or ""]
    value = info.get_default(call_default_factory=True)
    return json.dumps(value) if isinstance(value, dict) else value


def _with_form_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` one option per field of :data:`RETRAIN_FORM` (before its own)."""
    hints = typing.get_type_hints(command, include_extras=True)
    own = [
        p.replace(annotation=hints[p.name])
        for p in inspect.signature(command).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD  # ``**form``: the generated options
    ]
    params = [train_option(f) for f in RETRAIN_FORM] + own
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


@_with_form_options
def train(
    *,
    run_key: Annotated[
        str | None, typer.Option(help="Idempotency key (default: a timestamp).")
    ] = None,
    plan_only: Annotated[
        bool, typer.Option(help="Write the run spec, print it and run nothing.")
    ] = False,
    **form: Any,
) -> None:
    """Retrain on the event store, as the bandit_retrain DAG does (same form, same run
    spec, same steps): extract → validate → train → rebuild → evaluate → register → gate
    (staging alias) → promote (production alias, with --auto-promote)."""
    from eventstore.migrate import StoreSchemaError
    from training.pipeline import run_retrain, run_step

    values = dict(form)
    if isinstance(values.get("policy_options"), str):
        try:
            values["policy_options"] = json.loads(values["policy_options"])
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(
                f"policy_options must be a JSON object: {exc}", param_hint="--policy-options"
            ) from exc
    settings = PipelineSettings()
    now = datetime.now(UTC)
    # a run key names the run's folder: to the second, two runs started together shared
    # it, the second's spec overwriting the first's (audit, stop 54)
    key = run_key or f"{now.strftime('cli-%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    with _reported(StoreSchemaError, ValueError):
        if plan_only:
            spec = run_step("plan_run", values, run_key=key, interval_end=now, settings=settings)
            typer.echo(json.dumps(spec, indent=2))
            return
        with console.status("retraining…"):
            outcome = run_retrain(values, run_key=key, interval_end=now, settings=settings)
    console.print(
        f"version [bold]{outcome.version}[/]: gate {'passed' if outcome.gate_passed else 'failed'}"
        f"{f', promoted to @{settings.production_alias}' if outcome.promoted else ''}"
    )
    for reason in outcome.reasons:
        console.print(f"  • {reason}")


def evaluate(
    candidate: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="Candidate policy state (.npz).")
    ],
    replay: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="Replay Parquet file.")
    ],
    production: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="Production policy state (.npz); default: uniform."
        ),
    ] = None,
    resamples: Annotated[
        int | None,
        typer.Option(
            min=N_RESAMPLES_MIN,
            max=N_RESAMPLES_MAX,  # the setting's range: 10⁸ ran on past 1 GB
            help="Bootstrap resamples (default: BANDITOPS_RETRAIN_N_RESAMPLES).",
        ),
    ] = None,
) -> None:
    """Off-policy evaluation of a candidate against production on a replay file, gated by
    the retrain's rule (``BANDITOPS_RETRAIN_TOLERANCE``, ``…_MIN_ESS``,
    ``…_SUPPORT_THRESHOLD``, ``…_MAX_UNSUPPORTED``). The file is held to the extraction's
    rules (``BANDITOPS_REWARD_MIN``/``…_MAX``, ``…_DUPLICATE_RULE``): broken rows up to
    the quarantine's share are set aside, named; more refuse the file."""
    from eventstore.admission import Admission
    from training.evaluate import evaluate as run_evaluation
    from training.quarantine import MAX_SHARE, Rewards
    from training.replay import vetted_replay
    from validation.ope.bootstrap import LEVEL

    settings = PipelineSettings()
    n_resamples = settings.retrain_n_resamples if resamples is None else resamples
    rewards = Rewards(
        settings.reward_min, settings.reward_max, summed=settings.duplicate_rule == "sum"
    )
    admission = Admission.from_settings(settings)  # production is loaded as the retrain does
    with _reported(ValueError, OSError):  # a replay or a state that is not what it must be
        if production is not None:  # named: one that does not load is not the uniform
            try:
                admission.policy(production)
            except ValueError as exc:  # (AdmissionError) naming the file
                raise ValueError(f"{production} is not a banditops policy state: {exc}") from exc
        data, set_aside = vetted_replay(replay, rewards)
        if len(set_aside):
            first = set_aside.iloc[0]
            console.print(
                f"{len(set_aside)} of the replay's {data.n_rows + len(set_aside)} decisions set "
                f"aside (at most {MAX_SHARE:g} of them may be); the first, event "
                f"{str(first['event_id'])[:64]!r}: {first['reason']}"
            )
        result = run_evaluation(
            candidate,
            production,
            data,
            rule=settings.gate_rule(),
            n_resamples=n_resamples,
            admission=admission,
        )
    table = Table(title=f"off-policy estimates ({LEVEL:.0%} bootstrap intervals)")
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


def models(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per version (a list), for scripts.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            help="List the newest LIMIT versions and every older one that holds an alias "
            "(default: as many as the Bandits page lists).",
            show_default=False,
        ),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="List every version (reads every version's run).")
    ] = False,
) -> None:
    """Registered versions: aliases, algorithm, the rows of the window and of the head,
    floor, DR estimate and interval, gate verdict and the candidates compared.

    The newest versions and every older one that holds an alias, as the Bandits page
    shows them; how many older versions were left out is said after the table (with
    --json, on stderr: stdout stays the list)."""
    from modelregistry.registry import LISTED_VERSIONS, RegistryError
    from modelregistry.report import candidate_names, display, version_summaries
    from validation.ope.bootstrap import LEVEL

    if every and limit is not None:
        raise typer.BadParameter("--all lists every version; give --limit or --all, not both.")
    settings = Settings()
    check_readable(settings, registry=True)  # a mistyped path is an error, not `[]`
    registry = _registry(settings)
    with _reported(RegistryError):
        listing = registry.listing(None if every else (limit or LISTED_VERSIONS))
    summaries = version_summaries(listing)
    if as_json:
        typer.echo(json.dumps(summaries, indent=2))
        if listing.note:
            typer.echo(listing.note, err=True)
        return
    table = Table(title=f"model {registry.model_name} ({registry.tracking_uri})")
    for col in (
        "version",
        "aliases",
        "algorithm",
        "window rows",
        "head rows",
        "floor",
        f"DR [{LEVEL:.0%} interval]",
        "gate",
        "candidates",
        "created by run",
    ):
        table.add_column(col, overflow="fold", min_width=16 if col == "candidates" else None)
    for v in reversed(summaries):  # newest first
        dr = v["dr"] or {}
        gate = v["gate_passed"]
        table.add_row(
            v["version"],
            ", ".join(v["aliases"]),
            display(v["algorithm"]),
            display(v["window_rows"]),
            display(v["head_rows"]),
            display(v["floor"]),
            "-"
            if not dr
            else f"{display(dr['value'])} [{display(dr['ci_low'])}, {display(dr['ci_high'])}]",
            "-" if gate is None else ("passed" if gate else "rejected"),
            candidate_names(v["candidates"]),
            display(v["run_key"]),
        )
    console.print(table)
    if listing.note:
        console.print(listing.note, markup=False, soft_wrap=True)


@contextlib.contextmanager
def _reported(*errors: type[Exception]) -> Iterator[None]:
    """An error of these types (what the operator asked cannot be done: a version that
    does not exist, nothing to stop, a store not migrated) ends the command with one
    ``error:`` line and exit code 2, as every command's operator errors do (README:
    Configuration), not a traceback."""
    try:
        yield
    except errors as exc:
        error(_said(exc))
        raise typer.Exit(code=2) from exc


def _said(exc: Exception) -> str:
    """The error's text; an ``OSError`` that holds only a path (pyarrow's file errors)
    also says what went wrong with it."""
    if isinstance(exc, OSError) and exc.strerror is None and len(exc.args) == 1:
        return f"{exc.args[0]}: {type(exc).__name__}"
    return str(exc)


def promote(
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    to: Annotated[
        str | None, typer.Option("--to", help="Alias to move (default: the production alias).")
    ] = None,
    reason: Annotated[
        str, typer.Option(help="Why (recorded in the version's tags).")
    ] = "manual promotion",
    by: Annotated[str, typer.Option(help="Who (recorded).")] = "cli",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Promote a version whose gate failed or whose online rollout ended against it.",
        ),
    ] = False,
) -> None:
    """Move an alias (default: the production alias) to VERSION (one whose gate failed,
    or whose rollout was rolled back, stopped or expired: --force)."""
    from modelregistry.registry import RegistryError

    settings = Settings()
    aliases = (settings.production_alias, settings.candidate_alias, settings.registered_alias)
    if to is not None and to not in aliases:
        # "" moved production; an unknown name created an alias nothing reads
        raise typer.BadParameter(
            f"must be one of the configured aliases {', '.join(aliases)}; got {to!r}.",
            param_hint="--to",
        )
    alias = to or settings.production_alias
    with _reported(ValueError, RegistryError):
        info = _registry(settings).promote(version, by=by, reason=reason, alias=alias, force=force)
    if gate_verdict(info.tags) is False:
        warning(f"version {info.version} failed its gate; forced.")
    console.print(f"@{alias} → version {info.version}")


def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "manual rollback",
    by: Annotated[str, typer.Option(help="Who (recorded).")] = "cli",
) -> None:
    """Point the production alias back at the version it held before the current one."""
    from modelregistry.registry import RegistryError

    settings = Settings()
    with _reported(ValueError, RegistryError):
        info = _registry(settings).rollback(by=by, reason=reason)
    console.print(f"@{settings.production_alias} → version {info.version}")


# ---------------------------------------------------------------------- staged rollouts
rollout_app = typer.Typer(
    help="The staged rollout of a @staging version (training/rollout.py, bandit_rollout).",
    no_args_is_help=True,
)


def _print_step(result: Any) -> None:
    console.print(f"{result.action}: {result.reason}")


@rollout_app.command("status")
def rollout_status(
    limit: Annotated[int, typer.Option(min=1, help="Steps shown, newest first.")] = 20,
) -> None:
    """The running (or latest) rollout: stage, share, and its latest steps."""
    from eventstore.migrate import StoreSchemaError
    from training import rollout

    settings = PipelineSettings()
    check_readable(settings, store=True)  # opening a missing store file creates it
    with _reported(StoreSchemaError):
        state = rollout.status(settings, limit=limit)
    current = state["rollout"]
    if current is None:
        console.print("no rollout yet.")
        return
    console.print(
        f"rollout {current.id} of {current.label}: {current.status}, stage "
        f"{current.stage_index + 1} at {current.share:.0%} of users since "
        f"{current.stage_started_at:%Y-%m-%d %H:%M:%S} (started "
        f"{current.started_at:%Y-%m-%d %H:%M:%S}"
        + ("" if current.ends_by is None else f", ends by {current.ends_by:%Y-%m-%d %H:%M:%S}")
        + ")"
    )
    table = Table("at", "action", "stage", "share", "n prod", "n cand", "Δ", "interval", "reason")
    for s in state["steps"]:
        interval = "" if s.ci_low is None else f"[{s.ci_low:.4f}, {s.ci_high:.4f}]"
        table.add_row(
            f"{s.at:%m-%d %H:%M:%S}",
            s.action,
            str(s.stage_index + 1),
            f"{s.share:.0%}",
            str(s.n_production),
            str(s.n_candidate),
            "" if s.diff is None else f"{s.diff:+.4f}",
            interval,
            s.reason,
        )
    console.print(table)


@rollout_app.command("stop")
def rollout_stop(
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "stopped by hand",
    by: Annotated[str, typer.Option(help="Who (recorded).")] = "cli",
) -> None:
    """Stop the running rollout: its candidate gets no more traffic (recorded ``stop``)."""
    from eventstore.migrate import StoreSchemaError
    from eventstore.rollouts import RolloutStateError
    from training import rollout

    # RolloutStateError: the rollout ended while this stop waited for it (a traceback)
    with _reported(LookupError, RolloutStateError, StoreSchemaError, ValueError):
        result = rollout.stop(PipelineSettings(), by=by, reason=reason)
    _print_step(result)


@rollout_app.command("start")
def rollout_start(
    version: Annotated[str, typer.Argument(help="Registered version to roll out.")],
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "started by hand",
) -> None:
    """Start a staged rollout of VERSION at the first stage."""
    from eventstore.migrate import StoreSchemaError
    from eventstore.rollouts import RolloutStateError
    from modelregistry.registry import RegistryError
    from training import rollout

    with _reported(RolloutStateError, RegistryError, StoreSchemaError, ValueError):
        result = rollout.start(version, PipelineSettings(), reason=reason)
    _print_step(result)


@rollout_app.command("step")
def rollout_step_command() -> None:
    """Run one controller step now (what each bandit_rollout run does)."""
    from eventstore.migrate import StoreSchemaError
    from eventstore.rollouts import RolloutStateError
    from training import rollout

    with _reported(RolloutStateError, StoreSchemaError):
        result = rollout.rollout_step(PipelineSettings())
    _print_step(result)
