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
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from serving.store.reads import call_within

#: The cookie in which Airflow 3's UI keeps the signed-in user's JWT.
TOKEN_COOKIE = "_token"

#: All of one page request's calls to Airflow together (a button's trigger and its
#: retries, or the DAG states the page shows), in seconds: the page answers in about this
#: much time whatever Airflow does, instead of leaving the browser waiting (CI's browser
#: gave up after 120 s on a trigger asked three times at 30 s each, then a page of five
#: more calls, while a loaded machine's scheduler held the metadata database).
DEADLINE_S = 40.0


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
    """Airflow refused or could not answer; ``status`` is its HTTP status (0: unreachable,
    or no answer in time)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Unanswered(AirflowCallError):
    """The request went out whole and no answer came in time: Airflow may still act on it."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


@dataclass(frozen=True)
class Triggered:
    """A run the page asked for. ``confirmed``: Airflow answered that it made it; otherwise
    every ask went out and none was answered within the action's deadline, so Airflow (busy
    behind the scheduler's writes) may still make it, under this id, and never another."""

    dag_id: str
    run_id: str
    confirmed: bool
    waited_s: float


@dataclass(frozen=True)
class AirflowAPI:
    """Airflow's REST API at ``base_url`` (``http://host:port``), as the holder of ``token``."""

    base_url: str
    token: str
    #: Per call. The page's calls go back to the API server that serves it, whose writes
    #: queue behind the scheduler's on the metadata database: a loaded 2-core machine has
    #: taken over 15 s to answer a trigger.
    timeout_s: float = 20.0
    #: All of one page request's calls together (:data:`DEADLINE_S`).
    deadline_s: float = DEADLINE_S

    def deadline(self) -> float:
        """A new deadline (``time.monotonic()`` seconds) for one page request's calls."""
        return time.monotonic() + self.deadline_s

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, until: float
    ) -> Any:
        timeout = min(self.timeout_s, until - time.monotonic())
        if timeout <= 0:
            raise AirflowCallError(
                0, f"Airflow's API at {self.base_url} did not answer within {self.deadline_s:g} s"
            )
        try:
            # httpx's timeout bounds each read, not the call: an answer sent a byte at a
            # time held the page past its deadline (stall helper, stop 44)
            response = call_within(
                timeout,
                "banditops-page-airflow",
                lambda: httpx.request(
                    method,
                    self.base_url.rstrip("/") + path,
                    json=body,
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=timeout,
                    # a certificate names the public host; this is the server's own loopback
                    verify=urlsplit(self.base_url).hostname != "127.0.0.1",
                ),
            )
        except (httpx.ReadTimeout, TimeoutError) as exc:
            raise _Unanswered(
                f"Airflow's API at {self.base_url} did not answer {method} {path} "
                f"within {timeout:.3g} s"
            ) from exc
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

    def dags(self, until: float | None = None) -> dict[str, dict[str, Any]]:
        """The banditops DAGs by id (``is_paused``, ``next_dagrun_run_after`` …); raises
        :class:`AirflowCallError` (401/403) when the token is not valid."""
        found = self._call(
            "GET", "/api/v2/dags?dag_id_pattern=bandit_&limit=100", until=until or self.deadline()
        )
        return {str(d["dag_id"]): d for d in found.get("dags", [])}

    def latest_runs(
        self, dag_id: str, limit: int = 5, until: float | None = None
    ) -> list[dict[str, Any]]:
        found = self._call(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit={limit}",
            until=until or self.deadline(),
        )
        return list(found.get("dag_runs", []))

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> Triggered:
        """Start a run of ``dag_id`` with ``conf`` (a paused DAG's run waits until it is
        unpaused, as with the UI's button), asking until Airflow answers or the deadline
        (:attr:`deadline_s`) passes.

        The page names the run itself, so asking again after a call that was not answered in
        time is safe: when an earlier call did create the run, Airflow answers the next one
        with 409, and that run is the answer. Exactly one run is started either way; when no
        ask was answered the run is :attr:`Triggered.confirmed` ``False`` (Airflow may make
        it late, under the same id). Refusals, and an Airflow that is not there, raise.
        """
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"bandits_page__{stamp}__{secrets.token_hex(4)}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        start = time.monotonic()
        until = start + self.deadline_s
        unanswered = False
        while True:
            try:
                run = self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body, until=until)
            except _Unanswered:
                unanswered = True
                continue  # the next ask, or the deadline's error below
            except AirflowCallError as exc:
                if unanswered and exc.status == 409:  # an unanswered ask did create it
                    return Triggered(dag_id, run_id, True, time.monotonic() - start)
                if unanswered and exc.status == 0:
                    return Triggered(dag_id, run_id, False, time.monotonic() - start)
                raise
            return Triggered(dag_id, str(run["dag_run_id"]), True, time.monotonic() - start)
