"""Print the project's dependencies from ``pyproject.toml``, one per line, leaving some out.

Used by the Dockerfiles (``REQUIREMENTS`` build argument) to install each image's share of
the dependencies, and by the tests that keep the images honest:

    python docker/requirements.py --exclude apache-airflow > requirements.txt
    python docker/requirements.py --replace mlflow=mlflow-skinny   # same version range
    python docker/requirements.py --only mlflow --only psycopg2-binary
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


def requirements(
    pyproject: Path,
    exclude: list[str],
    extras: list[str],
    replace: list[str] | None = None,
    only: list[str] | None = None,
) -> list[str]:
    """``[project].dependencies`` (plus the named optional groups) without ``exclude``; each
    ``OLD=NEW`` of ``replace`` installs NEW in OLD's version range; ``only`` keeps just the
    named projects."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"unknown extra {extra!r}; pyproject has {sorted(optional)}.")
        lines += optional[extra]
    known = {requirement_name(line) for line in lines}
    swaps: dict[str, str] = {}
    for item in replace or []:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise ValueError(f"--replace takes OLD=NEW; got {item!r}.")
        swaps[canonical(old)] = new.strip()
    for option, names in (("--exclude", exclude), ("--replace", swaps), ("--only", only or [])):
        unknown = sorted({canonical(n) for n in names} - known)
        if unknown:
            raise ValueError(f"{option} names no dependency of the project: {', '.join(unknown)}.")
    dropped = {canonical(n) for n in exclude}
    kept = {canonical(n) for n in only} if only else known
    out = []
    for line in lines:
        name = requirement_name(line)
        if name in dropped or name not in kept:
            continue
        if name in swaps:
            line = swaps[name] + line[_NAME.match(line).end() :]  # type: ignore[union-attr]
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pyproject", type=Path, default=Path(__file__).resolve().parents[1] / "pyproject.toml"
    )
    parser.add_argument("--exclude", action="append", default=[], help="project to leave out")
    parser.add_argument("--extra", action="append", default=[], help="optional group to add")
    parser.add_argument(
        "--replace", action="append", default=[], help="OLD=NEW: NEW in OLD's version range"
    )
    parser.add_argument("--only", action="append", default=[], help="keep only this project")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.exclude, args.extra, args.replace, args.only)
    except ValueError as exc:
        parser.error(str(exc))
    sys.stdout.write("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main()
