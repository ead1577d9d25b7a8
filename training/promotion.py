"""Manual alias moves (``bandit_promote``): what a promotion or rollback would do, and
doing it once a person approved; and the person's say over a staged rollout
(:mod:`training.rollout`): promoting the rollout's version to production skips the rest of
the rollout (recorded as its ``promote``); :func:`stop_rollout` (``bandit_rollout_stop``)
stops it at once (recorded ``stop``).

:func:`plan_promotion` builds the report the approver reads (the move and the version's
gate decision, reasons and OPE numbers); :func:`apply_promotion` moves the alias, with the
approver and their comment in the registry's alias history, only if the alias is still
where the report saw it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from bandit_core.support import ESTIMATOR
from eventstore.contract import (
    GATE_PASSED_TAG,
    ROLLOUT_REASON_TAG,
    ROLLOUT_STATUS_TAG,
    STOP_DAG,
    gate_reasons,
    previous_tag,
)
from eventstore.text import check_text
from training.runspec import check_bool
from training.settings import PipelineSettings

log = logging.getLogger(__name__)

#: Longest a bandit_promote task (reading or moving the registry's aliases) may run (its
#: run may take the approval's wait and three of these: room for scheduling delays): a
#: registry that keeps a call open held the run, and every promotion, rollback and stop
#: queued behind it, for good (stall helper, stop 44).
TASK_TIMEOUT = timedelta(minutes=10)


def version_param(description: str) -> dict[str, Any]:
    """The keywords of a DAG's ``version`` ``Param`` (``bandit_promote``,
    ``bandit_rollout_stop``): a registered version number, or empty. The form refuses
    anything else before a run is queued; the task checks again
    (:func:`modelregistry.registry.version_number`)."""
    return {"type": "string", "pattern": "^[0-9]*$", "description": description}


def targets(settings: PipelineSettings) -> tuple[str, str]:
    """The aliases a person may move: the production alias and the staging alias (the
    rollout candidate, ``candidate_alias``)."""
    return (settings.production_alias, settings.candidate_alias)


def plan_promotion(
    version: str | int | None,
    target: str | None = None,
    rollback: bool = False,
    settings: PipelineSettings | None = None,
) -> dict[str, Any]:
    """What a manual promotion (or rollback) would do, with the version's gate report.

    Parameters
    ----------
    version : str, int or None
        The version to promote; with ``rollback`` leave it empty (or give the version the
        rollback returns to).
    target : str, optional
        The alias to move, one of :func:`targets` (default: the production alias).
    rollback : bool
        Move ``target`` back to the version it held before the current one.
    settings : PipelineSettings, optional

    Returns
    -------
    dict
        ``action`` ("promote" / "rollback"), ``alias``, ``version`` (after), ``current``
        (before), ``model_name``, ``gate_passed``, ``gate_reasons``, ``subject``, ``body``
        (Markdown shown to the approver).

    Raises
    ------
    ValueError
        For a bad ``target``/``version``/``rollback``.
    modelregistry.registry.RegistryError
        For an unknown version, or nothing to roll back to.
    """
    # lazy: the promote DAG imports this module at parse time, which must not load MLflow
    from modelregistry.registry import ModelRegistry, RegistryError, version_number

    settings = PipelineSettings() if settings is None else settings
    allowed = targets(settings)
    target = allowed[0] if target is None else target
    if target not in allowed:
        raise ValueError(f"target must be one of {', '.join(allowed)}; got {target!r}.")
    rollback = check_bool("rollback", rollback)
    wanted = None
    if version is not None and str(version).strip() != "":
        try:  # one form ("3"): "0003" is version 3, and already @production when 3 is
            wanted = version_number(version)
        except RegistryError as exc:
            raise ValueError(f"version must be a registered version number; {exc}") from None
    if wanted is None and not rollback:
        raise ValueError("version must be given unless rollback is true.")
    registry = ModelRegistry.from_settings(settings)
    current = registry.by_alias(target)
    if rollback:
        if current is None:
            raise RegistryError(f"nothing to roll back: {settings.model_name!r} has no @{target}.")
        previous = current.tags.get(previous_tag(target), "")
        if not previous:
            raise RegistryError(
                f"version {current.version} is the first @{target} of {settings.model_name!r}; "
                "there is no previous version to roll back to."
            )
        if wanted is not None and wanted != previous:
            raise ValueError(
                f"version must be empty or {previous} (the version a rollback of @{target} "
                f"returns to); got {wanted}."
            )
        wanted = previous
    elif current is not None and current.version == wanted:
        raise ValueError(f"version {wanted} is already @{target}; nothing to promote.")
    if wanted is None:  # unreachable: checked above; keeps the type narrow
        raise ValueError("version must be given unless rollback is true.")
    info = registry.get(wanted)
    reasons = gate_reasons(info.tags)
    action = "rollback" if rollback else "promote"
    subject = (
        f"{action} {settings.model_name} @{target}: "
        f"{current.version if current else 'none'} → {wanted}"
    )
    lines = [
        f"**{subject}**",
        "",
        f"- gate: {info.tags.get(GATE_PASSED_TAG, 'not decided')}",
        *[f"  - {r}" for r in reasons],
        f"- training rows: {info.tags.get('rows', '?')}, run: {info.tags.get('run_key', '?')}",
    ]
    if ROLLOUT_STATUS_TAG in info.tags:  # what the online test said, if it ran
        lines.append(
            f"- online rollout: {info.tags[ROLLOUT_STATUS_TAG]} — "
            f"{info.tags.get(ROLLOUT_REASON_TAG, '')}"
        )
    for key in (
        f"ope.candidate.{ESTIMATOR}.value",
        f"ope.candidate.{ESTIMATOR}.ci_low",
        f"ope.production.{ESTIMATOR}.value",
    ):
        if key in info.metrics:
            lines.append(f"- {key}: {info.metrics[key]:.6g}")
    return {
        "action": action,
        "alias": target,
        "version": wanted,
        "current": current.version if current else None,
        "model_name": settings.model_name,
        "gate_passed": info.tags.get(GATE_PASSED_TAG),
        "gate_reasons": reasons,
        "subject": subject,
        "body": "\n".join(lines),
    }


def check_approvable(triggered_by: str | None, settings: PipelineSettings) -> None:
    """``ValueError`` when no approval of this run could be carried out: with
    ``promote_four_eyes`` a run whose triggering user is unknown (a scheduler's or a
    CLI's), which was otherwise refused only after the wait for its approval."""
    if settings.promote_four_eyes and triggered_by is None:
        raise ValueError(
            "with promote_four_eyes (BANDITOPS_PROMOTE_FOUR_EYES) a bandit_promote run "
            "needs a known triggering user (trigger it from the UI, the Bandits page or "
            "the REST API as yourself), so that someone else can approve it."
        )


def refuse_stop_conf(conf: Mapping[str, Any] | None) -> None:
    """``ValueError`` for a ``bandit_promote`` run asked to stop a rollout, which is
    ``bandit_rollout_stop``'s (it was a ``bandit_promote`` option, waiting for an
    approval): refused by name rather than read as a promotion missing its version."""
    if conf and "stop_rollout" in conf:
        raise ValueError(
            f"stop_rollout is not a bandit_promote option: trigger {STOP_DAG} (the Bandits "
            "page's Stop the rollout) to stop the running rollout at once."
        )


def apply_promotion(
    plan: Mapping[str, Any],
    approval: Mapping[str, Any],
    settings: PipelineSettings | None = None,
    *,
    triggered_by: str | None = None,
) -> dict[str, Any]:
    """Carry out an approved plan of :func:`plan_promotion`.

    ``approval`` is the approval task's result (``chosen_options``, ``responded_by_user``,
    ``params_input``); it must say "Approve", and with ``promote_four_eyes`` come from
    someone other than ``triggered_by`` (the user who triggered the run). The alias must
    still point where it did when the plan was made, else nothing moves (someone else
    moved it while the approver read).

    Returns
    -------
    dict
        ``alias``, ``version`` (now), ``previous``, ``by``.
    """
    # lazy: the promote DAG imports this module at parse time, which must not load MLflow
    from modelregistry.registry import ModelRegistry, RegistryError

    if not isinstance(approval, Mapping):  # the approval task marked success by hand
        raise ValueError(
            "no approval was recorded (was the approval task marked by hand?): nothing "
            "moved; trigger the promotion again and answer its approval."
        )
    chosen = list(approval.get("chosen_options") or [])
    if chosen != ["Approve"]:
        raise ValueError(f"approval must have chosen ['Approve']; got {chosen!r}.")
    settings = PipelineSettings() if settings is None else settings
    user = approval.get("responded_by_user") or {}
    by = str(user.get("name") or user.get("id") or "unknown approver")
    if settings.promote_four_eyes and (
        triggered_by is None or triggered_by in (user.get("name"), user.get("id"))
    ):
        who = "no known user" if triggered_by is None else triggered_by
        raise ValueError(
            f"{by} approved a promotion that {who} triggered: with promote_four_eyes "
            "(BANDITOPS_PROMOTE_FOUR_EYES) another person must approve it; nothing moved."
        )
    comment = str((approval.get("params_input") or {}).get("comment") or "").strip()
    reason = f"{plan['subject']} — approved by {by}" + (f": {comment}" if comment else "")
    registry = ModelRegistry.from_settings(
        settings.model_copy(update={"model_name": plan["model_name"]})
    )
    alias = plan["alias"]
    now = registry.by_alias(alias)
    held = now.version if now else None
    # a re-run of this task (cleared after it moved the alias) finds its own move
    done = held == plan["version"] and _moved_by(registry, alias, held, reason)
    if held != plan["current"] and not done:
        raise RegistryError(
            f"@{alias} moved from {plan['current']} to {held} while "
            "waiting for approval; nothing changed. Trigger the promotion again."
        )
    if done:
        log.info("%s: @%s is on %s already (this approval moved it)", reason, alias, held)
        moved = registry.get(plan["version"])
    elif plan["action"] == "rollback":
        moved = registry.rollback(by=by, reason=reason, alias=alias)
    else:
        # a person approved this very version: that is the override of a failed gate
        # (tagged ``promoted_despite_gate`` by the registry)
        moved = registry.promote(plan["version"], by=by, reason=reason, alias=alias, force=True)
    log.info("%s: @%s %s → %s", reason, alias, plan["current"], moved.version)
    out: dict[str, Any] = {
        "alias": alias,
        "version": moved.version,
        "previous": plan["current"],
        "by": by,
    }
    if alias == settings.production_alias and plan["action"] == "promote":
        from training import rollout

        try:
            skipped = rollout.promoted_by_hand(
                moved.version, settings.model_copy(update={"model_name": plan["model_name"]}), by=by
            )
        except Exception as exc:  # the alias moved; the controller's next step records it
            log.warning("could not record the promotion on the running rollout: %s", exc)
            skipped = None
        if skipped is not None:
            out["rollout"] = skipped.summary()
    return out


def stop_rollout(
    version: str | int | None,
    reason: str,
    settings: PipelineSettings | None = None,
    *,
    triggered_by: str | None,
) -> dict[str, Any]:
    """Stop the running rollout now (``bandit_rollout_stop``), recorded as its ``stop``
    step by the user who triggered the run: its candidate gets no more traffic at each
    replica's next poll, and ``@staging`` stays (a person may still promote it).

    No approval is waited for: a stop only sends the candidate's users back to
    production, and waiting for one (or queueing behind a promotion's, as when stops went
    through ``bandit_promote``) left them on the candidate meanwhile. Who may stop is who
    may trigger the DAG (Airflow's permissions on it).

    Parameters
    ----------
    version : str, int or None
        The version whose rollout the person saw running (empty: whichever runs); a stop
        asked for one rollout never ends the next one.
    reason : str
        Why, kept in the rollout's audit.

    Raises
    ------
    ValueError
        A ``version`` that is not a version number; a ``reason`` with a NUL character
        or a lone surrogate.
    LookupError
        No rollout of the model is running, or none of ``version``.
    """
    from modelregistry.registry import RegistryError, version_number
    from training import rollout

    settings = PipelineSettings() if settings is None else settings
    wanted = None
    if version is not None and str(version).strip() != "":
        try:
            wanted = version_number(version)
        except RegistryError as exc:
            raise ValueError(f"version must be a registered version number; {exc}") from None
    reason = check_text("reason", str(reason)).strip() or "stopped through bandit_rollout_stop"
    stopped = rollout.stop(
        settings, by=triggered_by or "an unknown user", reason=reason, version=wanted
    )
    return stopped.summary()


def _moved_by(registry: Any, alias: str, version: str | None, reason: str) -> bool:
    """Whether the last recorded move of ``alias`` took it to ``version`` for ``reason``
    (an approval's reason names its plan, approver and comment; a rollback records it
    after ``rollback from <version>: ``)."""
    last = registry.last_move(alias)
    return (
        last is not None
        and last.get("version") == version
        and str(last.get("reason", "")).endswith(reason)
    )
