"""The event columns are defined once, in the ORM (:mod:`eventstore.schema`): the record
parameters, the replay columns and the GX suite's store columns follow it, and a column
the records cannot fill is refused at import."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import JSON, Integer, LargeBinary, MetaData, String, Table
from sqlalchemy.schema import Column

from eventstore import records, replay
from eventstore.schema import (
    NAMING,
    REPLAY,
    SHAPE,
    decisions,
    metadata,
    record_columns,
    replay_columns,
    rewards,
    shape_columns,
)
from validation.expectations import STORE_COLUMNS


def copy_of(name: str) -> Table:
    """A copy of table ``name`` in a fresh copy of the metadata (free to change)."""
    md = MetaData(naming_convention=NAMING)
    for table in metadata.sorted_tables:
        table.to_metadata(md)
    return md.tables[name]


def sample_decision() -> records.DecisionRow:
    rng = np.random.default_rng(7)
    return records.DecisionRow(
        event_id="e-1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        user_hash="u",
        context=rng.standard_normal(3),
        candidate_ids=("a", "b"),
        candidate_features=rng.standard_normal((2, 4)),
        chosen=1,
        propensity=0.5,
        probabilities=np.array([0.5, 0.5]),
        scores=np.array([0.1, 0.2]),
        policy="uniform",
        model_version="v1",
        traffic="production",
        fallback=False,
        explored=True,
        ranking=(1, 0),
        slate_propensities=(0.5, 0.5),
    )


def test_a_decision_fills_every_column_of_the_table() -> None:
    row = sample_decision()
    params = row.params()
    assert sorted(params) == sorted(record_columns(decisions))
    assert "id" not in params
    # shape columns come from the arrays, arrays are bytes, tuples become JSON lists
    assert (params["dim_user"], params["n_candidates"], params["dim_arm"]) == (3, 2, 4)
    assert params["context"] == row.context.tobytes()
    assert params["candidate_ids"] == ["a", "b"] and params["ranking"] == [1, 0]
    assert params["arm_id"] == "b" and params["position_propensities"] is None


def test_the_replay_carries_the_stored_columns_then_the_computed_ones() -> None:
    assert replay.STORED + tuple(replay.COMPUTED) == replay.COLUMNS
    assert not set(replay.STORED) & set(replay.COMPUTED)
    assert set(replay.STORED) <= set(record_columns(decisions))
    left_out = set(record_columns(decisions)) - set(replay.STORED)
    assert left_out == set(shape_columns(decisions)) | {
        c.name for c in decisions.columns if c.info.get(REPLAY) is False
    }
    assert {"dim_user", "n_candidates", "dim_arm"} <= left_out


def test_the_suites_store_columns_are_replay_columns() -> None:
    assert set(STORE_COLUMNS.required()) <= set(replay.COLUMNS)
    assert STORE_COLUMNS.timestamp == decisions.c.created_at.name


def test_a_new_column_reaches_the_replay_and_needs_a_record_field() -> None:
    table = copy_of("decisions")
    table.append_column(Column("ab_bucket", String(16)))
    assert replay_columns(table) == (*replay_columns(decisions), "ab_bucket")
    assert record_columns(table)[-1] == "ab_bucket"
    with pytest.raises(ValueError, match=r"DecisionRow; missing \['ab_bucket'\]"):
        records.decision_columns(table)


def test_a_column_marked_out_of_the_replay_stays_out() -> None:
    table = copy_of("decisions")
    table.append_column(Column("note", String(16), info={REPLAY: False}))
    assert replay_columns(table) == replay_columns(decisions)


def test_a_new_float_array_brings_its_shape_columns() -> None:
    table = copy_of("decisions")
    table.append_column(Column("dim_extra", Integer))
    table.append_column(Column("extra", LargeBinary, info={SHAPE: ("dim_extra",)}))
    assert shape_columns(table)["dim_extra"] == ("extra", 0)
    assert replay_columns(table) == (*replay_columns(decisions), "extra")
    table.append_column(Column("broken", LargeBinary, info={SHAPE: ("dim_nowhere",)}))
    with pytest.raises(ValueError, match="dim_nowhere"):
        shape_columns(table)


def test_a_record_field_without_a_column_is_refused() -> None:
    kept = [c for c in decisions.columns if c.name != "retrieval"]
    table = Table(
        "decisions",
        MetaData(),
        *(Column(c.name, c.type, primary_key=c.primary_key, info=dict(c.info)) for c in kept),
    )
    with pytest.raises(ValueError, match=r"or in NOT_STORED; got \['retrieval'\]"):
        records.decision_columns(table)
    assert {f.name for f in dataclasses.fields(records.DecisionRow)} >= records.NOT_STORED


def test_reward_and_snapshot_rows_follow_their_tables() -> None:
    reward = records.RewardRow("e-1", 1.0, datetime.now(UTC), datetime.now(UTC), "v1", True)
    judged = records.JudgedReward(reward, 0, True, records.APPLIED)
    assert tuple(judged.params()) == record_columns(rewards)
    assert records.reward_sources(rewards)["value"] == "row.value"
    assert judged.params()["status"] == records.APPLIED
    assert judged.params()["value"] == 1.0
    table = copy_of("rewards")
    table.append_column(Column("channel", JSON))
    with pytest.raises(ValueError, match=r"missing \['channel'\]"):
        records.reward_sources(table)
