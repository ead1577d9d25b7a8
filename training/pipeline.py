"""The nightly retrain's steps, declared once, and the in-process run of them.

:data:`RETRAIN_STEPS` is the graph and everything the DAG needs to make each task: the
function the step calls, the steps whose outputs it takes (in its call's order), the steps
it only waits for, the list it runs once per item of (the map-reduce shards), and its
Airflow properties (trigger rule, outlet asset, short-circuit, run-if parameter). The
``bandit_retrain`` DAG makes one task per row, and :func:`run_retrain` (``banditops
train``, the tests) walks the same table in one process. Both call every step through
:func:`run_step`, which takes and returns the small JSON values that travel through XCom
and turns them into the typed references of :mod:`training.refs` (and back) by the step
function's annotations, so the CLI exercises the DAG's path and a new step needs no
adapter.

Cheap to import (the DAG file reads the table at parse time): the step functions (torch,
MLflow, pandas) are imported when a step runs.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, get_args, get_origin

from training.refs import EvaluatedRef, RegisteredRef, ReplayRef
from training.runspec import RunSpec
from training.settings import PipelineSettings

__all__ = [
    "RETRAIN_STEPS",
    "Outlet",
    "RetrainOutcome",
    "Step",
    "run_retrain",
    "run_step",
    "step_order",
]

TRIGGER_RULES = ("all_success", "none_failed")


@dataclass(frozen=True)
class Outlet:
    """An asset a step produces; its event's ``extra`` is the step's output and the run key.

    Parameters
    ----------
    name : str
        The asset's name.
    uri : str
        Its URI, with ``{model_name}`` filled from the settings.
    """

    name: str
    uri: str


@dataclass(frozen=True)
class Step:
    """One step of the retrain graph (an Airflow task of ``bandit_retrain``).

    Parameters
    ----------
    name : str
        The task id, and the key of :func:`run_step`.
    call : str
        The function it runs, ``"module:function"`` (imported when the step runs). Its
        parameters annotated with a :class:`training.refs.StepRef` or
        :class:`training.runspec.RunSpec` get that type from the XCom value; a returned
        reference (or list of them) goes back as its XCom value.
    inputs : tuple of str
        The steps whose outputs the step takes, in its call's order.
    after : tuple of str
        Steps it waits for without taking their output.
    mapped : str or None
        The input (one of ``inputs``) it runs once per item of; its output is the list.
    stops_run : bool
        A false result skips every later step (the gate; an Airflow short-circuit task).
    trigger_rule : str
        The Airflow trigger rule, one of :data:`TRIGGER_RULES` (``none_failed``: runs
        when a mapped input expanded to nothing).
    outlet : Outlet or None
        The asset the step produces.
    run_if : str or None
        A retrain form parameter; the step is skipped when it is false.
    skip_message : str
        Why it was skipped then.
    """

    name: str
    call: str
    inputs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    mapped: str | None = None
    stops_run: bool = False
    trigger_rule: str = "all_success"
    outlet: Outlet | None = None
    run_if: str | None = None
    skip_message: str = ""

    def __post_init__(self) -> None:
        if self.mapped is not None and self.mapped not in self.inputs:
            raise ValueError(
                f"mapped must be one of the inputs {list(self.inputs)} of {self.name}; "
                f"got {self.mapped!r}."
            )
        if self.trigger_rule not in TRIGGER_RULES:
            raise ValueError(
                f"trigger_rule must be one of {', '.join(TRIGGER_RULES)}; "
                f"got {self.trigger_rule!r} for {self.name}."
            )
        if ":" not in self.call:
            raise ValueError(f"call must be 'module:function'; got {self.call!r}.")


_STEPS = "training.steps"
_SHARDED = "none_failed"  # runs when the mapped shards expanded to nothing

#: The retrain graph, in an order every step's inputs come before it (the DAG's
#: topological order; a test checks it).
RETRAIN_STEPS: tuple[Step, ...] = (
    Step("plan_run", "training.runspec:plan"),
    Step(
        "extract_replay",
        f"{_STEPS}:extract",
        ("plan_run",),
        outlet=Outlet("banditops_replay", "x-banditops://replay/{model_name}"),
    ),
    Step("validate_features", f"{_STEPS}:validate", ("plan_run", "extract_replay")),
    Step(
        "train_network",
        f"{_STEPS}:train_network",
        ("plan_run", "extract_replay"),
        after=("validate_features",),
    ),
    Step(
        "plan_rebuild_shards",
        f"{_STEPS}:plan_rebuild_shards",
        ("plan_run", "extract_replay", "train_network"),
    ),
    Step(
        "plan_evaluation_shards",
        f"{_STEPS}:plan_evaluation_shards",
        ("plan_run", "extract_replay", "train_network"),
    ),
    Step(
        "shard_statistics",
        f"{_STEPS}:shard_statistics",
        ("plan_rebuild_shards", "train_network"),
        mapped="plan_rebuild_shards",
    ),
    Step(
        "rebuild_head",
        f"{_STEPS}:rebuild",
        ("plan_run", "train_network", "extract_replay", "shard_statistics"),
        trigger_rule=_SHARDED,
    ),
    Step(
        "shard_evaluation",
        f"{_STEPS}:shard_evaluation",
        ("plan_evaluation_shards", "rebuild_head"),
        mapped="plan_evaluation_shards",
    ),
    Step(
        "evaluate_offline",
        f"{_STEPS}:evaluate_offline",
        ("plan_run", "rebuild_head", "extract_replay", "shard_evaluation"),
        trigger_rule=_SHARDED,
    ),
    # the registered version is refit on the whole window once the evaluation scored
    # the procedure on the held-out part (training/steps.py: refit)
    Step(
        "refit_window",
        f"{_STEPS}:refit",
        ("plan_run", "extract_replay", "train_network"),
        after=("evaluate_offline",),
    ),
    Step(
        "register_candidate",
        f"{_STEPS}:register_candidate",
        (
            "plan_run",
            "extract_replay",
            "validate_features",
            "train_network",
            "refit_window",
            "evaluate_offline",
        ),
        outlet=Outlet("banditops_registered_model", "x-mlflow://registered-models/{model_name}"),
    ),
    Step(
        "gate",
        f"{_STEPS}:gate",
        ("plan_run", "register_candidate", "evaluate_offline"),
        stops_run=True,
    ),
    Step(
        "promote",
        f"{_STEPS}:promote",
        ("plan_run", "register_candidate"),
        after=("gate",),
        run_if="auto_promote",
        skip_message="auto_promote is off: the version waits for bandit_promote.",
    ),
)
_BY_NAME = {s.name: s for s in RETRAIN_STEPS}


def step_order() -> list[str]:
    """The step names in :data:`RETRAIN_STEPS` order."""
    return [s.name for s in RETRAIN_STEPS]


# ---------------------------------------------------------------------- the steps on XCom values
def _function(step: Step) -> Callable[..., Any]:
    module, name = step.call.split(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return function


def _typed(annotation: Any, value: Any) -> Any:
    """``value`` as the reference or run spec ``annotation`` names (or the list of them, for
    a ``Sequence`` or ``list`` of one); else as it is."""
    if isinstance(annotation, type) and hasattr(annotation, "from_xcom"):
        return annotation.from_xcom(value)
    if get_origin(annotation) in (list, Sequence):
        (item,) = get_args(annotation)
        if isinstance(item, type) and hasattr(item, "from_xcom"):
            return [item.from_xcom(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """A step's result as its XCom value (references, and lists of them, as dicts)."""
    if hasattr(value, "to_xcom"):
        return value.to_xcom()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def run_step(name: str, *args: Any, **kwargs: Any) -> Any:
    """Run step ``name`` of :data:`RETRAIN_STEPS` on XCom values; its XCom value."""
    if name not in _BY_NAME:
        raise ValueError(f"name must be one of {', '.join(step_order())}; got {name!r}.")
    function = _function(_BY_NAME[name])
    signature = inspect.signature(function, eval_str=True)
    bound = signature.bind(*args, **kwargs)
    upstream = _BY_NAME[name].inputs
    for position, (key, value) in enumerate(bound.arguments.items()):
        try:
            bound.arguments[key] = _typed(signature.parameters[key].annotation, value)
        except (TypeError, ValueError) as exc:  # another release's, or a hand-edited, value
            source = upstream[position] if position < len(upstream) else key
            if value is None:  # no output at all: not another release's
                raise StaleInputError(
                    f"step {name!r} has no output of {source!r} to read: that task left "
                    "none, most likely because it was marked success (or skipped) by hand "
                    "in Airflow's UI without running. Clear it so that it runs, or trigger "
                    "a new run."
                ) from exc
            raise StaleInputError(
                f"step {name!r} cannot read the output of {source!r}: {exc} An earlier step "
                "of this DAG run wrote it, most likely under another banditops release (a "
                "run started before an upgrade). Clear the whole run, from plan_run, so "
                "this release plans it again, or trigger a new run."
            ) from exc
    return _plain(function(*bound.args, **bound.kwargs))


class StaleInputError(ValueError):
    """A step's XCom input is not what this release's steps write (:func:`run_step`)."""


# ---------------------------------------------------------------------- one process
@dataclass(frozen=True)
class RetrainOutcome:
    """What a retrain left: the version, the gate's decision and the run's numbers."""

    run_key: str
    version: str
    gate_passed: bool
    promoted: bool
    reasons: list[str]
    metrics: dict[str, float]
    manifest: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def run_retrain(
    params: Mapping[str, Any],
    *,
    run_key: str,
    interval_end: datetime,
    settings: PipelineSettings | None = None,
) -> RetrainOutcome:
    """The retrain of :data:`RETRAIN_STEPS` in this process, from the retrain form's values
    (:func:`training.runspec.plan`, as the DAG's ``plan_run``); mapped steps run their items
    one after the other, and a failed gate skips the rest, as in Airflow."""
    out: dict[str, Any] = {}
    for step in RETRAIN_STEPS:
        if step.name == "plan_run":
            out[step.name] = run_step(
                step.name, params, run_key=run_key, interval_end=interval_end, settings=settings
            )
            continue
        args = [out[name] for name in step.inputs]
        if step.mapped is None:
            out[step.name] = run_step(step.name, *args)
        else:
            at = step.inputs.index(step.mapped)
            out[step.name] = [
                run_step(step.name, *args[:at], item, *args[at + 1 :]) for item in args[at]
            ]
        if step.stops_run and not out[step.name]:
            break
    registered = RegisteredRef.from_xcom(out["register_candidate"])
    evaluated = EvaluatedRef.from_xcom(out["evaluate_offline"])
    promoted = out.get("promote", {}).get("promoted", False)
    outcome = RetrainOutcome(
        run_key=run_key,
        version=registered.version,
        gate_passed=bool(out["gate"]),
        promoted=bool(promoted),
        reasons=list(evaluated.reasons),
        metrics=json.loads(Path(registered.metrics).read_text()),
        manifest=json.loads(Path(ReplayRef.from_xcom(out["extract_replay"]).manifest).read_text()),
    )
    (RunSpec.from_xcom(out["plan_run"]).folder / "outcome.json").write_text(outcome.to_json())
    return outcome
