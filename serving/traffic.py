"""Simulated traffic against the decision service, through its HTTP API.

Users with features arrive, the service picks an item among the candidates, the user
clicks with the environment's probability and the click arrives as a reward after a delay
(rewards of a step are sent after the decisions of the next ``reward_delay`` steps). The
environment knows every candidate's click probability, so CTR and regret are exact.

Works with any client that has ``post(url, json=...)`` returning a response with
``status_code`` and ``json()``: an ``httpx.Client`` on a live server or a Starlette
``TestClient``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bandit_core.envs import Environment
from eventstore.contract import DECISION_PATH
from eventstore.outcomes import FALLBACK


class HttpClient(Protocol):
    def post(self, url: str, *, json: Any = None, headers: Any = None) -> Any: ...

    def get(self, url: str) -> Any: ...


def wait_ready(client: HttpClient, timeout_s: float = 30.0) -> None:
    """Block until ``/readyz`` answers 200 (a model or the fallback serves)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except Exception:  # connection refused while the server starts
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the decision service was not ready after {timeout_s:.0f} s.")
        time.sleep(0.1)


@dataclass
class TrafficStats:
    """What a simulated period produced (all counts exact)."""

    decisions: int = 0
    clicks: float = 0.0
    regret: float = 0.0
    fallback: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    by_version: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ctr(self) -> float:
        return self.clicks / self.decisions if self.decisions else 0.0

    @property
    def fallback_share(self) -> float:
        return self.fallback / self.decisions if self.decisions else 0.0

    def realized_ctr(self, version: str) -> float | None:
        rewards = self.by_version.get(version)
        return float(np.mean(rewards)) if rewards else None


def simulate_traffic(
    client: HttpClient,
    env: Environment,
    n_requests: int,
    rng: np.random.Generator,
    *,
    n_users: int = 500,
    reward_delay: int = 5,
    headers: dict[str, str] | None = None,
    user_features: np.ndarray | None = None,
) -> TrafficStats:
    """Send ``n_requests`` decisions and their rewards; return exact CTR and regret.

    Users are ``n_users`` fixed profiles (contexts drawn once from ``env``; pass
    ``user_features`` to keep the same population across days) picked uniformly per request.
    """
    if user_features is None:
        user_features = np.stack([env.sample(rng)[0] for _ in range(n_users)])
    wait_ready(client)
    stats = TrafficStats()
    pending: deque[tuple[str, float]] = deque()
    for _ in range(n_requests):
        user = int(rng.integers(user_features.shape[0]))
        context = user_features[user]
        _, candidates = env.sample(rng)
        body = {
            "context": context.tolist(),
            "candidates": [
                {"id": arm, "features": candidates.features[i].tolist()}
                for i, arm in enumerate(candidates.ids)
            ],
            "user_id": f"user-{user}",
        }
        resp = client.post(DECISION_PATH, json=body, headers=headers)
        if resp.status_code != 200:
            _record_error(stats, resp)
            continue
        out = resp.json()
        arm = candidates.ids.index(out["arm_id"])
        means = env.expected_rewards(context, candidates)
        reward = env.reward(means, arm, float(rng.random()))
        stats.decisions += 1
        stats.clicks += reward
        stats.regret += float(means.max() - means[arm])
        stats.fallback += int(out["fallback"])
        stats.by_version.setdefault(out["model_version"] or FALLBACK, []).append(reward)
        pending.append((out["event_id"], reward))
        while len(pending) > reward_delay:
            _send_reward(client, stats, *pending.popleft(), headers=headers)
    while pending:
        _send_reward(client, stats, *pending.popleft(), headers=headers)
    return stats


def _send_reward(
    client: HttpClient, stats: TrafficStats, event_id: str, reward: float, headers: Any
) -> None:
    resp = client.post(
        "/v1/rewards", json={"event_id": event_id, "reward": reward}, headers=headers
    )
    if resp.status_code != 200:
        _record_error(stats, resp)


def _record_error(stats: TrafficStats, resp: Any) -> None:
    stats.errors += 1
    if len(stats.error_samples) < 5:
        stats.error_samples.append(f"{resp.status_code}: {str(resp.text)[:300]}")
