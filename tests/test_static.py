"""ruff and mypy --strict stay clean on bandit_core (the library others build on)."""

from __future__ import annotations

import shutil
import subprocess
import sys
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


def test_ruff_is_clean_on_bandit_core() -> None:
    out = subprocess.run(
        [_tool("ruff"), "check", "bandit_core"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean_on_bandit_core() -> None:
    out = subprocess.run(
        [_tool("mypy"), "--strict", "bandit_core"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
