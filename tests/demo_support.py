"""``banditops demo`` run as users run it: the installed command in its own process.

The demo configures Airflow for its workspace and imports it; run in the test process it
would leave Airflow configured for a workspace that is gone, and the ``airflow_home``
fixture of any later test on that worker would refuse to start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BANDITOPS = Path(sys.executable).with_name("banditops")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``AIRFLOW*`` or ``BANDITOPS_*`` setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "BANDITOPS_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run_demo_cli(workspace: Path, *, users: int, requests: int, seed: int) -> dict[str, Any]:
    """``banditops demo`` on ``workspace``; its summary (``demo.json``)."""
    done = subprocess.run(
        [
            str(BANDITOPS),
            "demo",
            "--workspace",
            str(workspace),
            "--users",
            str(users),
            "--requests",
            str(requests),
            "--seed",
            str(seed),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary: dict[str, Any] = json.loads((workspace / "demo.json").read_text())
    return summary
