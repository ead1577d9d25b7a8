"""The result of evaluating one policy on one logged window: serialisable, loggable, plottable."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from validation.ope.bootstrap import LEVEL
from validation.ope.estimate import Estimate

#: Fields of an :class:`Estimate` exported as MLflow metrics.
METRIC_FIELDS = ("value", "ci_low", "ci_high", "ess", "max_weight")


@dataclass(frozen=True)
class OPEReport:
    """Every estimator's result for ``policy`` on one logged batch.

    Attributes
    ----------
    policy : str
        Name (and version, when known) of the evaluated policy.
    n_rounds : int
        Logged rounds in the window.
    data_fingerprint : str
        Digest of the logged batch: two reports compare only when it is equal.
    estimates : dict of str to Estimate
        In the order they were run.
    notes : tuple of str
        Why an estimator was skipped, which approximations were made.
    """

    policy: str
    n_rounds: int
    data_fingerprint: str
    estimates: dict[str, Estimate]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __getitem__(self, estimator: str) -> Estimate:
        try:
            return self.estimates[estimator]
        except KeyError:
            raise KeyError(
                f"no {estimator!r} estimate in this report; it has: {', '.join(self.estimates)}."
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "n_rounds": self.n_rounds,
            "data_fingerprint": self.data_fingerprint,
            "estimates": {k: e.to_dict() for k, e in self.estimates.items()},
            "notes": list(self.notes),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON text (also written to ``path`` when given)."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OPEReport:
        return cls(
            policy=str(data["policy"]),
            n_rounds=int(data["n_rounds"]),
            data_fingerprint=str(data["data_fingerprint"]),
            estimates={k: Estimate.from_dict(v) for k, v in data["estimates"].items()},
            notes=tuple(data.get("notes", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> OPEReport:
        return cls.from_dict(json.loads(text))

    def to_mlflow_metrics(self, prefix: str = "ope") -> dict[str, float]:
        """Flat ``{"<prefix>.<estimator>.<field>": value}`` for ``mlflow.log_metrics``.

        Fields: value, ci_low, ci_high, ess, max_weight, plus each hyperparameter
        (``lambda_``, ``clip``, ``n_matched``); and ``<prefix>.n_rounds``.
        """
        out: dict[str, float] = {f"{prefix}.n_rounds": float(self.n_rounds)}
        for name, est in self.estimates.items():
            for key in METRIC_FIELDS:  # a value that is not finite is no metric
                if math.isfinite(value := float(getattr(est, key))):
                    out[f"{prefix}.{name}.{key}"] = value
            for key, val in est.params.items():
                if math.isfinite(val):
                    out[f"{prefix}.{name}.{key}"] = float(val)
        return out

    def plot(self, path: str | Path, truth: float | None = None) -> Path:
        """Write a PNG of every estimate with its interval; see :func:`plot_report`."""
        return plot_report(self, path, truth)


def plot_report(report: OPEReport, path: str | Path, truth: float | None = None) -> Path:
    """Horizontal interval plot of the estimates (Agg canvas; no global pyplot state).

    Parameters
    ----------
    report : OPEReport
    path : str or Path
        Output PNG.
    truth : float, optional
        A reference value (e.g. an on-policy estimate) drawn as a vertical line.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(report.estimates)
    values = [report.estimates[n].value for n in names]
    lows = [report.estimates[n].value - report.estimates[n].ci_low for n in names]
    highs = [report.estimates[n].ci_high - report.estimates[n].value for n in names]
    fig = Figure(figsize=(6.0, 0.45 * len(names) + 1.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(names)))
    ax.errorbar(values, ys, xerr=[lows, highs], fmt="o", capsize=4, color="tab:blue")
    if truth is not None:
        ax.axvline(truth, color="tab:red", linestyle="--", label="reference")
        ax.legend(loc="best")
    ax.set_yticks(ys)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    first = next(iter(report.estimates.values()), None)
    level = first.level if first is not None else LEVEL
    kind = "normal-approximation" if first is not None and first.n_resamples == 0 else "bootstrap"
    ax.set_xlabel(f"estimated policy value ({100 * level:g}% {kind} interval)")
    ax.set_title(f"{report.policy}: off-policy estimates on {report.n_rounds} rounds")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png", dpi=110)
    return out


def strict_json(value: Any) -> Any:
    """``value`` (dicts, lists, scalars) with every float that is not finite as ``None``:
    what ``json.dumps(..., allow_nan=False)`` accepts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value
