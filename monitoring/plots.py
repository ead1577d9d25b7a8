"""The monitor report's figure (matplotlib, headless): one PNG with its four panels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_monitor_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Four panels: reward statistics of both weeks, feature drift against its threshold,
    choices against uniform share per arm, and the rate-type checks against their limits."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    _reward_panel(axes[0][0], report["reward"])
    _drift_panel(axes[0][1], report["feature_drift"])
    _coverage_panel(axes[1][0], report["arm_coverage"])
    _rates_panel(axes[1][1], report)
    fig.suptitle(f"banditops monitor, week ending {report['window']['end']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def _reward_panel(ax: Any, reward: Mapping[str, Any]) -> None:
    names = ("mean", "p5", "p95")
    for offset, week in ((-0.2, "previous"), (0.2, "current")):
        stats = reward.get(week) or {}
        values = [stats.get(n, 0.0) or 0.0 for n in names]
        ax.bar([i + offset for i in range(3)], values, width=0.4, label=f"{week} week")
    ax.set_xticks(range(3), names)
    ax.set_title("reward")
    ax.legend(fontsize=7)


def _drift_panel(ax: Any, drift: Mapping[str, Any]) -> None:
    scores: Mapping[str, float] = drift.get("scores") or {}
    names = list(scores)
    ax.bar(range(len(names)), [scores[n] for n in names])
    ax.axhline(drift["threshold"], color="red", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_title(f"feature drift ({drift['metric']}) vs training reference")


def _coverage_panel(ax: Any, coverage: Mapping[str, Any]) -> None:
    arms: Sequence[Mapping[str, Any]] = coverage.get("arms") or []
    ax.bar([i - 0.2 for i in range(len(arms))], [a["chosen"] for a in arms], 0.4, label="chosen")
    ax.bar(
        [i + 0.2 for i in range(len(arms))],
        [a["uniform_share"] for a in arms],
        0.4,
        label="uniform share",
    )
    ax.set_xticks(range(len(arms)), [a["arm"] for a in arms], rotation=90, fontsize=6)
    ax.set_title("arm coverage (current week)")
    ax.legend(fontsize=7)


def _rates_panel(ax: Any, report: Mapping[str, Any]) -> None:
    rows = [
        ("entropy / max", report["selection_entropy"]["ratio"], report["selection_entropy"]),
        ("propensity < floor", report["propensity"]["violation_share"], report["propensity"]),
        ("fallback share", report["fallback"]["rate"], report["fallback"]),
        ("explored share", report["explored"]["share"], report["explored"]),
    ]
    causes = report["fallback_causes"]
    if "limit" in causes:  # read from the service's /metrics
        rows.append(("model error share", causes.get("share"), causes))
    values = [0.0 if v is None else v for _, v, _ in rows]
    ax.barh(range(len(rows)), values)
    for i, (_, _, section) in enumerate(rows):
        ax.plot([section["limit"]] * 2, [i - 0.4, i + 0.4], color="red", linestyle="--")
    ax.set_yticks(range(len(rows)), [name for name, _, _ in rows])
    ax.set_xlim(0, 1.05)
    ax.set_title("rates (red: alert limit)")
