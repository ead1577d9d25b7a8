"""``python -m serving`` is the ``banditops`` command."""

from ops.cli import app

app()
