"""The page's buttons: DAG runs triggered through Airflow's REST API as the signed-in user.

The page runs inside Airflow's API server, so it calls that server's own ``/api/v2``
with the user's token (the UI's ``_token`` cookie, or the request's bearer token):
Airflow decides whether this user may trigger the DAG, exactly as for its own "Trigger"
button, and the run is recorded under the user's name. That server's address comes from
Airflow's configuration (:func:`own_api_url`), never from the request: a client chooses
its ``Host`` header, and would otherwise choose who vouches for its token.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

#: The cookie in which Airflow 3's UI keeps the signed-in user's JWT.
TOKEN_COOKIE = "_token"


def own_api_url(api: Any = None) -> str:
    """The REST API of the Airflow API server this process is, on the loopback interface:
    ``[api] port``, ``https`` when ``[api] ssl_cert`` is set, and the path of ``[api]
    base_url`` (where the server mounts its routes). ``api``: a section to read instead
    of Airflow's (tests)."""
    if api is None:
        from airflow.configuration import conf

        api = {key: conf.get("api", key, fallback="") for key in ("port", "ssl_cert", "base_url")}
    port = int(api.get("port") or 8080)
    scheme = "https" if api.get("ssl_cert") else "http"
    path = urlsplit(api.get("base_url") or "").path.rstrip("/")
    return f"{scheme}://127.0.0.1:{port}{path}"


class AirflowCallError(RuntimeError):
    """Airflow refused or could not answer; ``status`` is its HTTP status (0: unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AirflowAPI:
    """Airflow's REST API at ``base_url`` (``http://host:port``), as the holder of ``token``."""

    base_url: str
    token: str
    #: Per call. The page's calls go back to the API server that serves it, whose writes
    #: queue behind the scheduler's on the metadata database: a loaded 2-core machine has
    #: taken over 15 s to answer a trigger.
    timeout_s: float = 30.0
    #: How many times :meth:`trigger` asks when Airflow does not answer in time.
    trigger_attempts: int = 3

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = httpx.request(
                method,
                self.base_url.rstrip("/") + path,
                json=body,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=self.timeout_s,
                # a certificate names the public host; this is the server's own loopback
                verify=urlsplit(self.base_url).hostname != "127.0.0.1",
            )
        except httpx.HTTPError as exc:
            why = f"Airflow's API at {self.base_url} is unreachable: {exc}"
            raise AirflowCallError(0, why) from exc
        if response.status_code >= 400:
            detail = response.text[:500]
            raise AirflowCallError(
                response.status_code,
                f"Airflow answered {response.status_code} to {method} {path}: {detail}",
            )
        return response.json() if response.content else None

    def dags(self) -> dict[str, dict[str, Any]]:
        """The banditops DAGs by id (``is_paused``, ``next_dagrun_run_after`` …); raises
        :class:`AirflowCallError` (401/403) when the token is not valid."""
        found = self._call("GET", "/api/v2/dags?dag_id_pattern=bandit_&limit=100")
        return {str(d["dag_id"]): d for d in found.get("dags", [])}

    def latest_runs(self, dag_id: str, limit: int = 5) -> list[dict[str, Any]]:
        found = self._call(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit={limit}"
        )
        return list(found.get("dag_runs", []))

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Start a run of ``dag_id`` with ``conf`` (a paused DAG's run waits until it is
        unpaused, as with the UI's button); the run id.

        The page names the run itself, so asking again after a call that timed out is safe:
        when the first call did create the run, Airflow answers the next one with 409, and
        that run is the answer. Exactly one run is started either way.
        """
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"bandits_page__{stamp}__{secrets.token_hex(4)}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        for attempt in range(1, self.trigger_attempts + 1):
            try:
                run = self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
            except AirflowCallError as exc:
                if exc.status == 409 and attempt > 1:
                    return run_id  # an earlier attempt that timed out did create it
                if exc.status != 0 or attempt == self.trigger_attempts:
                    raise
                continue
            return str(run["dag_run_id"])
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
