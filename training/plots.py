"""Figures a retrain run leaves behind: learning curve and arm coverage.

Matplotlib runs headless (Agg); every function writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from training.replay import load_replay
from training.train import TrainResult


def plot_learning_curve(result: TrainResult, path: str | Path) -> Path | None:
    """Train loss and holdout MSE per epoch stage; None for policies without a network."""
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
    return Path(path)


def plot_arm_coverage(replay_path: str | Path, path: str | Path) -> Path:
    """Logged decisions per arm over the replay window."""
    data = load_replay(replay_path)
    arms = sorted(set(data.arm_ids))
    counts = [data.arm_ids.count(arm) for arm in arms]
    fig, ax = plt.subplots(figsize=(max(4, 0.25 * len(arms)), 3.2))
    ax.bar(range(len(arms)), counts)
    ax.set_xticks(range(len(arms)), arms, rotation=90, fontsize=6)
    ax.set_ylabel("logged decisions")
    ax.set_title("arm coverage of the replay window")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
