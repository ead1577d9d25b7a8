"""The contract between training (which registers models) and serving (which loads them).

A registered MLflow model version is servable when its model directory — what
``MlflowClient.get_model_version_download_uri(name, version)`` points to — contains

    artifacts/policy_state.npz

a policy state written by :func:`bandit_core.save_policy` (arrays + JSON header, loaded
with ``allow_pickle=False``). That is exactly where
``mlflow.pyfunc.log_model(name=..., python_model=..., artifacts={"policy_state":
"<dir>/policy_state.npz"})`` puts it; serving never loads the pyfunc wrapper (no pickle),
only that file. The service reads ``models:/<name>@<alias>`` (``production``, and the
rollout candidate's alias) and calls the version ``<name>/<version>`` in its decisions,
rewards and snapshots.

Also here: the names the two sides share beyond the model files — the traffic arms,
the registry version tags, and the service's metrics the monitor reads back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal, get_args

#: The traffic arms a decision is served by (the ``traffic`` column of ``decisions``),
#: and the roles of the versions the service holds: production and a rollout's candidate.
Traffic = Literal["production", "candidate"]
TRAFFIC: tuple[Traffic, ...] = get_args(Traffic)
PRODUCTION: Traffic = TRAFFIC[0]
CANDIDATE: Traffic = TRAFFIC[1]

#: Key of the state file in the pyfunc ``artifacts`` dict.
POLICY_STATE_ARTIFACT = "policy_state"
#: File name the training side must give the state file.
POLICY_STATE_FILE = "policy_state.npz"
#: Path of the state file inside the model version's directory.
POLICY_STATE_PATH = f"artifacts/{POLICY_STATE_FILE}"


#: File name of the feature reference (histograms of the training window's features).
REFERENCE_FILE = "feature_reference.json"
#: Where the feature reference is logged with a registered version (read by the monitor).
REFERENCE_ARTIFACT = "reference/" + REFERENCE_FILE


#: Version tag: where the version's training window stops (ISO time, UTC; written by the
#: retrain, :attr:`training.replay.ReplayManifest.stop`). Its head has learnt the window's
#: decisions; the service replays into it, when it loads the version, every applied reward
#: of a decision created at or after this time, whichever version made it — exactly once.
WINDOW_STOP_TAG = "window_stop"


def window_stop_time(text: str) -> datetime:
    """A :data:`WINDOW_STOP_TAG` value as a UTC time: the one reading of it for the
    service (where it replays from) and the retrain's gate (whose window is fresher). A
    time without an offset is UTC, as the tag's contract says (the service read it in its
    own zone, the gate not at all).

    Raises
    ------
    ValueError
        Not an ISO 8601 time (or out of range).
    """
    try:
        value = datetime.fromisoformat(text)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{WINDOW_STOP_TAG} must be an ISO 8601 time; got {text!r}.") from exc


#: Version tag: the SHA-256 of the policy state file the version was registered with
#: (hex); the service refuses an artifact that no longer has it.
STATE_DIGEST_TAG = "state_sha256"
#: Version tags of the gate's decision: ``"true"`` / ``"false"``, and its reasons (JSON list).
GATE_PASSED_TAG = "gate_passed"
GATE_REASONS_TAG = "gate_reasons"


def gate_verdict(tags: Mapping[str, str]) -> bool | None:
    """The gate's verdict in a version's ``tags``: True for ``"true"``; None when there
    is no tag (the gate has not decided: a version registered outside the retrain);
    False for ``"false"`` and for any other value, which the retrain never writes (an
    edited tag is no pass). The one reading of the tag: ``banditops models`` read
    ``"False"`` as failed while ``promote`` refused only ``"false"``, and moved it."""
    raw = tags.get(GATE_PASSED_TAG)
    return None if raw is None else raw == "true"


def gate_reasons(tags: Mapping[str, str]) -> list[str]:
    """The gate's reasons in a version's ``tags``: the JSON list the retrain wrote, a tag
    that is not one (set by hand) as its text, [] when absent. The one reading of the tag
    (the CLI printed it as raw JSON, ``\\u2265`` escapes and all)."""
    raw = tags.get(GATE_REASONS_TAG)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return [raw]
    return [str(v) for v in value] if isinstance(value, list) else [raw]


#: Version tags mirroring the latest step of the version's rollout (the event store's
#: ``rollouts`` holds it): the rollout's status after the step, and the step's reason.
ROLLOUT_STATUS_TAG = "rollout_status"
ROLLOUT_REASON_TAG = "rollout_reason"
#: Version tag: the production version the retrain evaluated this one against (empty:
#: the uniform fallback); a re-run of the same run compares with it again.
BASELINE_TAG = "baseline_version"
#: Where versions registered before :data:`BASELINE_TAG` recorded their baseline — the
#: tag a promotion to the production alias later overwrites (:func:`previous_tag`).
LEGACY_BASELINE_TAG = "previous_production"


def previous_tag(alias: str) -> str:
    """The tag a promotion writes on the version it moves ``alias`` to: the version the
    alias held before (empty: none), what a rollback of ``alias`` returns to."""
    return f"previous_{alias}"


#: Longest version label (``<model name>/<version>``) the store holds.
VERSION_LENGTH = 256
#: Longest model name: its label with any registry version (up to 20 digits) must fit
#: the store; a 255-character name was accepted, and every decision of its versions
#: failed on PostgreSQL (SQLite does not hold VARCHAR to its length; PostgreSQL helper,
#: stop 55).
MODEL_NAME_LENGTH = VERSION_LENGTH - len("/") - 20


def version_label(name: str, version: str | int) -> str:
    """How the service names a registry version in its logs and in the store."""
    return f"{name}/{version}"


#: The service's Prometheus metrics the monitor reads back from ``/metrics``
#: (:mod:`serving.metrics` exports them, :mod:`monitoring.served_latency` parses them).
LATENCY = "banditops_request_latency_seconds"
#: The service's endpoints that decide (routed by ``serving/routes.py`` under these
#: paths): their latency is what the monitor calls "served".
DECISION_PATH = "/v1/decisions"
GROUPED_DECISION_PATH = "/v1/decisions/grouped"
DECISION_ENDPOINTS = (DECISION_PATH, GROUPED_DECISION_PATH)
DECISIONS = "banditops_decisions"
MODEL_ERRORS = "banditops_model_errors"
DEADLINE_FALLBACKS = "banditops_deadline_fallbacks"
#: Rewards received, by ``status`` (:data:`eventstore.records.APPLIED` among them).
REWARDS = "banditops_rewards"
#: Rewards stored as applied whose head update the model refused (the head unchanged).
HEAD_UPDATE_FAILURES = "banditops_head_update_failures"
#: The ``fallback`` label of :data:`DECISIONS`.
FALLBACK_LABELS = {True: "true", False: "false"}


#: The DAG ids of ``dags/``; each also signs what its runs do (a promotion's ``by``, a
#: rollout step's controller, an alert's source).
RETRAIN_DAG = "bandit_retrain"
PROMOTE_DAG = "bandit_promote"
ROLLOUT_DAG = "bandit_rollout"
STOP_DAG = "bandit_rollout_stop"
MONITOR_DAG = "bandit_monitor"
RETENTION_DAG = "bandit_retention"


#: The MLflow client's environment in every banditops process, unless the environment
#: sets it (the CLI sets it for the processes it starts, the service for its polls):
#:
#: * HTTP retries: MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout)
#:   hold one poll of an unreachable server for minutes (``banditops models`` answered
#:   after 4 min 10 s); a poll is retried at the next interval anyway;
#: * no download progress bars: one per downloaded state filled the service's log and
#:   the commands' output ("Downloading artifacts: 100%|…" at every load).
MLFLOW_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
