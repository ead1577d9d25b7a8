"""The request path's writes to the event store (:mod:`eventstore`).

Request-path writes go through a group-commit writer (:mod:`serving.store.writer`); a
request is answered only after the transaction holding its event has committed. While the
store is unreachable the local journal (:mod:`serving.store.journal`) holds them.
"""

from serving.store.writer import GroupCommitWriter, WriterClosedError

__all__ = ["GroupCommitWriter", "WriterClosedError"]
