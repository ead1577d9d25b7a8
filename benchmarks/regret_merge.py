"""Merge regret reports of the same environment run one seed per process.

    python -m benchmarks.regret --env many_arms --policies $P --steps 10000 --seeds 0 --json s0.json
    python -m benchmarks.regret --env many_arms --policies $P --steps 10000 --seeds 1 --json s1.json
    python -m benchmarks.regret_merge many_arms.json s0.json s1.json

Each process's policies share one stream and one loop; a seed's stream is the same in every
process, so the rows are comparable. The merge only puts the rows together (and fails if
the reports are not of the same environment and steps, or repeat a policy and seed). It
writes the merged JSON and prints the Markdown table of
:func:`benchmarks.regret.markdown_table`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.regret import EnvironmentReport, load_reports, markdown_table


def merge_reports(reports: Sequence[EnvironmentReport]) -> EnvironmentReport:
    """One report with every (policy, seed) row of ``reports`` — seeds run in separate
    processes, or groups of policies on the same seeds — for one environment, its options
    and its number of steps; a (policy, seed) pair may occur once."""
    if not reports:
        raise ValueError("merge_reports needs at least one report.")
    first = reports[0]
    for other in reports[1:]:
        if (other.env, other.options, other.steps) != (first.env, first.options, first.steps):
            raise ValueError(
                f"reports differ: {other.env} ({other.steps} steps, {other.options}) against "
                f"{first.env} ({first.steps} steps, {first.options})."
            )
    results = [row for r in reports for row in r.results]
    pairs = [(row.policy, row.seed) for row in results]
    if len(set(pairs)) != len(pairs):
        twice = sorted({p for p in pairs if pairs.count(p) > 1})
        raise ValueError(f"a (policy, seed) pair occurs in several reports: {twice}.")
    seeds = sorted({s for r in reports for s in r.seeds})
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
