"""Architecture rules: bandit_core does no I/O and imports no heavy infrastructure."""

from __future__ import annotations

import ast
import json
import re
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


# ---------------------------------------------------------------- package direction
#: What each package may import among the project's packages: the table of
#: docs/architecture.md, "Packages and their direction" (checked against it below).
#: Training, monitoring and serving meet only in the shared packages below them; nothing
#: imports ``benchmarks`` or ``tests``.
SHARED = {"bandit_core", "eventstore", "modelregistry"}
ALLOWED: dict[str, set[str]] = {
    "bandit_core": set(),
    "eventstore": {"bandit_core"},
    "modelregistry": {"bandit_core", "eventstore"},
    "validation": {"bandit_core", "eventstore"},
    "serving": SHARED,
    "training": SHARED | {"validation"},
    "monitoring": SHARED | {"validation"},
    "dags": SHARED | {"validation", "training", "monitoring"},
    "ops": SHARED | {"validation", "serving", "training", "monitoring"},
    "benchmarks": SHARED | {"validation", "serving", "training", "monitoring", "ops"},
}
#: The one package that imports ``mlflow`` (registry writes, aliases and downloads).
MLFLOW_OWNER = "modelregistry"


def imported_modules(source: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import statement in ``source``
    (module level or inside functions)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def direction_violations(root: Path) -> list[str]:
    """Imports of a project package that its importer may not use (per :data:`ALLOWED`)."""
    out = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, name in imported_modules(path.read_text()):
                top = name.split(".")[0]
                known = top in ALLOWED or top == "tests"
                if known and top != package and top not in allowed:
                    out.append(f"{path.relative_to(root)}:{line} imports {name}")
    return sorted(out)


def mlflow_violations(root: Path) -> list[str]:
    """Imports of ``mlflow`` outside :data:`MLFLOW_OWNER`."""
    out = []
    for package in ALLOWED:
        if package == MLFLOW_OWNER:
            continue
        for path in sorted((root / package).rglob("*.py")):
            for line, name in imported_modules(path.read_text()):
                if name.split(".")[0] == "mlflow":
                    out.append(f"{path.relative_to(root)}:{line} imports {name}")
    return out


def package_cycles(root: Path) -> list[list[str]]:
    """Cycles in the graph "package A imports package B" (A ≠ B)."""
    edges: dict[str, set[str]] = {p: set() for p in ALLOWED}
    for package in ALLOWED:
        for path in (root / package).rglob("*.py"):
            for _, name in imported_modules(path.read_text()):
                top = name.split(".")[0]
                if top in ALLOWED and top != package:
                    edges[package].add(top)
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(edges[node]):
            if nxt == trail[0]:
                cycles.append([*trail, nxt])
            elif nxt not in trail and nxt > trail[0]:  # each cycle once, from its least node
                visit(nxt, [*trail, nxt])

    for start in sorted(edges):
        visit(start, [start])
    return cycles


def _plant(root: Path, files: dict[str, str]) -> Path:
    for package in ALLOWED:
        (root / package).mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (root / rel).write_text(text)
    return root


def test_no_package_imports_one_above_it_or_sideways() -> None:
    assert direction_violations(ROOT) == []


def documented_imports(page: str) -> dict[str, set[str]]:
    """``{package: what it may import}`` from the package table of docs/architecture.md
    ("shared packages" read as :data:`SHARED`, "—" as nothing)."""
    table: dict[str, set[str]] = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        package = cells[0].strip("`")
        column = cells[2].split("(")[0]  # a parenthesis explains; it lists nothing
        names = set(re.findall(r"`([a-z_]+)`", column))
        table[package] = names | (SHARED if "shared packages" in column else set())
    return table


def test_the_architecture_page_states_the_enforced_directions() -> None:
    """The page's table is what the scan enforces: a package the page lets import another
    that the scan refuses (or the reverse) is a copy that drifted (before, the page let
    ``ops`` import ``dags`` and drew ``monitoring`` above ``serving``)."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    documented = documented_imports(page)
    assert documented == {k: v for k, v in ALLOWED.items() if k != "benchmarks"}
    planted = page.replace("| shared packages, `validation` |", "| shared packages, `serving` |")
    assert documented_imports(planted) != documented


def test_only_the_registry_package_imports_mlflow() -> None:
    assert mlflow_violations(ROOT) == []


def test_packages_import_each_other_without_cycles() -> None:
    assert package_cycles(ROOT) == []


def test_the_direction_scan_flags_planted_violations(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {
            "training/up.py": "def f():\n    from serving.settings import Settings\n",
            "serving/side.py": "import training.steps\n",
            "monitoring/side.py": "from training import runspec\n",
            "eventstore/up.py": "from validation.ope import estimate\n",
            "ops/bench.py": "from benchmarks import obd\n",
            "serving/ok.py": "from eventstore import make_engine\nimport numpy\n",
        },
    )
    assert direction_violations(root) == [
        "eventstore/up.py:1 imports validation.ope",
        "monitoring/side.py:1 imports training",
        "ops/bench.py:1 imports benchmarks",
        "serving/side.py:1 imports training.steps",
        "training/up.py:2 imports serving.settings",
    ]


def test_the_mlflow_scan_flags_a_planted_import(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {
            "serving/dl.py": "def f():\n    from mlflow.artifacts import download_artifacts\n",
            "training/log.py": "import mlflow\n",
            "modelregistry/ok.py": "import mlflow\n",
        },
    )
    assert mlflow_violations(root) == [
        "serving/dl.py:2 imports mlflow.artifacts",
        "training/log.py:1 imports mlflow",
    ]


def test_the_cycle_scan_flags_a_planted_cycle(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {"serving/a.py": "import training\n", "training/b.py": "from serving import app\n"},
    )
    assert package_cycles(root) == [["serving", "training", "serving"]]


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
