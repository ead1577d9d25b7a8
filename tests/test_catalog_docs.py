"""The README's policy table is generated from the policy catalog (never a hand copy)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bandit_core import catalog

README = Path(__file__).resolve().parents[1] / "README.md"


def _embedded(text: str) -> str | None:
    if catalog.TABLE_BEGIN not in text or catalog.TABLE_END not in text:
        return None
    start = text.index(catalog.TABLE_BEGIN) + len(catalog.TABLE_BEGIN)
    return text[start : text.index(catalog.TABLE_END)].strip("\n")


def test_readme_policy_table_is_the_generated_one() -> None:
    block = _embedded(README.read_text(encoding="utf-8"))
    assert block is not None, f"README lacks the block between {catalog.TABLE_BEGIN!r} and the end"
    assert block == catalog.policy_table(), (
        "README's policy table is stale: replace the block with "
        "`python -c 'from bandit_core.catalog import policy_table; print(policy_table())'`"
    )


def test_a_new_catalog_entry_makes_the_readme_table_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard against a vacuous check: one more entry changes the generated table."""
    extra = dataclasses.replace(catalog.CATALOG["linucb"], name="planted", summary="planted")
    monkeypatch.setitem(catalog.CATALOG, "planted", extra)
    block = _embedded(README.read_text(encoding="utf-8"))
    assert block != catalog.policy_table()
    assert "`planted`" in catalog.policy_table()


def test_readme_lists_every_wrapper() -> None:
    text = README.read_text(encoding="utf-8")
    for target in catalog.WRAPPERS.values():
        assert f"| `{target.rpartition(':')[2]}(" in text, target
