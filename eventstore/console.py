"""The command line's two streams: what a command answers goes to stdout (its tables, its
``--json``), its errors and warnings to stderr, so that a script reading ``--json`` never
reads a warning (a stray ``BANDITOPS_*`` variable broke ``config show --json | jq``:
README helper, stop 46)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

#: Errors and warnings.
stderr = Console(stderr=True)


def error(message: str) -> None:
    """``error: <message>`` on stderr (``message`` is plain text, never markup)."""
    stderr.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)


def warning(message: str) -> None:
    """``warning: <message>`` on stderr (``message`` is plain text, never markup)."""
    stderr.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)
