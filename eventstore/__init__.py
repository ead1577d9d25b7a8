"""The event store: decisions, rewards and head snapshots (SQLAlchemy 2 + Alembic).

SQLite (WAL) by default, PostgreSQL by URL. The schema (:mod:`eventstore.schema`) is the
one definition of the columns; the records, the migrations and the replay reads follow
it. Serving writes through this package, training and monitoring read through it, and
:mod:`eventstore.contract` is the artifact layout between training and serving. Import
the modules (``eventstore.engine``, ``eventstore.migrate``, …): this file imports nothing,
so the settings and workspace helpers stay cheap for the DAG files to parse.
"""
