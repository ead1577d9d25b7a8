"""The decision → reward → head-update path through the app (TestClient), with the
real event store; auth, unknown events, duplicates, ops endpoints, fallback, slates,
restart recovery."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bandit_core import load_policy
from eventstore.replay import read_replay
from serving.models.recovery import rebuild_from_store
from tests.serving_helpers import (
    DIM_ARM,
    DIM_USER,
    decision_body,
    head_difference,
    policy_file,
    running_client,
    served_policy,
    service_settings,
)

pytest_plugins = ["tests.serving_fixtures"]


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return policy_file(tmp_path / "policy.npz", seed=0)


def test_reward_updates_the_deciding_heads_at_once(
    store_url: str, model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    settings = service_settings(tmp_path, store_url, model_path=model_path)
    reference = load_policy(model_path)
    with running_client(settings) as client:
        for step in range(5):
            body = decision_body(rng, n=6)
            got = client.post("/v1/decisions", json=body)
            assert got.status_code == 200, got.text
            decision = got.json()
            assert decision["fallback"] is False and decision["traffic"] == "production"
            assert decision["model_version"].startswith("file-")
            assert 0.0 < decision["propensity"] <= 1.0
            reward = float(step % 2)
            ack = client.post(
                "/v1/rewards", json={"event_id": decision["event_id"], "reward": reward}
            )
            assert ack.json() == {
                "event_id": decision["event_id"],
                "status": "applied",
                "applied": True,
                "model_version": decision["model_version"],
            }
            arm = [c["id"] for c in body["candidates"]].index(decision["arm_id"])
            reference.update(
                body["context"], decision["arm_id"], reward, body["candidates"][arm]["features"]
            )
            # the head learnt before the reward was acknowledged
            assert head_difference(served_policy(client), reference) < 1e-12
        info = client.get("/v1/model").json()
        assert info["production"]["applied_rewards"] == 5
        assert info["production"]["head"]["observations"] == 55.0  # 50 warm-up + 5
        service = client.app.state.service
        rebuilt = rebuild_from_store(
            service.store, decision["model_version"], load_policy(model_path)
        )
        assert head_difference(served_policy(client), rebuilt) < 1e-9


def test_rewards_need_the_token_when_one_is_set(
    model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    settings = service_settings(tmp_path, model_path=model_path, api_token="s3cret")
    with running_client(settings) as client:
        ok = {"Authorization": "Bearer s3cret"}
        event = client.post("/v1/decisions", json=decision_body(rng), headers=ok).json()["event_id"]
        body = {"event_id": event, "reward": 1.0}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            denied = client.post("/v1/rewards", json=body, headers=headers)
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"] == "Bearer"
        for path in ("/v1/admin/poll", "/v1/admin/snapshot"):
            assert client.post(path).status_code == 401
        assert client.post("/v1/rewards", json=body, headers=ok).json()["applied"] is True
        assert client.post("/v1/admin/snapshot", headers=ok).status_code == 200
        assert client.app.state.service.store.count_rows()["rewards"] == 1


def test_unknown_event_is_404(model_path: Path, tmp_path: Path) -> None:
    with running_client(service_settings(tmp_path, model_path=model_path)) as client:
        got = client.post("/v1/rewards", json={"event_id": "f" * 32, "reward": 1.0})
        assert got.status_code == 404
        assert "f" * 32 in got.json()["detail"]
        assert client.app.state.service.store.count_rows()["rewards"] == 0


@pytest.mark.parametrize(
    ("rule", "statuses", "replayed"),
    [
        ("first_wins", ["applied", "duplicate", "duplicate"], 1.0),
        ("sum", ["applied", "summed", "summed"], 1.75),
    ],
)
def test_repeated_rewards_follow_the_rule_and_apply_once(
    rule: str,
    statuses: list[str],
    replayed: float,
    model_path: Path,
    tmp_path: Path,
    rng: np.random.Generator,
) -> None:
    settings = service_settings(tmp_path, model_path=model_path, duplicate_rule=rule)
    with running_client(settings) as client:
        event = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
        got = [
            client.post("/v1/rewards", json={"event_id": event, "reward": r}).json()
            for r in (1.0, 0.5, 0.25)
        ]
        assert [g["status"] for g in got] == statuses
        assert client.get("/v1/model").json()["production"]["head"]["observations"] == 51.0
        service = client.app.state.service
        from datetime import UTC, datetime, timedelta

        frame = read_replay(
            service.engine,
            datetime(2000, 1, 1, tzinfo=UTC),
            datetime.now(UTC) + timedelta(days=1),
            reward_window=timedelta(seconds=1),
            duplicate_rule=rule,  # type: ignore[arg-type]
            as_of=datetime.now(UTC) + timedelta(days=2),
        )
        assert frame["reward"].tolist() == [replayed]


def test_late_reward_is_stored_not_applied(
    model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    """The window is judged on the receive time: a reward received after it is late even
    when its timestamp (an old reward replayed with its original time) says otherwise."""
    from datetime import UTC, datetime

    settings = service_settings(tmp_path, model_path=model_path, reward_window_s=0.5)
    with running_client(settings) as client:
        stamp = datetime.now(UTC).isoformat()
        event = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
        time.sleep(0.8)
        got = client.post(
            "/v1/rewards", json={"event_id": event, "reward": 1.0, "timestamp": stamp}
        )
        assert got.json()["status"] == "late" and got.json()["applied"] is False
        assert client.get("/v1/model").json()["production"]["applied_rewards"] == 0


def test_a_late_repeat_under_the_sum_rule_is_late_and_not_replayed(
    model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    """Under the sum rule a repeat received after the window is ``late``, not ``summed``,
    and the retrain's replay leaves it (and any reward received late, whatever its
    timestamp says) out of the decision's reward, as the service did."""
    from datetime import UTC, datetime, timedelta

    window = timedelta(seconds=0.5)
    settings = service_settings(
        tmp_path, model_path=model_path, reward_window_s=0.5, duplicate_rule="sum"
    )
    with running_client(settings) as client:
        stamp = datetime.now(UTC).isoformat()
        event = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
        first = client.post("/v1/rewards", json={"event_id": event, "reward": 0.25}).json()
        time.sleep(0.8)
        again = client.post(
            "/v1/rewards", json={"event_id": event, "reward": 1.0, "timestamp": stamp}
        ).json()
        assert (first["status"], again["status"]) == ("applied", "late")
        frame = read_replay(
            client.app.state.service.engine,
            datetime(2000, 1, 1, tzinfo=UTC),
            datetime.now(UTC) + timedelta(days=1),
            reward_window=window,
            duplicate_rule="sum",
            as_of=datetime.now(UTC) + timedelta(days=2),
        )
        assert frame["reward"].tolist() == [0.25] and frame["n_rewards"].tolist() == [1]


def test_ops_endpoints(model_path: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    with running_client(service_settings(tmp_path, model_path=model_path)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        # the latency buckets reach past the service's store deadline
        deadline = client.app.state.service.settings.store_deadline_s
        assert f'le="{deadline * 2:.1f}"' in client.get("/metrics").text
        assert client.get("/readyz").json() == {"status": "ready", "fallback_active": False}
        decision = client.post("/v1/decisions", json=decision_body(rng)).json()
        client.post("/v1/rewards", json={"event_id": decision["event_id"], "reward": 1.0})
        text = client.get("/metrics").text
        version = decision["model_version"]
        assert (
            f'banditops_model_info{{policy="shared_linucb",role="production",'
            f'version="{version}"}} 1.0'
        ) in text
        assert "banditops_fallback_active 0.0" in text
        # an arm gets a label of its own once a reward of it was applied (a client with the
        # token named it): anonymous junk ids took every label (security helper, stop 55)
        assert (
            'banditops_decisions_total{arm="other",fallback="false",traffic="production"} 1.0'
        ) in text
        arm = decision["arm_id"]
        for _ in range(40):
            again = client.post("/v1/decisions", json=decision_body(rng)).json()
            if again["arm_id"] == arm:
                break
        else:
            pytest.fail("the rewarded arm was never chosen again")
        assert (
            f'banditops_decisions_total{{arm="{arm}",fallback="false",traffic="production"}} 1.0'
        ) in client.get("/metrics").text
        assert 'banditops_rewards_total{status="applied"} 1.0' in text
        assert (
            'banditops_requests_total{endpoint="/v1/decisions",method="POST",status="200"}' in text
        )
        assert "banditops_request_latency_seconds_bucket" in text
        for i in range(5):  # made-up methods share one label value (h11 passes any token)
            client.request(f"ZZZ{i}", "/v1/model")
        text = client.get("/metrics").text
        assert "ZZZ" not in text
        assert (
            'banditops_requests_total{endpoint="/v1/model",method="other",status="405"} 5.0' in text
        )
        assert "banditops_store_batch_size_count" in text
        for item in ("shoe", "boot", "hat"):  # one label per route, whatever the item
            client.get(f"/v1/items/{item}")
        text = client.get("/metrics").text
        assert (
            'banditops_requests_total{endpoint="/v1/items/{item_id}",method="GET",status="404"} '
            "3.0" in text
        )
        info = client.get("/v1/model").json()
        assert info["production"]["policy"] == "shared_linucb"
        assert info["production"]["head"]["dim"] == 7
        spec = client.get("/openapi.json").json()
        assert {
            "/v1/decisions",
            "/v1/rewards",
            "/v1/model",
            "/healthz",
            "/readyz",
            "/metrics",
        } <= set(spec["paths"])
        assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_fallback_when_there_is_no_model(tmp_path: Path, rng: np.random.Generator) -> None:
    settings = service_settings(tmp_path, model_path=tmp_path / "missing.npz")
    with running_client(settings) as client:
        assert client.get("/readyz").json() == {"status": "ready", "fallback_active": True}
        got = client.post("/v1/decisions", json=decision_body(rng, n=4)).json()
        assert got["fallback"] is True and got["model_version"] is None
        assert got["policy"] == "fallback:uniform" and got["propensity"] == 0.25
        reward = client.post("/v1/rewards", json={"event_id": got["event_id"], "reward": 1.0})
        assert reward.json()["status"] == "fallback"
        assert "banditops_fallback_active 1.0" in client.get("/metrics").text


def test_the_fallback_takes_the_pinned_widths_only(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """With ``model_dim_user`` / ``model_dim_arm`` set, the fallback refuses what no model
    of those widths could learn (it logged any width: 1 % of such rows failed the first
    retrain's data validation)."""
    settings = service_settings(
        tmp_path,
        model_path=tmp_path / "missing.npz",
        model_dim_user=DIM_USER,
        model_dim_arm=DIM_ARM,
    )
    with running_client(settings) as client:
        assert client.post("/v1/decisions", json=decision_body(rng)).status_code == 200
        narrow = {**decision_body(rng), "context": [1.0, 2.0]}
        got = client.post("/v1/decisions", json=narrow)
        assert got.status_code == 422 and "context must have 4 features" in got.text
        wide = decision_body(rng)
        wide["candidates"][0]["features"] = [0.0] * (DIM_ARM + 2)
        assert client.post("/v1/decisions", json=wide).status_code == 422
        grouped = {
            "context": narrow["context"],
            "groups": [{"id": "g", "variants": wide["candidates"]}],
        }
        assert client.post("/v1/decisions/grouped", json=grouped).status_code == 422


def test_epsilon_greedy_fallback_reports_exact_propensities(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    settings = service_settings(tmp_path, fallback_policy="epsilon_greedy", fallback_epsilon=0.2)
    with running_client(settings) as client:
        seen = {}
        for _ in range(30):
            got = client.post("/v1/decisions", json=decision_body(rng, n=5)).json()
            seen[got["arm_id"]] = got["propensity"]
        assert seen.pop("item-0") == pytest.approx(0.8 + 0.2 / 5)
        assert all(p == pytest.approx(0.2 / 5) for p in seen.values())


def test_a_model_that_errors_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    """A corrupt head (negative observation count) made Thompson sampling raise at the
    probe decision before the swap; it is refused when the state is read now, naming the
    array, and the fallback keeps serving."""
    from bandit_core import load_state, save_state

    path = policy_file(tmp_path / "lints.npz", name="lints", warm=5)
    state = load_state(path)
    state.arrays["head.count"] = -100.0 * np.ones_like(state.arrays["head.count"])
    save_state(state, path)
    with running_client(service_settings(tmp_path, model_path=path)) as client:
        got = client.post("/v1/decisions", json=decision_body(rng)).json()
        assert got["fallback"] is True and got["policy"] == "fallback:uniform"
        assert got["traffic"] == "production"
        text = client.get("/metrics").text
        assert 'banditops_model_load_failures_total{reason="admission"} 1.0' in text
        assert (
            "state array 'head.count' must not be negative"
            in client.get("/v1/model").json()["last_load_error"]
        )


@pytest.mark.parametrize("name", ["neural_linear", "logistic_ts", "linucb"])
def test_a_model_without_arm_features_decides_candidates_that_carry_some(
    tmp_path: Path, rng: np.random.Generator, name: str
) -> None:
    """The service drops the features a model does not read (``dim_arm`` 0 accepts any
    width). Only per-arm linear models were told apart: a neural-linear or logistic model
    raised on every such request, logged a traceback, and the fallback decided."""
    opts = (
        {"hidden": (8,), "retrain_every": 1000, "device": "cpu"} if name == "neural_linear" else {}
    )
    path = policy_file(tmp_path / "policy.npz", name=name, **opts)
    with running_client(service_settings(tmp_path, model_path=path)) as client:
        for _ in range(5):
            got = client.post("/v1/decisions", json=decision_body(rng)).json()
            assert got["fallback"] is False and got["policy"] == name, got
            reward = client.post("/v1/rewards", json={"event_id": got["event_id"], "reward": 1.0})
            assert reward.json()["status"] == "applied", reward.text
        assert "banditops_model_errors_total 0.0" in client.get("/metrics").text


def test_slate(model_path: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    with running_client(service_settings(tmp_path, model_path=model_path)) as client:
        got = client.post("/v1/decisions", json={**decision_body(rng, n=6), "k": 4}).json()
        ranking = got["ranking"]
        assert len(ranking) == len(set(ranking)) == 4 and ranking[0] == got["arm_id"]
        assert len(got["slate_propensities"]) == 4
        assert got["slate_propensities"][0] == got["propensity"]
        assert all(0.0 < p <= 1.0 for p in got["slate_propensities"])


def test_named_context(model_path: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    names = ["age", "tenure", "visits", "spend"]
    settings = service_settings(tmp_path, model_path=model_path, context_features=names)
    with running_client(settings) as client:
        body = decision_body(rng)
        named = dict(zip(reversed(names), reversed(body["context"]), strict=True))
        got = client.post("/v1/decisions", json={**body, "context": named})
        assert got.status_code == 200
        row = client.app.state.service.store.find_decision(got.json()["event_id"])
        np.testing.assert_array_equal(row.context, body["context"])


def test_named_contexts_refuse_a_model_of_another_width(
    model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    """Six named features and a model of four: the model was served and every named
    context was a 422; it is refused (the fallback serves, named contexts decide), and
    settings naming another width than ``model_dim_user`` are refused by name."""
    from pydantic import ValidationError

    from serving.settings import Settings

    names = ["age", "tenure", "visits", "spend", "region", "device"]
    settings = service_settings(tmp_path, model_path=model_path, context_features=names)
    with running_client(settings) as client:
        info = client.get("/v1/model").json()
        assert info["production"] is None and "serves dim_user = 6" in info["last_load_error"]
        named = {n: float(v) for n, v in zip(names, rng.standard_normal(6), strict=True)}
        got = client.post("/v1/decisions", json={**decision_body(rng), "context": named})
        assert got.status_code == 200 and got.json()["fallback"] is True, got.text
    with pytest.raises(ValidationError, match="names 6 features, but model_dim_user is 4"):
        Settings(context_features=names, model_dim_user=4, _env_file=None)


def test_restart_recovers_the_head(
    store_url: str, model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    """Graceful restarts: a snapshot every 3 rewards (and at each stop), the rest replayed
    from the store."""
    settings = service_settings(
        tmp_path, store_url, model_path=model_path, snapshot_every_rewards=3
    )
    before: Any = None
    for _ in range(2):
        with running_client(settings) as client:
            for _ in range(7):
                event = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
                client.post("/v1/rewards", json={"event_id": event, "reward": 1.0})
            before = served_policy(client)
    with running_client(settings) as client:
        after = served_policy(client)
        info = client.get("/v1/model").json()["production"]
        store = client.app.state.service.store
        rebuilt = rebuild_from_store(store, info["version"], load_policy(model_path))
        served = client.app.state.service.loader.current.production
        newest = store.latest_snapshot(info["version"])
    assert info["applied_rewards"] == 14
    # the newest snapshots are kept (snapshot_keep), and the restart started from one
    assert store.count_rows()["head_snapshots"] == settings.snapshot_keep == 2
    assert newest is not None and served.replayed_after == newest.last_reward_id > 0
    assert head_difference(after, before) < 1e-9
    assert head_difference(after, rebuilt) < 1e-9


def test_reward_for_a_decision_not_in_memory_reads_the_store(
    store_url: str, model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    settings = service_settings(tmp_path, store_url, model_path=model_path, decision_cache_size=0)
    reference = load_policy(model_path)
    with running_client(settings) as client:
        body = decision_body(rng)
        decision = client.post("/v1/decisions", json=body).json()
        got = client.post("/v1/rewards", json={"event_id": decision["event_id"], "reward": 1.0})
        assert got.json()["status"] == "applied"
        arm = [c["id"] for c in body["candidates"]].index(decision["arm_id"])
        reference.update(
            body["context"], decision["arm_id"], 1.0, body["candidates"][arm]["features"]
        )
        assert head_difference(served_policy(client), reference) < 1e-12


def test_heads_are_snapshotted_every_t_seconds(
    model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    import time

    settings = service_settings(
        tmp_path, model_path=model_path, snapshot_every_rewards=10_000, snapshot_every_s=0.2
    )
    with running_client(settings) as client:
        store = client.app.state.service.store
        event = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
        client.post("/v1/rewards", json={"event_id": event, "reward": 1.0})
        deadline = time.monotonic() + 10
        while store.count_rows()["head_snapshots"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        snapshot = store.latest_snapshot(client.get("/v1/model").json()["production"]["version"])
    assert snapshot is not None and snapshot.applied_rewards == 1


def test_a_huge_key_is_named_in_a_422_not_echoed_whole(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """The error names the field; a 100 KB key of a named context came back whole in its
    ``loc`` and ``msg``."""
    settings = service_settings(tmp_path, context_features=["a", "b", "c", "d"])
    with running_client(settings) as client:
        body = decision_body(rng)
        body["context"] = {"k" * 100_000: 1.0, "a": 0.0, "b": 0.0, "c": 0.0}
        got = client.post("/v1/decisions", json=body)
        assert got.status_code == 422 and len(got.content) < 5_000, len(got.content)
        assert got.json()["detail"][0]["loc"][:2] == ["body", "context"]


def test_a_body_of_many_bad_elements_is_refused_for_its_first_or_its_length(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A 1 MiB body of 250,000 bad elements (anonymous) made one pydantic error each:
    3–11 s of the event loop, every other request waiting, and a 28–77 MB 422 (audit,
    stop 55). Lists too long are refused for their length before validation, a list
    stops at its first bad element, and a 422 lists at most 20 errors."""
    settings = service_settings(tmp_path, context_features=[f"f{i}" for i in range(600)])
    named = {f"f{i}": 0.0 for i in range(600)}
    good = {"id": "a", "features": [0.0, 0.0, 0.0]}
    bodies: list[tuple[str, dict[str, Any], list[Any], str]] = [
        (
            "/v1/decisions",
            {"context": ["x"] * 150_000, "candidates": [good]},
            ["body", "context"],
            "at most 1024 features (max_context_features); got 150000",
        ),
        (
            "/v1/decisions",
            {"context": {f"k{i}": None for i in range(50_000)}, "candidates": [good]},
            ["body", "context"],
            "got 50000",
        ),
        (
            "/v1/decisions",
            {"context": named, "candidates": [good] * 20_000},
            ["body", "candidates"],
            "at most 1000 candidates are allowed; got 20000",
        ),
        (
            "/v1/decisions",
            {
                "context": named,
                "candidates": [{"id": f"a{i}", "features": [0.0] * 2000} for i in range(10)],
            },
            ["body", "candidates", 0, "features"],
            "max_arm_features",
        ),
        (
            "/v1/decisions",
            {"context": named, "candidates": [{"id": "a", "features": ["x"] * 500}] * 300},
            ["body", "candidates", 0, "features", 0],
            "valid number",
        ),
        (
            "/v1/decisions/grouped",
            {"context": named, "groups": [{"id": "g", "variants": [good]}] * 5000},
            ["body", "groups"],
            "at most 100 groups are allowed; got 5000",
        ),
        (
            "/v1/decisions/grouped",
            {
                "context": named,
                "groups": [{"id": "g", "variants": [{"id": "a", "features": ["x"] * 100}] * 100}]
                * 10,
            },
            ["body", "groups", 0, "variants", 0, "features", 0],
            "valid number",
        ),
    ]
    with running_client(settings) as client:
        for path, body, loc, message in bodies:
            got = client.post(path, json=body)
            assert got.status_code == 422 and len(got.content) < 5_000, (loc, len(got.content))
            first, *_ = got.json()["detail"]
            assert len(got.json()["detail"]) == 1, (loc, got.json()["detail"])
            assert first["loc"] == loc and message in first["msg"], first
        # errors of distinct fields: the first 20, and how many more
        bad = dict.fromkeys(named, "x")
        got = client.post("/v1/decisions", json={"context": bad, "candidates": [good]})
        detail = got.json()["detail"]
        assert got.status_code == 422 and len(detail) == 21, len(detail)
        assert detail[0]["loc"] == ["body", "context", "named", "f0"]
        assert detail[-1] == {"type": "too_many_errors", "loc": ["body"], "msg": "and 580 more."}


def test_a_version_no_longer_served_leaves_no_series_behind() -> None:
    """``banditops_model_info`` kept a 0 series for every version ever served: a new
    version each night left a year's series in every scrape."""
    from serving.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    for night in range(3):
        metrics.set_models([("production", f"m/{night}", "shared_lints")], fallback=False)
    text = metrics.render()[0].decode()
    series = [line for line in text.splitlines() if line.startswith("banditops_model_info{")]
    assert series == [
        'banditops_model_info{policy="shared_lints",role="production",version="m/2"} 1.0'
    ]
    metrics.set_models([], fallback=True)
    assert "banditops_model_info{" not in metrics.render()[0].decode()


@pytest.mark.parametrize("deadline_s", [0.3, 2.0, 10.0, 37.0])
def test_a_request_that_waited_its_store_deadline_lands_in_a_finite_bucket(
    deadline_s: float,
) -> None:
    """The latency histograms stopped at 1 s while ``store_deadline_s`` allows 10: a
    request answered 503 at its deadline counted only as "more than 1 s" (``+Inf``).
    Their buckets now reach past the deadline, and keep the low ones."""
    from prometheus_client.parser import text_string_to_metric_families

    from eventstore.contract import LATENCY
    from serving.metrics import ServiceMetrics

    metrics = ServiceMetrics(deadline_s)
    waited = deadline_s + 0.05  # the 503 is answered a little after the deadline
    metrics.latency.labels("/v1/rewards").observe(waited)
    metrics.commit_seconds.observe(waited)
    metrics.journal_fsync_seconds.observe(waited)
    families = text_string_to_metric_families(metrics.render()[0].decode())
    names = {LATENCY, "banditops_store_commit_seconds", "banditops_journal_fsync_seconds"}
    seen = set()
    for family in families:
        if family.name not in names:
            continue
        seen.add(family.name)
        bounds = {
            float(sample.labels["le"]): sample.value
            for sample in family.samples
            if sample.name.endswith("_bucket")
        }
        finite = max(b for b in bounds if b != float("inf"))
        assert finite >= deadline_s and deadline_s in bounds, (family.name, sorted(bounds))
        assert bounds[finite] == 1.0, (family.name, bounds)  # counted below +Inf
        assert bounds[deadline_s] == 0.0  # and told from a request answered in time
        assert {0.0005, 0.001, 0.005, 0.01, 0.1, 1.0} <= set(bounds), sorted(bounds)
    assert seen == names


def test_a_key_named_twice_in_a_body_is_a_422_naming_its_path(
    model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    """``{"reward": 1, "reward": 0}`` was read as 0 (the last value), and a candidate with
    two ids as its last: silently, whatever the client meant. Now a 422 naming the key's
    path, and nothing is logged or learnt."""
    json_headers = {"content-type": "application/json"}

    def refused(path: str, body: bytes) -> dict[str, Any]:
        got = client.post(path, content=body, headers=json_headers)
        assert got.status_code == 422, got.text
        (item,) = got.json()["detail"]
        assert item["type"] == "duplicate_key" and "more than once" in item["msg"], item
        return dict(item)

    with running_client(service_settings(tmp_path, model_path=model_path)) as client:
        decision = decision_body(rng)
        text = json.dumps(decision).encode()
        twice = text.replace(b'"id": "item-1"', b'"id": "item-1", "id": "item-9"')
        assert refused("/v1/decisions", twice)["loc"] == ["body", "candidates", 1, "id"]
        event = client.post("/v1/decisions", json=decision).json()["event_id"]
        body = f'{{"event_id": "{event}", "reward": 1.0, "reward": 0.0}}'.encode()
        assert refused("/v1/rewards", body)["loc"] == ["body", "reward"]
        long_key = "k" * 100_000  # named, not echoed whole
        body = f'{{"event_id": "{event}", "{long_key}": 1, "{long_key}": 2}}'.encode()
        loc = refused("/v1/rewards", body)["loc"]
        assert loc[0] == "body" and loc[1].startswith("kkk") and len(loc[1]) <= 200
        # nothing of the refused reward was applied: the event takes its first reward
        got = client.post("/v1/rewards", json={"event_id": event, "reward": 1.0})
        assert got.status_code == 200 and got.json()["status"] == "applied", got.text


def test_a_body_not_sent_as_json_is_told_to_send_json(
    model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    """``curl -d '{…}'`` without a content-type sends a form: the 422 said only "Input
    should be a valid dictionary" (README helper, stop 46). It names what was sent."""
    settings = service_settings(tmp_path, model_path=model_path)
    body = json.dumps(decision_body(rng)).encode()
    with running_client(settings) as client:
        for sent, shown in (
            ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),
            ("text/plain", "text/plain"),
        ):
            got = client.post("/v1/decisions", content=body, headers={"content-type": sent})
            assert got.status_code == 422, got.text
            (item,) = got.json()["detail"]
            assert f"(the body was sent as {shown}: send JSON with content-type" in item["msg"]
        fine = client.post(
            "/v1/decisions", content=body, headers={"content-type": "application/json"}
        )
        assert fine.status_code == 200
