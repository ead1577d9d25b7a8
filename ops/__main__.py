"""``python -m ops`` is the ``banditops`` command."""

from ops.cli import app

app()
