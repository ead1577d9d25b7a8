"""``banditops demo --workspace PATH`` deleted whatever folder PATH named before it wrote
its own (``--workspace ~`` would have taken the home folder with it): it replaces only a
previous demo's workspace, or an empty folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ops.demo import DEMO_MARKER, fresh_workspace


def test_only_a_demo_workspace_or_an_empty_folder_is_replaced(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("four years")
    with pytest.raises(ValueError, match=r"is not a banditops demo's workspace"):
        fresh_workspace(mine)
    assert (mine / "thesis.tex").read_text() == "four years"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (fresh_workspace(empty).root / DEMO_MARKER).is_file()
    (empty / "runs").mkdir()  # what a demo wrote
    fresh_workspace(empty)
    assert sorted(p.name for p in empty.iterdir()) == [DEMO_MARKER]

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        fresh_workspace(afile)


def test_the_command_refuses_it_in_one_line(tmp_path: Path) -> None:
    from ops.cli import app

    (tmp_path / "notes.txt").write_text("keep")
    done = CliRunner().invoke(app, ["demo", "--workspace", str(tmp_path)])
    assert done.exit_code == 2
    assert "error: --workspace" in " ".join(done.output.split())
    assert (tmp_path / "notes.txt").read_text() == "keep"
