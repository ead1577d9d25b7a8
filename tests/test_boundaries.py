"""Architecture rules: bandit_core does no I/O and imports no heavy infrastructure."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = (
    "mlflow",
    "sqlalchemy",
    "fastapi",
    "airflow",
    "pandas",
    "matplotlib",
    "alembic",
    "great_expectations",
    "starlette",
    "uvicorn",
)


def test_bandit_core_source_imports_nothing_forbidden() -> None:
    offenders = []
    for path in sorted((ROOT / "bandit_core").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, offenders


def test_importing_bandit_core_loads_none_of_them_transitively() -> None:
    code = (
        "import sys, json, bandit_core, bandit_core.envs, bandit_core.simulate, bandit_core.state; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(FORBIDDEN)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    assert json.loads(out.stdout) == []


def test_the_check_would_catch_a_forbidden_import(tmp_path: Path) -> None:
    """Guard against a vacuous boundary test: the scan flags a planted import."""
    planted = tmp_path / "planted.py"
    planted.write_text("import pandas as pd\nfrom mlflow import pyfunc\n")
    tree = ast.parse(planted.read_text())
    found = [
        n.names[0].name if isinstance(n, ast.Import) else n.module
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    ]
    assert [f for f in found if f and f.split(".")[0] in FORBIDDEN] == ["pandas", "mlflow"]


def test_the_policy_catalog_is_cheap_to_import() -> None:
    """The DAG form reads the catalog at parse time: neither it nor the retrain settings
    may load torch (numpy neither, for the catalog alone)."""
    code = (
        "import sys, json, bandit_core.catalog; a = sorted(m for m in ('torch', 'numpy') "
        "if m in sys.modules); import training.settings; "
        "print(json.dumps([a, 'torch' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    assert json.loads(out.stdout) == [[], False]


def test_lazy_exports_match_the_type_checking_imports() -> None:
    """``bandit_core``'s public names resolve lazily; the table behind them and the
    imports type checkers read name the same things."""
    import bandit_core

    tree = ast.parse((ROOT / "bandit_core" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If))
    typed = {
        alias.name: node.module
        for node in ast.walk(block)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == bandit_core._EXPORTS
    assert sorted(bandit_core.__all__) == sorted(typed)
    for name in bandit_core.__all__:
        assert getattr(bandit_core, name) is not None
