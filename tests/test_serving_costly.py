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


def test_a_grouped_request_costly_as_a_whole_is_chosen_off_the_loop(tmp_path: Path) -> None:
    """Each group within ``inline_work_units``, the request over it: every group goes to
    the decision thread (here, to miss a 1 µs deadline: the fallback answers), where each
    group used to be chosen on the loop, the groups one after the other."""
    from bandit_core import load_policy
    from serving.budget import work_units
    from tests.serving_helpers import decision_body, policy_file

    model = policy_file(tmp_path / "lints.npz", name="shared_lints")
    per_group = work_units(load_policy(model), 5, None, 0)
    settings = service_settings(
        tmp_path,
        model_path=model,
        inline_work_units=2 * per_group,
        decision_deadline_s=0.000001,
    )
    rng = np.random.default_rng(3)
    body = decision_body(rng, n=5)
    groups = [{"id": f"g{g}", "variants": decision_body(rng, n=5)["candidates"]} for g in range(4)]
    with running_client(settings) as client:
        alone = client.post("/v1/decisions", json=body).json()
        assert alone["fallback"] is False  # one group's cost: chosen on the loop, in time
        got = client.post(
            "/v1/decisions/grouped", json={"context": body["context"], "groups": groups}
        )
        assert got.status_code == 200, got.text
        assert got.json()["fallback"] is True and len(got.json()["groups"]) == 4
