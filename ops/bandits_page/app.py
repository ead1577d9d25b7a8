"""The "Bandits" page's FastAPI app: mounted in Airflow's API server by the plugin
(:mod:`ops.airflow_plugin`) at ``/bandits``.

* ``GET /`` — the page (HTML, inline SVG charts; :mod:`ops.bandits_page.html`);
* ``GET /api/overview`` — the same data as JSON, for scripts;
* ``POST /actions/{retrain,monitor,promote}`` — trigger ``bandit_retrain``,
  ``bandit_monitor``, or ``bandit_promote`` (``version`` form field; the promotion then
  waits for its approval step in Airflow), through Airflow's REST API as the signed-in
  user, then redirect back to the page with the run id;
* ``POST /actions/stop-rollout`` — trigger ``bandit_rollout_stop`` (``version`` form
  field, the rollout the page showed): the running rollout ends at once (a ``stop`` step
  in its audit table), with no approval to wait for.

Inside Airflow (``airflow=True``) every route needs the signed-in user's token (the UI's
``_token`` cookie or a bearer token), checked by Airflow's own API: plugin apps are not
behind Airflow's authentication otherwise; the token is checked by the API server this
app is mounted in (Airflow's configuration names it), never one a request names. When
that server cannot check it (down, or busier than the deadline of
:data:`~ops.bandits_page.airflow_api.DEADLINE_S`), the page answers 503 and shows none of
its data. The
actions take same-origin posts only (``Sec-Fetch-Site``, else ``Origin``): a form on
another site or port cannot post with the user's cookie, and no page but Airflow's own
(same origin) may frame it (``X-Frame-Options``, CSP ``frame-ancestors``), so a page of
another port cannot lay it, invisible, under its own button. Without Airflow
(``airflow=False``, tests and local use) the page is read-only and unauthenticated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from html import escape
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from eventstore.contract import MONITOR_DAG, PROMOTE_DAG, RETRAIN_DAG, ROLLOUT_DAG, STOP_DAG
from modelregistry.registry import client_defaults
from monitoring.overview import collect
from monitoring.settings import MonitorSettings
from ops.bandits_page import airflow_api as af
from ops.bandits_page.html import render_page
from serving.store.reads import call_within

#: The DAGs whose state the actions panel shows.
SHOWN_DAGS = (RETRAIN_DAG, ROLLOUT_DAG, PROMOTE_DAG, STOP_DAG, MONITOR_DAG)
#: Headers of every answer: framed by Airflow's UI (same origin) only, no sniffing.
SECURITY_HEADERS = {
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.cookies.get(af.TOKEN_COOKIE) or None


def _cross_site(request: Request) -> str | None:
    """Why a POST is refused as cross-site (a form on another site, or another port of
    this one, submitting with the user's cookie), or None: the browser's
    ``Sec-Fetch-Site`` when it sends one, else an ``Origin`` that is not this host."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"a {site} request"
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return f"a request from {origin[:100]}"
    return None


def trigger_message(what: str, run: af.Triggered) -> str:
    """What the page says after a button: the run, and whether Airflow confirmed it."""
    if run.confirmed:
        return f"{what}: triggered {run.dag_id} run {run.run_id}."
    return (
        f"{what}: asked Airflow for {run.dag_id} run {run.run_id}; it did not confirm "
        f"within {run.waited_s:.0f} s (busy), so the run may show up late, under that id, "
        "and never twice."
    )


def _unchecked(message: str | None, exc: Exception) -> HTMLResponse:
    """The answer when Airflow could not check the token (down, or busy past the deadline):
    the page's data only goes to a user Airflow has vouched for, so none of it is shown
    (it was, to any token, while Airflow did not answer); a button's message is."""
    notice = f'<p class="message">{escape(message)}</p>' if message else ""
    return HTMLResponse(
        f"<!doctype html>{notice}<p>Your sign-in could not be checked: {escape(str(exc))}. "
        '<a href="">Reload the page</a> to try again.</p>',
        status_code=503,
    )


#: The answer to a signed-in user to whom Airflow lists none of the banditops DAGs.
NO_ACCESS = (
    "Airflow lists none of the banditops DAGs to you: your role cannot read them (or they "
    "are not loaded yet), so neither can you read the page built from their data."
)


def _collected(settings: Callable[[], MonitorSettings], until: float) -> dict[str, Any]:
    """The page's data (:func:`monitoring.overview.collect`: the event store, the registry,
    the service's ``/metrics``), or ``TimeoutError`` when it is not read by ``until`` (a
    store or a registry that accepts and keeps silent held the page for good)."""
    left = max(0.0, until - time.monotonic())
    return call_within(left, "banditops-page-collect", lambda: collect(settings()))


def _late(exc: TimeoutError, json: bool) -> Response:
    why = f"the page's data was not read in time ({exc}): the event store or the registry is slow"
    if json:
        return JSONResponse({"detail": why}, status_code=503)
    return HTMLResponse(f"<!doctype html><p>{escape(why)}. Reload to try again.</p>", 503)


def _no_access() -> HTMLResponse:
    """A user whose role reads no banditops DAG (a per-DAG role, FAB or multi-team): any
    signed-in user saw the whole page before, as listing DAGs was the only check."""
    return HTMLResponse(f"<!doctype html><p>{escape(NO_ACCESS)}</p>", status_code=403)


def _login_required(request: Request, why: str) -> HTMLResponse:
    login = f"/auth/login?next={quote(str(request.url), safe='')}"
    return HTMLResponse(
        f'<!doctype html><p>{escape(why)} <a href="{login}">Sign in to Airflow</a> to see the '
        "Bandits page.</p>",
        status_code=401,
    )


def create_app(
    settings: Callable[[], MonitorSettings] = MonitorSettings,
    *,
    airflow: bool = True,
    api_url: Callable[[], str] = af.own_api_url,
    deadline_s: float = af.DEADLINE_S,
) -> FastAPI:
    """The page's app; ``settings`` is called per request (the workspace file may change).
    ``api_url``: the Airflow REST API that checks tokens and triggers runs (by default the
    API server this app is mounted in, from Airflow's configuration); ``deadline_s``: how
    long one request waits for Airflow in all (:data:`~ops.bandits_page.airflow_api.DEADLINE_S`)."""
    # MLflow's own retries take minutes on a registry that refuses connections: the
    # whole page waited for its 40 s deadline and said "slow" (audit, stop 54); with
    # the client bounds the versions section says why within seconds
    client_defaults()
    app = FastAPI(
        title="banditops: the Bandits page",
        description="The operator's view of the bandit loop, inside the Airflow UI.",
        docs_url=None,
        redoc_url=None,
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def api_of(request: Request) -> af.AirflowAPI | None:
        token = _token(request)
        return None if token is None else af.AirflowAPI(api_url(), token, deadline_s=deadline_s)

    def dag_states(
        api: af.AirflowAPI, dags: dict[str, dict[str, Any]], until: float
    ) -> tuple[dict[str, Any], str | None]:
        """Each shown DAG with its latest runs, and why some runs are missing (Airflow did
        not answer in time: those DAGs are listed without runs)."""
        states: dict[str, Any] = {}
        problem = None
        for dag_id in SHOWN_DAGS:
            if dag_id not in dags:
                continue
            runs: list[dict[str, Any]] = []
            if problem is None:
                try:
                    runs = api.latest_runs(dag_id, 3, until)
                except af.AirflowCallError as exc:
                    problem = f"the latest runs are not shown: {exc}"
            states[dag_id] = (dags[dag_id], runs)
        return states, problem

    @app.get("/", response_class=HTMLResponse, name="page")
    def page(request: Request, message: str | None = None) -> Response:
        actions: dict[str, Any] | None = None
        until = time.monotonic() + deadline_s  # one deadline for all of the request's calls
        if airflow:
            api = api_of(request)
            if api is None:
                return _login_required(request, "You are not signed in.")
            try:
                dags = api.dags(until)  # Airflow checks the token with it
            except af.AirflowCallError as exc:
                if exc.status in (401, 403):
                    return _login_required(request, "Airflow did not accept your session.")
                # the sign-in is unchecked: nothing of the page, only what was asked for
                return _unchecked(message, exc)
            if not dags.keys() & set(SHOWN_DAGS):
                return _no_access()
            states, problem = dag_states(api, dags, until)
            actions = {"dags": states}
            if problem is not None:
                message = f"{message + ' · ' if message else ''}{problem}"
        try:
            data = _collected(settings, until)
        except TimeoutError as exc:
            return _late(exc, json=False)
        return HTMLResponse(render_page(data, actions, message))

    @app.get("/api/overview")
    def overview(request: Request) -> Response:
        until = time.monotonic() + deadline_s
        if airflow:
            api = api_of(request)
            if api is None:
                return JSONResponse({"detail": "not signed in to Airflow"}, status_code=401)
            try:
                dags = api.dags(until)
            except af.AirflowCallError as exc:
                code = exc.status if exc.status in (401, 403) else 502
                return JSONResponse({"detail": str(exc)}, status_code=code)
            if not dags.keys() & set(SHOWN_DAGS):
                return JSONResponse({"detail": NO_ACCESS}, status_code=403)
        try:
            return JSONResponse(_collected(settings, until))
        except TimeoutError as exc:
            return _late(exc, json=True)

    def trigger(request: Request, dag_id: str, conf: dict[str, Any], what: str) -> Response:
        if not airflow:
            return JSONResponse(
                {"detail": "actions need the page served inside Airflow"}, status_code=404
            )
        refused = _cross_site(request)
        if refused is not None:
            return JSONResponse(
                {"detail": f"{refused}: the page's actions take same-origin posts only"},
                status_code=403,
            )
        api = api_of(request)
        if api is None:
            return _login_required(request, "You are not signed in.")
        try:
            run = api.trigger(dag_id, conf)
        except af.AirflowCallError as exc:
            if exc.status in (401, 403):
                return _login_required(request, f"Airflow refused: {exc}")
            text = str(exc)
        else:
            text = trigger_message(what, run)
        target = request.url_for("page").include_query_params(message=text)
        return RedirectResponse(str(target), status_code=303)

    @app.post("/actions/retrain")
    def retrain(request: Request) -> Response:
        return trigger(request, RETRAIN_DAG, {}, "retrain")

    @app.post("/actions/monitor")
    def monitor(request: Request) -> Response:
        return trigger(request, MONITOR_DAG, {}, "monitor")

    @app.post("/actions/promote")
    def promote(request: Request, version: Annotated[str, Form(pattern=r"^[0-9]+$")]) -> Response:
        target = settings().production_alias
        conf = {"version": version, "target": target, "rollback": False}
        return trigger(
            request,
            PROMOTE_DAG,
            conf,
            f"promotion of v{version} to @{target} (approve it in Airflow's Required Actions)",
        )

    @app.post("/actions/stop-rollout")
    def stop_rollout(
        request: Request, version: Annotated[str, Form(pattern=r"^[0-9]+$")]
    ) -> Response:
        """Trigger ``bandit_rollout_stop`` for the rollout of ``version`` the page showed:
        it ends at once (a ``stop`` step in its audit, signed by the signed-in user) and
        every replica stops routing users to the candidate at its next poll."""
        return trigger(
            request,
            STOP_DAG,
            {"version": version, "reason": "stopped from the Bandits page"},
            f"stop of the rollout of v{version}",
        )

    return app
