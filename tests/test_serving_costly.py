"""Decisions chosen in the decision thread (over ``inline_work_units``) on a copy of the
policy for their candidates (:mod:`bandit_core.policies.decision_copy`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bandit_core import make_policy, save_policy
from tests.serving_helpers import DIM_USER, running_client, service_settings

ARMS = 3000


def _many_armed_model(path: Path) -> Path:
    """Per-arm LinUCB that has learnt ``ARMS`` arms."""
    rng = np.random.default_rng(4)
    policy = make_policy("linucb", dim_user=DIM_USER)
    ids = [f"item-{i}" for i in range(ARMS)] * 2
    policy.update_batch(rng.standard_normal((len(ids), DIM_USER)), ids, rng.random(len(ids)))
    return save_policy(policy, path)


def _decide(settings: object, requests: list[dict[str, object]]) -> list[tuple[str, float]]:
    out = []
    with running_client(settings) as client:
        for body in requests:
            got = client.post("/v1/decisions", json=body)
            assert got.status_code == 200, got.text
            answer = got.json()
            assert answer["fallback"] is False and answer["policy"] == "linucb", answer
            out.append((answer["arm_id"], answer["propensity"]))
    return out


def test_a_costly_decision_on_a_many_armed_head_decides_as_one_on_the_loop(
    tmp_path: Path,
) -> None:
    """The same requests (known arms scattered among 3,000, and arms never seen) to a
    service that decides each on the event loop and to one that decides each in the
    decision thread (``inline_work_units = 0``): the same arms with the same propensities
    (UCB is deterministic), chosen by the model."""
    model = _many_armed_model(tmp_path / "linucb.npz")
    rng = np.random.default_rng(8)
    requests: list[dict[str, object]] = []
    for _ in range(12):
        known = [f"item-{i}" for i in rng.choice(ARMS, 6, replace=False)]
        ids = [*known, f"new-{rng.integers(10**6)}"]
        rng.shuffle(ids)
        requests.append(
            {
                "context": rng.standard_normal(DIM_USER).round(6).tolist(),
                "candidates": [{"id": a} for a in ids],
            }
        )
    inline = _decide(service_settings(tmp_path / "inline", model_path=model), requests)
    costly = _decide(
        service_settings(tmp_path / "costly", model_path=model, inline_work_units=0), requests
    )
    assert costly == inline
    assert len({arm for arm, _ in inline}) > 1
