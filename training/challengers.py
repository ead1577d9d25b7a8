"""Champion–challenger, starting simple: train a set of candidate algorithms on the
same window, evaluate each against production on the same held-out part, keep the one
with the best DR lower bound.

The set (``algorithm="auto"``, the nightly default; :func:`training.runspec.plan`):

* a linear Thompson policy (:data:`training.runspec.LINEAR_CHALLENGER`), always;
* a neural one (:data:`training.runspec.NEURAL_CHALLENGER`) only when the window has at
  least ``neural_min_rows`` rows *and* the linear-failure diagnostic of the linear
  candidate's training rows (:func:`bandit_core.diagnostics.diagnose_linear_failure`)
  recommends it — "start with LinTS; go neural with 10K+ samples and evidence".

Every candidate is trained (:func:`training.train.train`), its head rebuilt
(:func:`training.train.rebuild_head`) and evaluated with production
(:func:`training.evaluate.evaluate`, the run's gate rule and bootstrap seed); the table of
all of them (``challengers.json``, the version's ``challengers`` tag, the run's
``challenger.<algorithm>.dr.*`` metrics) says which one won and why the others did not
run or lost. The winner's training outputs become the run's ``train/`` outputs, which the
following steps (rebuild, evaluation, registration) take as they take a single
algorithm's.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from eventstore.admission import Admission
from training.evaluate import evaluate
from training.runspec import RunSpec, overlap_options
from training.train import RESULT_FILE, STATE_FILE, TrainConfig, TrainResult, rebuild_head, train
from validation.gate import GateRule

log = logging.getLogger(__name__)

CHALLENGERS_FILE = "challengers.json"


@dataclass(frozen=True)
class Challenger:
    """One candidate of the comparison: its DR estimate and interval on the held-out
    window (None when it did not run), whether it was chosen, and why."""

    algorithm: str
    dr: float | None
    ci_low: float | None
    ci_high: float | None
    chosen: bool
    note: str

    def tag(self) -> dict[str, Any]:
        """The entry of the ``challengers`` version tag (strict JSON: a figure that is
        not finite is ``null``; ``Infinity`` made the tag unreadable to ``banditops
        models``)."""
        return {
            "algorithm": self.algorithm,
            "dr": _finite(self.dr),
            "ci_low": _finite(self.ci_low),
            "ci_high": _finite(self.ci_high),
            "chosen": self.chosen,
        }


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def challengers_tag(table: Sequence[Challenger]) -> str:
    """The ``challengers`` version tag: a JSON list of ``{algorithm, dr, ci_low, ci_high,
    chosen}``."""
    return json.dumps([c.tag() for c in table], allow_nan=False)


def challenger_metrics(table: Sequence[Challenger]) -> dict[str, float]:
    """``challenger.<algorithm>.dr.{value,ci_low,ci_high}`` and ``.chosen`` of the
    candidates that ran (MLflow metrics)."""
    out: dict[str, float] = {}
    for c in table:
        if c.dr is None or c.ci_low is None or c.ci_high is None:
            continue
        key = f"challenger.{c.algorithm}"
        figures = {
            f"{key}.dr.value": c.dr,
            f"{key}.dr.ci_low": c.ci_low,
            f"{key}.dr.ci_high": c.ci_high,
            f"{key}.chosen": float(c.chosen),
        }
        out.update({k: v for k, v in figures.items() if math.isfinite(v)})
    return out


def compare(
    replay_path: str | Path,
    linear: TrainConfig,
    neural: TrainConfig | None,
    *,
    window_rows: int,
    neural_min_rows: int,
    production_state: str | Path | None,
    rule: GateRule,
    n_resamples: int,
    out_dir: str | Path,
    production_digest: str | None = None,
    admission: Admission | None = None,
) -> tuple[TrainResult, list[Challenger]]:
    """Train and evaluate the candidates; the winner's outputs in ``<out_dir>/train``.

    Parameters
    ----------
    replay_path : path
        The run's replay window.
    linear : TrainConfig
        The linear candidate (always trained).
    neural : TrainConfig or None
        The neural candidate; it runs when ``window_rows ≥ neural_min_rows`` and the
        linear candidate's linear-failure diagnostic recommends a neural model.
    production_state : path or None
        Production's state (None: the uniform fallback), evaluated with each candidate.
    rule, n_resamples
        The run's gate rule (its estimator decides) and bootstrap resamples; the
        bootstrap seed is each candidate's ``seed``.
    out_dir : path
        The run folder: ``challengers/<algorithm>/`` per candidate, the winner copied to
        ``train/``, the table to ``train/challengers.json``.
    production_digest, admission
        What production's state is loaded against (:func:`~training.evaluate.production_policy`).

    Returns
    -------
    (TrainResult, list of Challenger)
        The winner's training result (with the table in ``challengers``) and the table.
    """
    out = Path(out_dir)
    runs: dict[str, tuple[TrainResult, Any]] = {}
    notes: dict[str, str] = {}
    baseline = _Baseline(production_state, production_digest, admission)
    result = _train_and_evaluate(replay_path, linear, baseline, rule, n_resamples, out)
    runs[linear.algorithm] = result
    if neural is not None:
        recommended = bool(result[0].metrics.get("neural_is_better", 0.0))
        if window_rows < neural_min_rows:
            notes[neural.algorithm] = (
                f"not trained: the window has {window_rows} rows, fewer than "
                f"neural_min_rows {neural_min_rows}"
            )
        elif not recommended:
            notes[neural.algorithm] = (
                "not trained: the linear-failure diagnostic says a linear model suffices "
                f"({result[0].diagnostics})"
            )
        else:
            runs[neural.algorithm] = _train_and_evaluate(
                replay_path, neural, baseline, rule, n_resamples, out
            )
    winner = max(runs, key=lambda a: _lower(runs[a][1], rule))
    table: list[Challenger] = []
    for algorithm, (_, report) in runs.items():
        est = report[rule.estimator]
        lost = f"lower bound {est.ci_low:.6g} below the winner's"
        table.append(
            Challenger(
                algorithm,
                float(est.value),
                float(est.ci_low),
                float(est.ci_high),
                algorithm == winner,
                f"best {rule.estimator} lower bound" if algorithm == winner else lost,
            )
        )
    table += [Challenger(a, None, None, None, False, note) for a, note in notes.items()]
    chosen = replace(runs[winner][0], challengers=[asdict(c) for c in table])
    dest = out / "train"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(chosen.state_path, dest / STATE_FILE)
    chosen = replace(chosen, state_path=str(dest / STATE_FILE))
    (dest / RESULT_FILE).write_text(chosen.to_json())
    (dest / CHALLENGERS_FILE).write_text(json.dumps([asdict(c) for c in table], indent=2))
    for c in table:
        log.info(
            "challenger %s: %s%s",
            c.algorithm,
            "chosen — " if c.chosen else "",
            c.note
            if c.dr is None
            else f"{rule.estimator} {c.dr:.6g} [{c.ci_low:.6g}, {c.ci_high:.6g}]; {c.note}",
        )
    return chosen, table


def compared(result: TrainResult) -> int:
    """How many candidates the run compared on its held-out rows before choosing
    ``result`` (1 for a run of one algorithm): the gate shares its level among them
    (:attr:`validation.gate.GateRule.comparisons`)."""
    return max(1, sum(1 for c in result.challengers if c.get("dr") is not None))


def _lower(report: Any, rule: GateRule) -> float:
    low = float(report[rule.estimator].ci_low)
    return low if math.isfinite(low) else -math.inf


@dataclass(frozen=True)
class _Baseline:
    """Production as :func:`~training.evaluate.evaluate` loads it, for each candidate."""

    state: str | Path | None
    digest: str | None
    admission: Admission | None


def _train_and_evaluate(
    replay_path: str | Path,
    config: TrainConfig,
    baseline: _Baseline,
    rule: GateRule,
    n_resamples: int,
    out: Path,
) -> tuple[TrainResult, Any]:
    folder = out / "challengers" / config.algorithm
    result = train(replay_path, config, folder)
    rebuilt = rebuild_head(
        result.state_path, replay_path, folder / "rebuilt" / STATE_FILE, config.holdout_fraction
    )
    evaluation = evaluate(
        rebuilt,
        baseline.state,
        replay_path,
        holdout_fraction=config.holdout_fraction,
        rule=rule,
        n_resamples=n_resamples,
        seed=config.seed,
        production_digest=baseline.digest,
        admission=baseline.admission,
    )
    return result, evaluation.candidate


def candidate_configs(s: RunSpec) -> tuple[TrainConfig, TrainConfig | None]:
    """The linear and neural candidates of an ``auto`` run's spec (the neural one with
    its own options, the epochs and the run's overlap options)."""
    linear = s.train_config()
    plan: Mapping[str, Any] = s.challengers
    neural_name = plan.get("neural")
    if not neural_name:
        return linear, None
    own = dict((plan.get("options") or {}).get(neural_name) or {})
    own.setdefault("epochs", plan["epochs"])
    neural = TrainConfig(
        algorithm=neural_name,
        options=overlap_options(neural_name, own, s.overlap),
        seed=linear.seed,
        holdout_fraction=linear.holdout_fraction,
        min_rows=linear.min_rows,
    )
    return linear, neural
