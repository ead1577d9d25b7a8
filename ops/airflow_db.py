"""Connection arguments of the embedded Airflow's SQLite metadata database.

``airflow.cfg``'s ``[database] sql_alchemy_connect_args`` (and ``…_async``) name this
module's ``CONNECT_ARGS`` (an import path: Airflow imports it in every process, so this
module imports nothing). SQLite lets one writer in at a time; the scheduler, the DAG
processor, the triggerer, the API server and the task processes all write, and a writer
that finds the database locked waits at most ``timeout`` seconds (Python's default: 5)
before its transaction fails. On a busy two-core machine a trigger from the UI failed
that way (``POST /api/v2/dags/bandit_monitor/dagRuns`` answered 500 "Database error"
while the scheduler was writing a run), so the embedded home waits longer. Only the
embedded home's ``airflow.cfg`` names it: ``sqlite3``'s ``timeout`` is not a PostgreSQL
connection option (psycopg2 refuses it), so a home on PostgreSQL must not.
"""

#: ``sqlite3.connect`` keyword arguments: wait up to a minute for a lock.
CONNECT_ARGS = {"timeout": 60.0}
