"""The "Bandits" page as one server-rendered HTML document (inline CSS and SVG, no
JavaScript), from the dict of :func:`monitoring.overview.collect`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from bandit_core.support import ESTIMATOR
from eventstore.contract import STOP_DAG
from ops.bandits_page import svg

#: The estimator drawn against the online reward (the gate's headline estimator).
HEADLINE_ESTIMATOR = ESTIMATOR

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px;color:#222}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:4px 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#2a7d2a}.alert{color:#b00;font-weight:bold}.skipped{color:#777}
.alias{display:inline-block;background:#e8eefc;border-radius:3px;padding:0 4px;margin-right:2px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.note{color:#666;font-size:12px}
.error{color:#b00;font-size:12px}.message{background:#eef7ee;border:1px solid #9c9;padding:6px}
.ope{white-space:nowrap}
form{display:inline-block;margin:0 8px 4px 0}button{cursor:pointer}
"""


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}g}"


def _ci(ci: Any) -> str:
    if not ci:
        return "–"
    return f"[{_num(ci[0])}, {_num(ci[1])}]"


def _table(
    cls: str, headers: Iterable[str], rows: Iterable[Iterable[str]], empty: str = "none yet"
) -> str:
    body = ["<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows]
    if not body:
        return f'<p class="note {cls}">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f'<table class="{cls}"><tr>{head}</tr>{"".join(body)}</table>'


def _error(section: Mapping[str, Any]) -> str:
    return f'<p class="error">{escape(str(section["error"]))}</p>' if "error" in section else ""


def _status(status: str) -> str:
    return f'<span class="{escape(status)}">{escape(status)}</span>'


# ---------------------------------------------------------------------- sections
def versions_html(data: Mapping[str, Any]) -> str:
    section = data["versions"]
    rows = section.get("rows", [])
    table_rows = []
    for row in rows:
        gate = row["gate"]
        verdict = "–" if gate["passed"] is None else ("passed" if gate["passed"] else "failed")
        ope = "<br>".join(
            f"{escape(name)} {_num(e['value'])} {_ci([e.get('ci_low'), e.get('ci_high')])}"
            for name, e in row["ope"].items()
        )
        online = row["online"] or {}
        table_rows.append(
            [
                f'<span class="version">{escape(row["version"])}</span>',
                "".join(f'<span class="alias">@{escape(a)}</span>' for a in row["aliases"]),
                f'<span class="gate-{escape(verdict)}">{escape(verdict)}</span><br>'
                f'<span class="note">{escape("; ".join(gate["reasons"]))}</span>',
                f'<span class="ope">{ope}</span>' if ope else "–",
                f'<span class="num online-mean">{_num(online.get("mean"))}</span>',
                _ci(online.get("ci")),
                f'<span class="num">{_num(online.get("served"))}</span>',
            ]
        )
    table = _table(
        "versions",
        [
            "version",
            "aliases",
            "gate",
            "OPE estimates [95% interval]",
            "online reward",
            "online 95% interval",
            "decisions",
        ],
        table_rows,
        "no registered version yet",
    )
    shown = list(reversed(rows))  # oldest first on the chart
    labels = [f"v{r['version']}" for r in shown]
    headline = [r["ope"].get(HEADLINE_ESTIMATOR, {}) for r in shown]
    onlines = [r["online"] or {} for r in shown]
    chart = svg.interval_chart(
        "ope-vs-online",
        f"offline estimate ({HEADLINE_ESTIMATOR.upper()}) vs online reward, per version",
        labels,
        [
            svg.Series(
                f"OPE {HEADLINE_ESTIMATOR.upper()} (95% interval)",
                [svg.Point(h.get("value"), h.get("ci_low"), h.get("ci_high")) for h in headline],
            ),
            svg.Series(
                "online reward (95% interval)",
                [svg.Point(o.get("mean"), *(o.get("ci") or (None, None))) for o in onlines],
            ),
        ],
        "reward",
        empty="no registered version yet",
    )
    fallback = section.get("fallback_online")
    note = ""
    if fallback:
        note = (
            f'<p class="note">fallback policy: online reward {_num(fallback["mean"])} '
            f"{_ci(fallback['ci'])} over {fallback['served']} decisions.</p>"
        )
    if section.get("omitted_note"):
        note += f'<p class="note versions-omitted">{escape(str(section["omitted_note"]))}</p>'
    return (
        '<section id="versions"><h2>Versions</h2>'
        + _error(section)
        + table
        + note
        + f'<div class="charts">{chart}</div></section>'
    )


def history_html(data: Mapping[str, Any]) -> str:
    section = data["alias_history"]
    rows = [
        [
            escape(str(m.get("at", ""))[:19]),
            f"@{escape(str(m.get('alias')))}",
            f"{escape(str(m.get('previous') or '–'))} → {escape(str(m.get('version')))}",
            escape(str(m.get("by", ""))),
            escape(str(m.get("reason", ""))),
        ]
        for m in section.get("moves", [])
    ]
    return (
        '<section id="alias-history"><h2>Alias moves</h2>'
        + _error(section)
        + _table("alias-history", ["when (UTC)", "alias", "version", "by", "why"], rows)
        + "</section>"
    )


def _rollout_state(rollout: Mapping[str, Any]) -> str:
    status = str(rollout["status"])
    return (
        f'<p class="rollout-state">version <b>v{escape(str(rollout["version"]))}</b> · '
        f'status <b class="rollout-status">{escape(status)}</b> · stage '
        f'<b class="rollout-stage">{int(rollout["stage_index"]) + 1}</b> · share '
        f'<b class="rollout-share">{float(rollout["share"]):.0%}</b> of users · started '
        f"{escape(str(rollout['started_at'])[:19])} UTC · stage since "
        f"{escape(str(rollout['stage_started_at'])[:19])} UTC"
        + (
            " · ends by "
            f'<span class="rollout-ends">{escape(str(rollout["ends_by"])[:19])}</span> UTC'
            if rollout.get("ends_by")
            else ""
        )
        + (f" · {escape(str(rollout['reason']))}" if rollout.get("reason") else "")
        + "</p>"
    )


def rollout_html(data: Mapping[str, Any]) -> str:
    section = data["rollout"]
    rollout = section.get("rollout")
    steps = list(reversed(section.get("steps", [])))  # oldest first
    parts = ['<section id="rollout"><h2>Rollout</h2>', _error(section)]
    if rollout is None:
        parts.append('<p class="note rollout-state">no rollout has started for this model.</p>')
    else:
        parts.append(_rollout_state(rollout))
    outcomes = section.get("outcomes") or {}
    arm_rows = [
        [
            escape(arm),
            f'<span class="num">{_num(o["mean"])}</span>',
            _ci(o["ci"]),
            f'<span class="num">{o["counted"]}</span>',
            f'<span class="num">{o["rewarded"]}</span>',
            f'<span class="num">{o["served"]}</span>',
        ]
        for arm, o in outcomes.items()
    ]
    if rollout is not None:
        parts.append(
            '<p class="note">online reward pooled over the stages, for context: the '
            "controller compares the arms within each stage (a share that grows while the "
            "reward rate moves makes pooled means mislead) and by user; what it read is in "
            "each step below.</p>"
        )
        parts.append(
            _table(
                "rollout-outcomes",
                [
                    "traffic arm",
                    "online reward (pooled)",
                    "95% interval",
                    "counted",
                    "rewarded",
                    "decisions",
                ],
                arm_rows,
            )
        )
    step_rows = [
        [
            escape(str(st["at"])[:19]),
            escape(str(st["action"])),
            f"{int(st['stage_index']) + 1} ({float(st['share']):.0%})",
            f"{st['n_production']} / {st['n_candidate']}",
            f"{_num(st['mean_production'])} / {_num(st['mean_candidate'])}",
            f'<span class="num">{_num(st["diff"])}</span>',
            _ci([st["ci_low"], st["ci_high"]]) if st["ci_low"] is not None else "–",
            escape(str(st["reason"])),
        ]
        for st in reversed(steps)
    ]
    if rollout is not None:
        parts.append(
            _table(
                "rollout-steps",
                [
                    "when (UTC)",
                    "decision",
                    "stage (share)",
                    "n prod / cand",
                    "reward prod / cand",
                    "difference",
                    "sequential interval",
                    "why",
                ],
                step_rows,
            )
        )
    arms_chart = svg.interval_chart(
        "rollout-arms",
        "rollout: online reward per arm, pooled over stages (95% interval)",
        list(outcomes),
        [
            svg.Series(
                "online reward",
                [svg.Point(o["mean"], *(o["ci"] or (None, None))) for o in outcomes.values()],
            )
        ],
        "reward",
        empty="no rollout yet",
    )
    test_chart = svg.interval_chart(
        "rollout-sequential",
        "candidate − production at each step (always-valid interval)",
        [f"{i + 1}:{str(st['action'])[:4]} {float(st['share']):.0%}" for i, st in enumerate(steps)],
        [
            svg.Series(
                "difference (confidence sequence)",
                [svg.Point(st["diff"], st["ci_low"], st["ci_high"]) for st in steps],
            )
        ],
        "reward difference",
        empty="no rollout step with a readout yet",
    )
    arms = section.get("arms", [])
    week_rows = [
        [
            escape(a["traffic"]),
            escape(a["version"]),
            f'<span class="num">{_num(a["mean"])}</span>',
            _ci(a["ci"]),
            f'<span class="num">{a["served"]}</span>',
        ]
        for a in arms
    ]
    parts += [
        f'<div class="charts">{arms_chart}{test_chart}</div>',
        f'<p class="note">all traffic since {escape(str(section.get("since", "–"))[:19])} UTC '
        "by arm and version (missing rewards count as the default reward):</p>",
        _table(
            "traffic-week",
            ["traffic arm", "version", "online reward", "95% interval", "decisions"],
            week_rows,
            "no decisions in the monitored week",
        ),
        "</section>",
    ]
    return "".join(parts)


def monitor_html(data: Mapping[str, Any]) -> str:
    section = data["monitor"]
    checks = section.get("checks", [])
    rows = [
        [
            escape(c["name"]),
            _status(c["status"]),
            f'<span class="num">{_num(c["value"])}</span>',
            escape(c["message"]),
        ]
        for c in checks
    ]
    head = ""
    if section.get("report"):
        alerts = section.get("alerts", [])
        head = (
            f'<p class="note">latest report: week ending {escape(str(section["window_end"]))[:19]}'
            f" UTC (production version {escape(str(section.get('production_version')))}); "
            + (
                f'<span class="alert">alerts: {escape(", ".join(alerts))}</span>'
                if alerts
                else '<span class="ok">no alerts</span>'
            )
            + "</p>"
        )
    return (
        '<section id="monitor"><h2>Monitor checks</h2>'
        + _error(section)
        + head
        + _table(
            "monitor-checks",
            ["check", "status", "value", "message"],
            rows,
            "no monitor report yet (bandit_monitor has not run on this workspace)",
        )
        + "</section>"
    )


def service_html(data: Mapping[str, Any]) -> str:
    latency, fallback = data["latency"], data["fallback"]
    history = latency.get("history", [])
    ms = 1e3
    labels = [str(h["window_end"] or "")[5:16].replace("T", " ") for h in history]
    latency_chart = svg.line_chart(
        "latency",
        "served latency per monitor run (ms)",
        labels,
        [
            svg.Series(
                "p50", [svg.Point(None if h["p50_s"] is None else h["p50_s"] * ms) for h in history]
            ),
            svg.Series(
                "p99", [svg.Point(None if h["p99_s"] is None else h["p99_s"] * ms) for h in history]
            ),
        ],
        "ms",
        limit=None if "limit_p99_s" not in latency else latency["limit_p99_s"] * ms,
        empty="no monitor run has read the service's latency yet",
    )
    days = fallback.get("days", [])
    fallback_chart = svg.bar_chart(
        "fallback",
        "share of decisions served by the fallback, per day",
        [d["day"][5:] for d in days],
        [d["share"] for d in days],
        "share",
        y_max=1.0,
        empty="no decisions in the last week",
    )
    live = latency.get("live") or {}
    if "error" in live:
        live_text = f'<p class="note">live: {escape(str(live["error"]))}</p>'
    else:
        p50, p99 = live.get("p50_s"), live.get("p99_s")
        live_text = (
            '<p class="live-latency">live, since the service started '
            f"({escape(live['service_url'])}):"
            f" p50 {_num(None if p50 is None else p50 * ms)} ms, p99 "
            f"{_num(None if p99 is None else p99 * ms)} ms over {_num(live.get('count'))} "
            "decision requests.</p>"
        )
    rows = [
        [escape(d["day"]), f'<span class="num">{d["served"]}</span>', _num(d["share"])]
        for d in days
        if d["served"]
    ]
    return (
        '<section id="service"><h2>Served latency and fallback share</h2>'
        + _error(latency)
        + _error(fallback)
        + live_text
        + _table("fallback-days", ["day (UTC)", "decisions", "fallback share"], rows)
        + f'<div class="charts">{latency_chart}{fallback_chart}</div></section>'
    )


def actions_html(data: Mapping[str, Any], actions: Mapping[str, Any] | None) -> str:
    if actions is None:
        return (
            '<section id="actions"><h2>Actions</h2><p class="note">Served outside Airflow: '
            "the buttons that trigger DAG runs appear on the page inside Airflow's UI.</p>"
            "</section>"
        )
    staging = data["aliases"]["staging"]
    production = data["aliases"]["production"]
    candidate = next(
        (
            r["version"]
            for r in data["versions"].get("rows", [])
            if staging in r["aliases"] and production not in r["aliases"]
        ),
        None,
    )
    forms = [
        _form("retrain", "Retrain now (bandit_retrain)"),
        _form("monitor", "Run the monitor (bandit_monitor)"),
    ]
    if candidate is not None:
        forms.append(
            _form(
                "promote",
                f"Approve promotion of @{staging} v{candidate} (bandit_promote)",
                {"version": candidate},
            )
        )
    rollout = data["rollout"].get("rollout")
    if rollout is not None and rollout["status"] == "running":
        forms.append(
            _form(
                "stop-rollout",
                f"Stop the rollout of v{rollout['version']} ({STOP_DAG})",
                {"version": str(rollout["version"])},
            )
        )
    dags = actions.get("dags", {})
    rows = [
        [
            escape(dag_id),
            "paused" if dag.get("is_paused") else "active",
            escape(", ".join(f"{r['state']} {str(r.get('run_after', ''))[:19]}" for r in runs)),
        ]
        for dag_id, (dag, runs) in dags.items()
    ]
    return (
        '<section id="actions"><h2>Actions</h2>'
        + "".join(forms)
        + (
            ""
            if candidate is not None
            else f'<p class="note no-promotion">no @{escape(staging)} version that is not '
            f"already @{escape(production)}: nothing to promote.</p>"
        )
        + _table("dags", ["DAG", "state", "latest runs"], rows, "no banditops DAG in Airflow")
        + "</section>"
    )


def _form(action: str, label: str, fields: Mapping[str, str] | None = None) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
        for k, v in (fields or {}).items()
    )
    return (
        f'<form method="post" action="actions/{escape(action)}">{hidden}'
        f'<button type="submit" id="action-{escape(action)}">{escape(label)}</button></form>'
    )


def render_page(
    data: Mapping[str, Any], actions: Mapping[str, Any] | None = None, message: str | None = None
) -> str:
    """The whole page; ``actions`` (the DAGs' states) when the buttons can be used."""
    notice = f'<p class="message">{escape(message)}</p>' if message else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Bandits · {escape(data['model_name'])}</title><style>{CSS}</style></head><body>"
        f"<h1>Bandits: {escape(data['model_name'])}</h1>"
        f'<p class="note">event store: {escape(data["store"])} · generated '
        f"{escape(data['generated_at'][:19])} UTC · "
        '<a href="api/overview">JSON</a></p>'
        + notice
        + actions_html(data, actions)
        + versions_html(data)
        + rollout_html(data)
        + monitor_html(data)
        + service_html(data)
        + history_html(data)
        + "</body></html>"
    )
