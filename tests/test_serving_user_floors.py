"""Per-user-group exploration floors over real HTTP: the served policy decides each
request for its hashed user, so the logged propensities of a floored group's users are at
least its floor (and exact), and the offline evaluation of the same policy on the logged
rows — through their ``user_hash`` — computes the very same probabilities."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np

from bandit_core import load_policy
from bandit_core.user_groups import user_group
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.replay import read_replay
from serving.app import create_app
from serving.identity import hash_user
from tests.serving_helpers import AUTH, LiveServer, decision_body, policy_file, service_settings
from training.evaluate import logged_batch, logging_matrix
from training.replay import replay_from_frame
from validation.ope.evaluate import policy_action_dist

GROUPS = 4
FLOORS = {"group_1": 0.2}
N_REQUESTS = 120


def test_logged_propensities_keep_each_groups_floor_and_offline_sees_the_same(
    tmp_path: Path,
) -> None:
    # UCB (deterministic) with a floor for hashed user group 1 only
    model_path = policy_file(
        tmp_path / "policy.npz", segment_user_groups=GROUPS, segment_floors=FLOORS
    )
    settings = service_settings(tmp_path, model_path=model_path)
    engine = make_engine(settings.store_url)
    upgrade(engine)
    app = create_app(settings)
    rng = np.random.default_rng(21)
    users = [None if i % 6 == 0 else f"user-{i}" for i in range(N_REQUESTS)]
    start = datetime.now(UTC) - timedelta(minutes=1)
    with (
        LiveServer(app) as server,
        httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http,
    ):
        # one catalog (the offline batch keeps an arm's first logged features), new contexts
        candidates = decision_body(rng)["candidates"]
        answers = [
            http.post(
                "/v1/decisions", json={**decision_body(rng, user=u), "candidates": candidates}
            ).json()
            for u in users
        ]
        salt = app.state.service.salt
    hashes = [None if u is None else hash_user(u, salt) for u in users]
    group_of = {
        a["event_id"]: (-1 if h is None else user_group(h, GROUPS))
        for a, h in zip(answers, hashes, strict=True)
    }
    assert sum(g == 1 for g in group_of.values()) >= 15  # the floored group is served
    for answer in answers:
        assert answer["fallback"] is False
        if group_of[answer["event_id"]] == 1:
            assert answer["propensity"] >= FLOORS["group_1"]

    end = datetime.now(UTC) + timedelta(minutes=1)
    frame = read_replay(engine, start, end, reward_window=timedelta(0), as_of=end)
    engine.dispose()
    data = replay_from_frame(frame)
    assert data.n_rows == N_REQUESTS
    by_event = dict(zip((a["event_id"] for a in answers), hashes, strict=True))
    assert data.user_hashes == [by_event[e] for e in data.event_ids]  # logged with the row
    logged = np.stack(data.logging_probabilities or [])
    groups = np.array([group_of[e] for e in data.event_ids])
    floored = groups == 1
    assert logged[floored].min() >= FLOORS["group_1"] - 1e-15
    # the floor is the group's: UCB gives every other group, and users, probability 0
    assert logged[~floored].min() == 0.0 and (groups == -1).any()
    assert np.all(logged[groups == -1].max(axis=1) == 1.0)

    # offline: the registered policy evaluated on the logged rows, each for its user
    batch = logged_batch(data)
    assert batch.user_hashes == tuple(data.user_hashes)
    pi = policy_action_dist(load_policy(model_path), batch, np.random.default_rng(0))[:, :, 0]
    np.testing.assert_allclose(pi, logging_matrix(data, batch), rtol=0, atol=1e-12)
    assert pi[floored].min() >= FLOORS["group_1"] - 1e-15
