"""Helpers of the rollout acceptance tests: a seeded click simulator, policies that are
clearly better, clearly worse or exactly as good as production's, a real MLflow registry
holding them, and a decision service on real HTTP that serves the registry's aliases.

* :func:`environment`: 12 items, 6 offered per request, user × item interactions
  (uniform CTR ≈ 0.29).
* :func:`policy_state`: ``uniform`` (production, ≈ 0.29), ``better`` (per-arm LinUCB
  trained on 2000 uniform rows, ≈ 0.64), ``worse`` (the same trained on the opposite
  clicks, ≈ 0.08), ``equal`` (uniform again: the same reward distribution).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import SecretStr

from bandit_core import make_policy, save_policy
from bandit_core.envs import LogisticClickEnvironment
from serving.traffic import simulate_traffic
from tests.serving_helpers import AUTH, TEST_TOKEN, LiveServer, wait_ready

MODEL = "banditops-policy"


def environment() -> LogisticClickEnvironment:
    return LogisticClickEnvironment.make(
        np.random.default_rng(7),
        n_items=12,
        dim_user=4,
        dim_arm=3,
        n_candidates=6,
        bias=-1.5,
        interaction_scale=3.0,
    )


def policy_state(kind: str, path: Path) -> Path:
    """A policy state file of ``kind`` (see the module's docstring)."""
    if kind in ("uniform", "equal"):
        policy = make_policy("uniform")
    else:
        env = environment()
        rng = np.random.default_rng(0)
        policy = make_policy("linucb", dim_user=4, alpha=0.1)
        rows = []
        for _ in range(2000):
            x, cands = env.sample(rng)
            arm = int(rng.integers(len(cands.ids)))
            click = env.reward(env.expected_rewards(x, cands), arm, float(rng.random()))
            rows.append((x, cands.ids[arm], click if kind == "better" else 1.0 - click))
        policy.update_batch(
            np.array([r[0] for r in rows]), [r[1] for r in rows], np.array([r[2] for r in rows])
        )
    save_policy(policy, path)
    return path


def register(registry: Any, kind: str, root: Path, key: str) -> str:
    """Register a version of ``kind``; its number."""
    state = policy_state(kind, root / f"{key}.npz")
    return str(registry.register_candidate(state_path=state, run_key=key).version)


@dataclass
class LiveService:
    """The decision service on a loopback port, with an HTTP client."""

    client: httpx.Client

    def poll(self) -> dict[str, Any]:
        """One model poll (what each replica does every ``poll_interval_s``)."""
        out: dict[str, Any] = self.client.post("/v1/admin/poll", headers=AUTH).json()
        return out

    def traffic(self, n: int, rng: np.random.Generator) -> Any:
        """``n`` simulated decisions and their clicks through HTTP."""
        stats = simulate_traffic(
            self.client, environment(), n, rng, n_users=400, reward_delay=3, headers=AUTH
        )
        assert stats.errors == 0, stats.error_samples
        return stats


@contextlib.contextmanager
def live_service(workspace: Path, store_url: str, tracking_uri: str) -> Iterator[LiveService]:
    """The service serving ``models:/banditops-policy@production`` and, while a rollout
    runs, ``@staging`` with the rollout's share (no fixed share)."""
    from serving.app import create_app
    from serving.settings import Settings

    settings = Settings(
        workspace=workspace,
        database_url=store_url,
        mlflow_tracking_uri=tracking_uri,
        model_name=MODEL,
        sqlite_synchronous="NORMAL",
        poll_interval_s=3600.0,  # the test polls through /v1/admin/poll
        seed=3,
        user_salt=SecretStr("rollout-salt"),
        api_token=SecretStr(TEST_TOKEN),
    )
    with (
        LiveServer(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=30.0) as client,
    ):
        wait_ready(client.get)
        yield LiveService(client)
