"""The event store: decisions, rewards and head snapshots (SQLAlchemy 2 + Alembic).

SQLite (WAL) by default, PostgreSQL by URL. Request-path writes go through a
group-commit writer (:mod:`serving.store.writer`); a request is answered only after the
transaction holding its event has committed.
"""

from serving.store.engine import make_engine
from serving.store.migrate import current_revision, head_revision, upgrade
from serving.store.records import DecisionRow, RewardOutcome, RewardRow, SnapshotRow
from serving.store.writer import GroupCommitWriter, WriterClosedError

__all__ = [
    "DecisionRow",
    "GroupCommitWriter",
    "RewardOutcome",
    "RewardRow",
    "SnapshotRow",
    "WriterClosedError",
    "current_revision",
    "head_revision",
    "make_engine",
    "upgrade",
]
