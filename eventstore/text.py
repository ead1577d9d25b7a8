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


#: The password of a URL's userinfo (``scheme://user:password@host``; a password may hold
#: an unencoded ``/``, which SQLAlchemy accepts). Bounded repeats: a line of many
#: ``a://b:`` took seconds (each start scanned to the end of the line).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^\s/@:]{0,256}:)[^\s@]{0,256}(?=@)")
#: What stands for a password in a redacted URL.
HIDDEN = "***"


def redact_credentials(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (an MLflow or
    database error names the URL it could not reach, userinfo and all)."""
    return _URL_PASSWORD.sub(rf"\g<head>{HIDDEN}", text)


def with_password(hidden: str, configured: Callable[[], str], name: str) -> str:
    """The URL ``hidden`` (:func:`redact_credentials` of it, as a run spec holds it) with
    its password: that of the URL ``configured()`` reads, where that is the same URL; a URL
    without a password as it is (nothing read). ``ValueError`` naming ``name`` when the
    configured URL is another one."""
    if f":{HIDDEN}@" not in hidden:
        return hidden  # no password was taken out
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
