"""Print the project's dependencies from ``pyproject.toml``, one per line, leaving some out.

Used by ``docker/serving.Dockerfile`` to install the decision service without Airflow
(``banditops serve`` never imports it), and by the tests that keep the images honest:

    python docker/requirements.py --exclude apache-airflow > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str:
    match = _NAME.match(line)
    if match is None:
        raise ValueError(f"not a requirement: {line!r}")
    return canonical(match.group(1))


def requirements(pyproject: Path, exclude: list[str], extras: list[str]) -> list[str]:
    """``[project].dependencies`` (plus the named optional groups) without ``exclude``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"unknown extra {extra!r}; pyproject has {sorted(optional)}.")
        lines += optional[extra]
    dropped = {canonical(n) for n in exclude}
    known = {requirement_name(line) for line in lines}
    unknown = sorted(dropped - known)
    if unknown:
        raise ValueError(f"--exclude names no dependency of the project: {', '.join(unknown)}.")
    return [line for line in lines if requirement_name(line) not in dropped]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pyproject", type=Path, default=Path(__file__).resolve().parents[1] / "pyproject.toml"
    )
    parser.add_argument("--exclude", action="append", default=[], help="project to leave out")
    parser.add_argument("--extra", action="append", default=[], help="optional group to add")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.exclude, args.extra)
    except ValueError as exc:
        parser.error(str(exc))
    sys.stdout.write("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main()
