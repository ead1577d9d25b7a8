"""Exactness of the request path: a recorded stream of decisions and rewards replayed
through the service gives bit-identical answers and head states.

The reference (``tests/data/serving_replay_reference.json``) was recorded from the
service before the request-path optimisations of issue 21; any change to the web layer,
the store writer or the decision path must leave it unchanged. Record it again only for
an intended change of decisions (and say so in the commit):

    python -m tests.test_serving_replay_exact --record

Bit equality of floating point is a property of the arithmetic as well as of the code:
OpenBLAS picks its kernels by CPU (``DYNAMIC_ARCH``), and its AVX-512 kernels round a
head's ``X^T y`` differently from its AVX2 ones (seen: an AMD EPYC with AVX-512 gave other
last bits than the machine that recorded the reference; with ``OPENBLAS_CORETYPE=Haswell``
it gave the reference's). The replay therefore runs in a fresh interpreter with the kernel
pinned (:data:`KERNEL`; it must be set before numpy loads), and so does ``--record``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serving_helpers import (
    AUTH,
    decision_body,
    policy_file,
    running_client,
    served_policy,
    service_settings,
)

REFERENCE = Path(__file__).resolve().parent / "data" / "serving_replay_reference.json"
#: (policy, options) of the replayed models: a deterministic one and a sampling one
#: (its draws come from the service's seeded generator, so their order matters too)
POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("shared_linucb", {"alpha": 1.0}),
    ("shared_lints", {}),
    ("epsilon_greedy", {"epsilon": 0.2}),
]
N_REQUESTS = 120
#: The OpenBLAS kernel of every replay and recording (AVX2: any x86-64 machine of the
#: last decade runs it).
KERNEL = {"OPENBLAS_CORETYPE": "Haswell"}
ROOT = Path(__file__).resolve().parents[1]


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def replay_pinned(tmp_path: Path, name: str) -> dict[str, Any]:
    """:func:`replay` of ``name`` in a fresh interpreter with the BLAS kernel pinned."""
    out = tmp_path / f"{name}.json"
    env = {**os.environ, **KERNEL, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.test_serving_replay_exact",
            "--replay",
            name,
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def request_stream(seed: int = 11) -> list[dict[str, Any]]:
    """The recorded stream: decisions (single and slates, with and without a user id)
    and, after each one's answer, a reward for some of them (a slate's at a position)."""
    rng = np.random.default_rng(seed)
    stream: list[dict[str, Any]] = []
    for i in range(N_REQUESTS):
        body = decision_body(rng, n=int(rng.integers(2, 8)), user=f"u{i % 7}" if i % 3 else None)
        if i % 5 == 4:
            body["k"] = 2
        reward = None
        if rng.random() < 0.7:
            reward = {"reward": float(rng.random() < 0.4)}
            if "k" in body and rng.random() < 0.5:
                reward["position"] = 1
        stream.append({"decision": body, "reward": reward})
    return stream


def _answer_fields(answer: dict[str, Any]) -> dict[str, Any]:
    """The decision's content (its event id is a fresh random id each run)."""
    return {key: value for key, value in answer.items() if key != "event_id"}


def _head_digest(policy: Any) -> dict[str, str]:
    """sha256 of every array of the policy's state (dtype, shape and bytes)."""
    out = {}
    for key, value in sorted(policy.to_state().arrays.items()):
        arr = np.ascontiguousarray(value)
        digest = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode() + arr.tobytes())
        out[key] = digest.hexdigest()
    return out


def replay(tmp_path: Path, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Send the stream, one request at a time, to a fresh service serving ``name``."""
    model = policy_file(tmp_path / f"{name}.npz", name=name, seed=3, **options)
    # the salt the reference was recorded with (the stored user hashes depend on it)
    # a deadline no loaded machine misses (the decision thread runs at nice 19: beside a
    # busy CI a decision past the default 0.25 s fell back, and the stream differed)
    settings = service_settings(
        tmp_path,
        model_path=model,
        snapshot_every_rewards=25,
        user_salt="test-salt",
        decision_deadline_s=30.0,
    )
    answers: list[dict[str, Any]] = []
    rewards: list[dict[str, Any]] = []
    with running_client(settings) as client:
        for step in request_stream():
            res = client.post("/v1/decisions", json=step["decision"])
            assert res.status_code == 200, res.text
            answer = res.json()
            answers.append(_answer_fields(answer))
            if step["reward"] is not None:
                body = {"event_id": answer["event_id"], **step["reward"]}
                got = client.post("/v1/rewards", json=body, headers=AUTH)
                assert got.status_code == 200, got.text
                rewards.append({k: v for k, v in got.json().items() if k != "event_id"})
        head = _head_digest(served_policy(client))
    return {"answers": answers, "rewards": rewards, "head": head, "stored": _stored(settings)}


#: the columns of a stored decision that do not change from run to run
_STORED = [
    "user_hash",
    "context",
    "candidate_ids",
    "candidate_features",
    "chosen",
    "arm_id",
    "propensity",
    "probabilities",
    "scores",
    "ranking",
    "slate_propensities",
    "policy",
    "model_version",
    "traffic",
    "fallback",
    "explored",
    "position_propensities",
]


def _stored(settings: Any) -> str:
    """sha256 of every stored decision's content (in commit order) and of the rewards'
    values, ordinals and verdicts."""
    import sqlalchemy as sa

    from eventstore.engine import make_engine
    from eventstore.schema import decisions, rewards

    engine = make_engine(settings.store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(*(decisions.c[c] for c in _STORED)).order_by(decisions.c.id)
            ).all()
            got = conn.execute(
                sa.select(rewards.c.value, rewards.c.ordinal, rewards.c.applied).order_by(
                    rewards.c.id
                )
            ).all()
    finally:
        engine.dispose()
    digest = hashlib.sha256()
    for row in [*rows, *got]:
        digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def record(out: Path = REFERENCE) -> None:
    import tempfile

    result = {}
    for name, _ in POLICIES:
        with tempfile.TemporaryDirectory() as tmp:
            result[name] = replay_pinned(Path(tmp), name)
    out.parent.mkdir(parents=True, exist_ok=True)
    # floats are written with repr (shortest round-trip), so equality is bit equality
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not _has_avx2(),
    reason="the reference was recorded with OpenBLAS's AVX2 (Haswell) kernels, which this "
    "CPU does not run; its own kernels round differently in the last bits",
)
@pytest.mark.parametrize("name", [name for name, _ in POLICIES])
def test_replayed_stream_is_bit_identical(tmp_path: Path, name: str) -> None:
    reference = json.loads(REFERENCE.read_text())[name]
    got = replay_pinned(tmp_path, name)
    assert len(got["answers"]) == len(reference["answers"]) == N_REQUESTS
    for i, (mine, ref) in enumerate(zip(got["answers"], reference["answers"], strict=True)):
        assert mine == ref, f"decision {i} differs"
    assert got["rewards"] == reference["rewards"]
    assert got["head"] == reference["head"]
    assert got["stored"] == reference["stored"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Record the replay reference.")
    parser.add_argument("--record", action="store_true", help="Record the reference.")
    parser.add_argument("--replay", choices=[name for name, _ in POLICIES])
    parser.add_argument("--out", type=Path, help="Where --replay writes its result.")
    args = parser.parse_args()
    if args.replay:
        if os.environ.get("OPENBLAS_CORETYPE") != KERNEL["OPENBLAS_CORETYPE"]:
            sys.exit(f"--replay needs the pinned kernel in the environment: {KERNEL}")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            got = replay(Path(tmp), args.replay, dict(POLICIES)[args.replay])
        args.out.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    elif args.record:
        record()
