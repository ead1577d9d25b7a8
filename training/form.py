"""The retrain form, declared once: every field's type, bounds, default and description.

The ``bandit_retrain`` DAG's ``Param``\\ s (:func:`FormField.schema`), the options of
``banditops train`` (:mod:`training.commands` generates them from :data:`RETRAIN_FORM`)
and the run spec's checks of the submitted values (:func:`check_form`, called by
:func:`training.runspec.plan`) all read this table, so a field added here appears in all
three. A default either is written here or, for the knobs an operator tunes per
deployment, is the :class:`~training.settings.PipelineSettings` field named by
``setting`` (``BANDITOPS_RETRAIN_MIN_ESS``…), read when the form is built.

Cheap to import (pydantic via the settings only): the DAG file reads it at parse time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from bandit_core.support import UNIFORM_SHARE
from eventstore.settings import Bounds
from training.settings import ALGORITHMS, PipelineSettings

Kind = Literal["number", "integer", "boolean", "string", "date", "object"]


@dataclass(frozen=True)
class FormField:
    """One field of the retrain form.

    Parameters
    ----------
    name : str
        The form key (DAG ``Param`` name; ``--name-with-dashes`` on the CLI).
    kind : {"number", "integer", "boolean", "string", "date", "object"}
        JSON type of the value; ``date`` is a ``YYYY-MM-DD`` string, ``object`` a JSON object.
    description : str
        Shown in the Airflow trigger form and in ``banditops train --help``.
    default : object
        The default when ``setting`` is None (``None``: not set unless given).
    setting : str or None
        The :class:`PipelineSettings` field that holds the default instead; its
        ``Field`` bounds are the form field's (declared there only).
    minimum, exclusive_minimum, maximum, exclusive_maximum : float or None
        Bounds of a number or integer without a ``setting``.
    choices : tuple of str
        The allowed values of a string.
    """

    name: str
    kind: Kind
    description: str
    default: Any = None
    setting: str | None = None
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    exclusive_maximum: float | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.setting is None:
            return
        own = (self.minimum, self.exclusive_minimum, self.maximum, self.exclusive_maximum)
        if any(v is not None for v in own):
            raise ValueError(
                f"form field {self.name!r} takes its bounds from setting {self.setting!r}; "
                "declare them on that Field only."
            )
        bounds = Bounds.of(PipelineSettings.model_fields[self.setting])
        for name, value in (
            ("minimum", bounds.ge),
            ("exclusive_minimum", bounds.gt),
            ("maximum", bounds.le),
            ("exclusive_maximum", bounds.lt),
        ):
            object.__setattr__(self, name, value)

    @property
    def nullable(self) -> bool:
        """Whether the field may be left empty (its default is None)."""
        return self.setting is None and self.default is None

    def default_for(self, settings: PipelineSettings) -> Any:
        """The field's default under ``settings`` (a fresh copy of a mutable one)."""
        value = getattr(settings, self.setting) if self.setting else self.default
        return dict(value) if isinstance(value, Mapping) else value

    def schema(self) -> dict[str, Any]:
        """The JSON-schema keywords of the field (the DAG's ``Param(default, **schema)``)."""
        kind: str = "string" if self.kind == "date" else self.kind
        out: dict[str, Any] = {"type": ["null", kind] if self.nullable else kind}
        if self.kind == "date":
            out["format"] = "date"
        for key, value in (
            ("minimum", self.minimum),
            ("exclusiveMinimum", self.exclusive_minimum),
            ("maximum", self.maximum),
            ("exclusiveMaximum", self.exclusive_maximum),
        ):
            if value is not None:
                out[key] = value
        if self.choices:
            out["enum"] = list(self.choices)
        out["description"] = self.description
        return out

    def expectation(self) -> str:
        """What a valid value is, in words (the error text names it)."""
        if self.kind == "boolean":
            return "true or false"
        if self.kind == "date":
            return "a date YYYY-MM-DD"
        if self.kind == "object":
            return {
                "policy_options": "an object of policy options",
                "segment_floors": 'an object {"feature": <context index>, "floors": {...}} '
                'or {"user_groups": <number of groups>, "floors": {"group_<g>": ...}}',
            }.get(self.name, "an object")
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        noun = "an integer" if self.kind == "integer" else "a finite number"
        bounds = []
        if self.minimum is not None:
            bounds.append(f"≥ {_num(self.minimum)}")
        if self.exclusive_minimum is not None:
            bounds.append(f"> {_num(self.exclusive_minimum)}")
        if self.maximum is not None:
            bounds.append(f"≤ {_num(self.maximum)}")
        if self.exclusive_maximum is not None:
            bounds.append(f"< {_num(self.exclusive_maximum)}")
        return " ".join([noun, " and ".join(bounds)]) if bounds else noun

    def check(self, value: Any) -> Any:
        """``value`` as the field's type, or a ``ValueError`` naming the field, what it
        expects and what it got (``None`` passes for a field that may be empty)."""
        if value is None and self.nullable:
            return None
        checked = self._typed(value)
        if checked is None:
            raise ValueError(f"{self.name} must be {self.expectation()}; got {value!r}.")
        return checked

    def _typed(self, value: Any) -> Any:
        if self.kind == "boolean":
            return value if isinstance(value, bool) else None
        if self.kind == "object":
            return dict(value) if isinstance(value, Mapping) else None
        if self.kind == "date":
            try:
                date.fromisoformat(str(value))
            except ValueError:
                return None
            return str(value)
        if self.kind == "string":
            return value if isinstance(value, str) and (value in self.choices) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not math.isfinite(value):
            return None
        if self.kind == "integer":
            if isinstance(value, float) and not value.is_integer():
                return None
            value = int(value)  # JSON forms send 3.0 for 3
        else:
            value = float(value)
        low, above, high, below = (
            self.minimum,
            self.exclusive_minimum,
            self.maximum,
            self.exclusive_maximum,
        )
        if (
            (low is not None and value < low)
            or (above is not None and value <= above)
            or (high is not None and value > high)
            or (below is not None and value >= below)
        ):
            return None
        return value


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


#: The retrain form (``bandit_retrain``'s trigger form and ``banditops train``'s options).
RETRAIN_FORM: tuple[FormField, ...] = (
    FormField(
        "window_days",
        "number",
        "Replay window: this many days back from the run's data interval end.",
        setting="retrain_window_days",
    ),
    FormField(
        "window_start", "date", "Explicit window start (UTC date, inclusive); needs window_end."
    ),
    FormField(
        "window_end", "date", "Explicit window end (UTC date, exclusive); needs window_start."
    ),
    FormField(
        "min_rows",
        "integer",
        "Fewest replay rows the data validation accepts.",
        setting="retrain_min_rows",
    ),
    FormField(
        "algorithm",
        "string",
        "Policy to train, or auto: the champion–challenger run (linear Thompson sampling, "
        "joined by a neural policy on large windows where the linear-failure diagnostic "
        "recommends it; the best DR lower bound is registered).",
        setting="retrain_algorithm",
        choices=ALGORITHMS,
    ),
    FormField(
        "policy_options",
        "object",
        'Policy options, e.g. {"alpha": 0.5}.',
        setting="retrain_policy_options",
    ),
    FormField(
        "epochs",
        "integer",
        "Training epochs of neural policies.",
        setting="retrain_epochs",
    ),
    FormField(
        "seed",
        "integer",
        "Seed of training and of the bootstrap.",
        setting="retrain_seed",
    ),
    FormField(
        "tolerance",
        "number",
        "Allowed shortfall of the lower bound of the candidate's DR gain over production "
        "(paired), relative to production's estimate.",
        setting="retrain_tolerance",
    ),
    FormField(
        "min_ess",
        "number",
        "Smallest effective sample size the gate accepts.",
        setting="retrain_min_ess",
    ),
    FormField(
        "n_resamples",
        "integer",
        "Bootstrap resamples of the offline evaluation.",
        setting="retrain_n_resamples",
    ),
    FormField(
        "auto_promote",
        "boolean",
        "Move the production alias to the version when its gate passes (only where "
        "the settings allow it: a run cannot skip bandit_promote's approval).",
        setting="retrain_auto_promote",
    ),
    FormField(
        "shards",
        "integer",
        "Shards of the map-reduce head rebuild and offline evaluation (1: single node).",
        setting="retrain_shards",
    ),
    FormField(
        "neural_min_rows",
        "integer",
        "Fewest window rows before a neural challenger joins an auto run.",
        setting="retrain_neural_min_rows",
    ),
    FormField(
        "floor",
        "number",
        "Exploration floor: every candidate's probability under the trained policy is at "
        "least this (0: none).",
        setting="retrain_floor",
    ),
    FormField(
        "deterministic_floor",
        "number",
        "The floor a deterministic policy (UCB) gets when floor is lower.",
        setting="retrain_deterministic_floor",
    ),
    FormField(
        "segment_floors",
        "object",
        'Per-segment floors, e.g. {"feature": 2, "floors": {"1": 0.05}}: the segment is '
        'the value of context feature 2; or {"user_groups": 8, "floors": {"group_3": 0.1}}: '
        "the segment is the hashed user group (of 8), decisions without a user get floor.",
        setting="retrain_segment_floors",
    ),
    FormField(
        "cold_start_floor",
        "number",
        "Extra probability of each candidate the trained model has not seen (0: none).",
        setting="retrain_cold_start_floor",
    ),
    FormField(
        "exposure_cap",
        "number",
        "Most share of recent decisions one arm may take (0: no cap).",
        setting="retrain_exposure_cap",
    ),
    FormField(
        "support_threshold",
        "number",
        "Gate: a logging propensity below this counts as no support (or below "
        f"{UNIFORM_SHARE:g} / K in a round of K candidates, where that is smaller).",
        setting="retrain_support_threshold",
    ),
    FormField(
        "max_unsupported",
        "number",
        "Gate: most probability mass the candidate may put on unsupported actions.",
        setting="retrain_max_unsupported",
    ),
)

FIELDS: dict[str, FormField] = {f.name: f for f in RETRAIN_FORM}


def form_defaults(settings: PipelineSettings) -> dict[str, Any]:
    """Every field's default under ``settings``."""
    return {f.name: f.default_for(settings) for f in RETRAIN_FORM}


def check_form(params: Mapping[str, Any], settings: PipelineSettings) -> dict[str, Any]:
    """The submitted values completed with the defaults and checked field by field.

    A value of ``None`` takes the default. Unknown keys are an error.
    """
    unknown = sorted(set(params) - set(FIELDS))
    if unknown:
        raise ValueError(f"params has unknown fields {unknown}; expected {sorted(FIELDS)}.")
    values = form_defaults(settings)
    values.update({k: v for k, v in params.items() if v is not None})
    return {name: FIELDS[name].check(value) for name, value in values.items()}
