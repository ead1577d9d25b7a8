"""The event store: decisions, rewards and head snapshots (SQLAlchemy 2 + Alembic).

SQLite (WAL) by default, PostgreSQL by URL. The schema (:mod:`eventstore.schema`) is the
one definition of the columns; the records, the migrations and the replay reads follow
it. Serving writes through this package, training and monitoring read through it, and
:mod:`eventstore.contract` is the artifact layout between training and serving.
"""

from eventstore import records
from eventstore.engine import make_engine
from eventstore.migrate import current_revision, head_revision, upgrade
from eventstore.records import DecisionRow, RewardOutcome, RewardRow, SnapshotRow

__all__ = [
    "DecisionRow",
    "RewardOutcome",
    "RewardRow",
    "SnapshotRow",
    "current_revision",
    "head_revision",
    "make_engine",
    "records",
    "upgrade",
]
