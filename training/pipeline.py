"""The nightly retrain as plain steps with explicit inputs and outputs.

Each step reads and writes files under a run folder ``<runs_dir>/<run_key>/`` and returns
small JSON-able values (paths, versions, numbers), so the Airflow DAG passes only those
through XCom and a retried task overwrites its own outputs. :func:`run_retrain` chains
the steps for the CLI and the demo.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from training.evaluate import evaluate
from training.registry import ModelRegistry, VersionInfo
from training.replay import ReplayManifest, extract_replay, load_replay
from training.train import TrainConfig, TrainResult, rebuild_head, train
from training.validate import validate_features
from validation.gate import GateRule


@dataclass(frozen=True)
class RetrainSettings:
    """Everything one retrain needs besides the window."""

    store_url: str
    tracking_uri: str
    runs_dir: str
    model_name: str = "banditops-policy"
    train: TrainConfig = field(default_factory=TrainConfig)
    reward_window: timedelta = timedelta(hours=1)
    min_rows: int = 100
    tolerance: float = 0.0
    min_ess: float = 50.0
    n_resamples: int = 300
    auto_promote: bool = True
    promoted_by: str = "banditops-retrain"


@dataclass(frozen=True)
class RetrainOutcome:
    run_key: str
    version: str
    gate_passed: bool
    promoted: bool
    reasons: list[str]
    metrics: dict[str, float]
    manifest: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def run_dir(settings: RetrainSettings, run_key: str) -> Path:
    path = Path(settings.runs_dir) / run_key.replace(":", "_").replace("+", "_")
    path.mkdir(parents=True, exist_ok=True)
    return path


def plot_learning_curve(result: TrainResult, path: Path) -> Path | None:
    if not result.curve:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    epochs = [p["epoch"] for p in result.curve]
    ax.plot(epochs, [p["train_loss"] for p in result.curve], marker="o", label="train loss")
    ax.plot(epochs, [p["val_loss"] for p in result.curve], marker="o", label="holdout MSE")
    ax.set_xlabel("epoch")
    ax.set_title(f"{result.algorithm}: learning curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_arm_coverage(replay_path: str | Path, path: Path) -> Path:
    data = load_replay(replay_path)
    arms, counts = [], []
    for arm in sorted(set(data.arm_ids)):
        arms.append(arm)
        counts.append(data.arm_ids.count(arm))
    fig, ax = plt.subplots(figsize=(max(4, 0.25 * len(arms)), 3.2))
    ax.bar(range(len(arms)), counts)
    ax.set_xticks(range(len(arms)), arms, rotation=90, fontsize=6)
    ax.set_ylabel("logged decisions")
    ax.set_title("arm coverage of the replay window")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def production_state(registry: ModelRegistry, dest: Path) -> tuple[Path | None, VersionInfo | None]:
    """Download the current production version's policy state (None before the first)."""
    import mlflow

    from serving.models.contract import POLICY_STATE_PATH

    current = registry.by_alias("production")
    if current is None:
        return None, None
    uri = registry.client.get_model_version_download_uri(registry.model_name, current.version)
    mlflow.set_tracking_uri(registry.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    return local / POLICY_STATE_PATH, current


def run_retrain(
    settings: RetrainSettings,
    start: datetime,
    end: datetime,
    run_key: str,
    *,
    as_of: datetime | None = None,
) -> RetrainOutcome:
    """extract → validate → train → rebuild → evaluate → register → gate → promote."""
    folder = run_dir(settings, run_key)
    manifest: ReplayManifest = extract_replay(
        settings.store_url,
        start,
        end,
        folder / "replay",
        reward_window=settings.reward_window,
        as_of=as_of,
    )
    gx = validate_features(manifest, folder / "gx_docs", min_rows=settings.min_rows)
    trained = train(manifest.path, settings.train, folder / "train")
    state = rebuild_head(
        trained.state_path,
        manifest.path,
        folder / "rebuild" / "policy_state.npz",
        settings.train.holdout_fraction,
    )
    registry = ModelRegistry(settings.tracking_uri, settings.model_name)
    prod_path, prod = production_state(registry, folder / "production")
    result = evaluate(
        state,
        prod_path,
        manifest.path,
        holdout_fraction=settings.train.holdout_fraction,
        rule=GateRule(tolerance=settings.tolerance, min_ess=settings.min_ess),
        n_resamples=settings.n_resamples,
        seed=settings.train.seed,
        out_dir=folder / "evaluation",
    )
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    plot_learning_curve(trained, plots / "learning_curve.png")
    plot_arm_coverage(manifest.path, plots / "arm_coverage.png")
    metrics = {**trained.metrics, **result.metrics(), **gx.to_metrics()}
    version = registry.register_candidate(
        state_path=state,
        run_key=run_key,
        params={
            "algorithm": settings.train.algorithm,
            **{f"option.{k}": v for k, v in settings.train.options.items()},
            "window_start": manifest.start,
            "window_end": manifest.end,
            "seed": settings.train.seed,
            "holdout_fraction": settings.train.holdout_fraction,
        },
        metrics=metrics,
        tags={
            "data_sha256": manifest.sha256,
            "rows": str(manifest.rows),
            "diagnostics": trained.diagnostics,
            "previous_production": prod.version if prod else "",
            **result.gate.to_tags(),
        },
        artifacts={
            "gx_docs": folder / "gx_docs",
            "plots": plots,
            "evaluation": folder / "evaluation",
            "replay_manifest": folder / "replay" / "replay.json",
        },
    )
    passed = registry.record_gate(version.version, result.gate.promote, list(result.gate.reasons))
    promoted = False
    if passed and settings.auto_promote:
        registry.promote(
            version.version, by=settings.promoted_by, reason=f"gate passed in run {run_key}"
        )
        promoted = True
    outcome = RetrainOutcome(
        run_key=run_key,
        version=version.version,
        gate_passed=passed,
        promoted=promoted,
        reasons=list(result.gate.reasons),
        metrics=metrics,
        manifest=json.loads(manifest.to_json()),
    )
    (folder / "outcome.json").write_text(outcome.to_json())
    return outcome


def default_window(days: float = 1.0, now: datetime | None = None) -> tuple[datetime, datetime]:
    end = now or datetime.now(UTC)
    return end - timedelta(days=days), end
