"""``python -m serving`` is the ``banditops`` command."""

from serving.cli import app

app()
