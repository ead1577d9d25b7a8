"""The framework's floor for :mod:`benchmarks.serving_load`: what FastAPI/uvicorn (and the
event store's durable group commit) cost on this machine with no bandit behind them.

    python -m benchmarks.serving_floor --mode parse|commit --port PORT [--log-level warning]

Two bare apps, run by uvicorn with the service's own uvicorn settings
(:func:`serving.commands.uvicorn_limits`, settings from ``BANDITOPS_*``):

* ``parse``: ``POST /v1/decisions`` parses the service's :class:`DecisionRequest` (the same
  FastAPI body parameter) and answers a fixed decision (the first candidate, a fresh event
  id); ``POST /v1/rewards`` parses :class:`RewardRequest` and answers ``stored``.
* ``commit``: the same, plus the service's durable group-commit write of the event before
  the answer: one decision row (the request's context and candidates, the first one chosen
  with a uniform propensity) or one reward row, through
  :class:`serving.store.writer.GroupCommitWriter` and
  :func:`serving.store.repository.write_events` on the same store settings
  (``BANDITOPS_DATABASE_URL``, ``BANDITOPS_SQLITE_SYNCHRONOUS``) and the same engine and
  SQLite checkpoint thread (:mod:`serving.store.engine`). The store is migrated at
  start-up (as ``banditops serve`` does).

Both answer ``GET /readyz`` (200) so the load generator treats them like the service.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import FastAPI, Request

from serving.schemas import DecisionRequest, RewardRequest

MODES = ("parse", "commit")


def _decision_row(body: DecisionRequest, event_id: str) -> Any:
    from eventstore.records import DecisionRow

    candidates = body.candidates or []
    n = len(candidates)
    probs = np.full(n, 1.0 / n)
    context = body.context
    return DecisionRow(
        event_id=event_id,
        created_at=datetime.now(UTC),
        user_hash=None,
        context=np.asarray(
            list(context.values()) if isinstance(context, dict) else context, dtype=np.float64
        ),
        candidate_ids=tuple(c.id for c in candidates),
        candidate_features=np.asarray([c.features for c in candidates], dtype=np.float64),
        chosen=0,
        propensity=float(probs[0]),
        probabilities=probs,
        scores=np.zeros(n),
        policy="floor",
        model_version=None,
        traffic="production",
        fallback=True,
        explored=False,
    )


def _reward_row(body: RewardRequest) -> Any:
    from eventstore import records
    from eventstore.records import RewardRow

    now = datetime.now(UTC)
    return RewardRow(
        event_id=body.event_id,
        value=body.reward,
        ts=now,
        received_at=now,
        model_version=None,
        eligible=False,
        ineligible_status=records.FALLBACK,
    )


def create_floor_app(mode: str, settings: Any = None) -> FastAPI:
    """The floor app of ``mode`` (``parse`` or ``commit``); ``settings``: the service's
    :class:`serving.settings.Settings` (store URL and durability), needed for ``commit``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
    writer: Any = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal writer
        if mode != "commit":
            yield
            return
        from eventstore.migrate import upgrade
        from serving.store.engine import checkpointer, store_engine
        from serving.store.repository import write_events
        from serving.store.writer import GroupCommitWriter

        engine = store_engine(settings)
        upgrade(engine)
        checkpoints = checkpointer(engine, settings)
        if checkpoints is not None:
            checkpoints.start()
        writer = GroupCommitWriter(
            engine, write_events, max_batch=settings.writer_max_batch
        ).start()
        try:
            yield
        finally:
            await asyncio.to_thread(writer.close)
            if checkpoints is not None:
                await asyncio.to_thread(checkpoints.stop)
            engine.dispose()

    app = FastAPI(title=f"banditops floor ({mode})", lifespan=lifespan)

    async def commit(row: Any) -> Any:
        return await asyncio.wrap_future(writer.submit(row))

    @app.post("/v1/decisions")
    async def decide(body: DecisionRequest, request: Request) -> dict[str, Any]:
        event_id = uuid.uuid4().hex
        arm = body.candidates[0].id if body.candidates else ""
        if writer is not None:
            await commit(_decision_row(body, event_id))
        return {"event_id": event_id, "arm_id": arm, "propensity": 1.0}

    @app.post("/v1/rewards")
    async def reward(body: RewardRequest, request: Request) -> dict[str, Any]:
        status = "stored"
        if writer is not None:
            status = (await commit(_reward_row(body))).status
        return {"event_id": body.event_id, "status": status}

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from serving.commands import uvicorn_limits
    from serving.http_protocol import configure
    from serving.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    settings = Settings()
    configure(settings)  # the head limits of banditops' own app
    uvicorn.run(
        create_floor_app(args.mode, settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        **uvicorn_limits(settings),
    )


if __name__ == "__main__":
    main()
