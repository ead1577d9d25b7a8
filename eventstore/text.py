"""Text the event store, the workspace and MLflow can hold: no NUL character (PostgreSQL
text refuses it, file names cannot carry it) and no lone surrogate (UTF-8 cannot encode
one; Python makes them from undecodable bytes in command-line arguments); and text shown
to others without the credentials in it."""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit


def text_problem(value: str) -> str | None:
    """What makes ``value`` unstorable, as a phrase (``"must not …"``), or None."""
    if "\x00" in value:
        return "must not contain a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (a lone surrogate is not)"
    return None


def check_text(name: str, value: str) -> str:
    """``value`` when storable; else a ``ValueError`` naming the field ``name``."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"{name} {problem}; got {value!r}.")
    return value


#: Where a URL's userinfo ends: at its last ``@`` followed by a host (a name, an IPv6
#: literal, several hosts, none at all for a socket path; a port) and then the end of the
#: authority or of the URL's text. The password may hold ``@`` and ``/`` (URL parsers
#: split at the last ``@``; SQLAlchemy accepts an unencoded ``/``).
_AT_HOST = (
    r"(?=@(?:\[[0-9a-fA-F:.]{0,64}\](?::\d{0,5})?(?:,[\w.:\[\]-]{0,256})?|[\w.,:%-]{0,256})"
    r"(?:[/?#\s'\",;>)]|$))"
)
#: The password of a URL's userinfo (``scheme://user:password@host``): greedy within the
#: token, so the last ``@`` before the host ends it. Bounded repeats: a line of many
#: ``a://b:`` took seconds (each start scanned to the end of the line).
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][\w+.-]*://[^\s/@:]{0,256}:)[^\s]{0,256}" + _AT_HOST
)
#: A userinfo of one part of an HTTP URL (``https://token@host``): a token standing for a
#: user, by convention (a database URL's is its user name, shown).
_URL_USER = re.compile(r"(?P<head>\bhttps?://)[^\s/@:]{1,256}" + _AT_HOST, re.IGNORECASE)
#: A credential in a URL's query (``?password=…``, ``&token=…``).
_URL_QUERY = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|token|access_token|api_key|apikey|secret|"
    r"sig|signature)=)[^&\s#]{1,512}",
    re.IGNORECASE,
)
#: What stands for a password in a redacted URL.
HIDDEN = "***"


def redact_credentials(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``: a userinfo's
    password (an ``@`` in it included), an HTTP URL's userinfo of one part (a token), and credential
    query parameters (an MLflow or database error names the URL it could not reach,
    userinfo and all). ``http://svc:p@ssw0rd@host`` showed ``ssw0rd``, and a token as
    the userinfo or in ``?password=`` showed whole (security helper, stop 55)."""
    text = _URL_PASSWORD.sub(rf"\g<head>{HIDDEN}", text)
    text = _URL_USER.sub(rf"\g<head>{HIDDEN}", text)
    return _URL_QUERY.sub(rf"\g<head>{HIDDEN}", text)


def webhook_shown(url: str) -> str:
    """A webhook URL as a log, a listing or an error may show it: its scheme and host only.
    A Slack or Teams webhook's secret is its path (``/services/T…/B…/<token>``): whoever
    reads it may post as the sender. ``banditops config show`` printed it whole while the
    monitor's task log named the host alone (security audit). A text that is no URL with
    a scheme and a host (a refused setting's) shows its scheme at most: all of the rest
    may be the path."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # an unclosed "[" or a port that is no number
        return "…"
    if not parts.scheme.isascii() or not parts.scheme.isalpha():
        return "…"
    return f"{parts.scheme}://{host}/…" if host else f"{parts.scheme}:…"


def with_password(hidden: str, configured: Callable[[], str], name: str) -> str:
    """The URL ``hidden`` (:func:`redact_credentials` of it, as a run spec holds it) with
    its password: that of the URL ``configured()`` reads, where that is the same URL; a URL
    without a password as it is (nothing read). ``ValueError`` naming ``name`` when the
    configured URL is another one."""
    if HIDDEN not in hidden:
        return hidden  # no credential was taken out
    configured_url = configured()
    if redact_credentials(configured_url) != hidden:
        raise ValueError(
            f"{name} {hidden} is not the configured one ({redact_credentials(configured_url)}), "
            "whose password this process has: a run spec keeps no password (it travels "
            "through XCom, which every Airflow viewer reads); run again with this store."
        )
    return configured_url


def _redacting_factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: left for the handler to report
            return record
        record.msg, record.args = redact_credentials(message), ()
        if record.exc_info and not record.exc_text:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = redact_credentials(text.rstrip("\n"))
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    return factory


def redact_logged_credentials() -> None:
    """Make every log record of this process carry URLs without their passwords, message
    and traceback alike, whoever logs it and whatever handler writes it (idempotent)."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "redacts", False):
        logging.setLogRecordFactory(_redacting_factory(current))
