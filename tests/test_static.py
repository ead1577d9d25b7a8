"""ruff (lint and format) and mypy --strict stay clean on every package.

The packages mypy checks are `[tool.mypy] files` in pyproject.toml (the one list; `make lint`
runs the same); a test holds that list equal to the installed packages plus the DAG folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (it is part of the dev extra)")
    return found


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_ruff_is_clean() -> None:
    out = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean() -> None:
    out = subprocess.run(
        [_tool("ruff"), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_checks_every_package() -> None:
    config = _pyproject()
    tool = config["tool"]
    assert isinstance(tool, dict)
    packages = {p.rstrip("*") for p in tool["setuptools"]["packages"]["find"]["include"]}
    assert set(tool["mypy"]["files"]) == packages | {"dags"}


@pytest.mark.slow
def test_mypy_strict_is_clean_on_every_package() -> None:
    # no arguments: mypy checks `[tool.mypy] files` with the pyproject configuration (strict,
    # the pydantic plugin); the cache (.mypy_cache, git-ignored) makes a rerun take seconds
    out = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout, out.stdout
