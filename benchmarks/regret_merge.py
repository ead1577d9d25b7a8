"""Merge regret reports of the same environment run one seed per process.

    python -m benchmarks.regret --env many_arms --policies $P --steps 10000 --seeds 0 --json s0.json
    python -m benchmarks.regret --env many_arms --policies $P --steps 10000 --seeds 1 --json s1.json
    python -m benchmarks.regret_merge many_arms.json s0.json s1.json

Each seed's policies still share one stream and one loop in their process; the merge only
puts the seeds' rows together (and fails if the reports are not of the same environment,
steps and policies). It writes the merged JSON and prints the Markdown table of
:func:`benchmarks.regret.markdown_table`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.regret import EnvironmentReport, load_reports, markdown_table


def merge_reports(reports: Sequence[EnvironmentReport]) -> EnvironmentReport:
    """One report with every seed of ``reports`` (same env, options, steps, policies)."""
    if not reports:
        raise ValueError("merge_reports needs at least one report.")
    first = reports[0]
    policies = sorted({r.policy for r in first.results})
    for other in reports[1:]:
        same = (other.env, other.options, other.steps) == (first.env, first.options, first.steps)
        if not same or sorted({r.policy for r in other.results}) != policies:
            raise ValueError(
                f"reports differ: {other.env} ({other.steps} steps) against {first.env} "
                f"({first.steps} steps), or their policies differ."
            )
    seeds = [s for r in reports for s in r.seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed occurs in several reports: {seeds}.")
    results = [row for r in reports for row in r.results]
    missing = {k: v for r in reports for k, v in r.missing.items()}
    return EnvironmentReport(first.env, first.options, first.steps, seeds, results, missing)


def main(argv: Sequence[str] | None = None) -> EnvironmentReport:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        raise SystemExit("usage: python -m benchmarks.regret_merge OUT.json IN.json [IN.json …]")
    out, inputs = Path(args[0]), [Path(a) for a in args[1:]]
    merged = merge_reports([rep for path in inputs for rep in load_reports(path)])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged.to_json(), indent=2))
    print(markdown_table(merged))
    return merged


if __name__ == "__main__":
    main()
