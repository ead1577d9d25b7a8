"""The retry policy of the DAGs' tasks, in one place: bad data or bad input fails a task at
once; anything else (a store or registry that does not answer) is retried."""

from __future__ import annotations

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

NO_RETRY_ON_BAD_INPUT = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=[ValueError, TypeError, OverflowError],
            action=RetryAction.FAIL,
            reason="bad data or bad input: another try cannot succeed",
        )
    ]
)
