"""Redaction: payload fields a dashboard never shows (passwords, tokens).

Rules are per job type: `{"email.welcome": ["password"], "*": ["token"]}`;
`"*"` applies to every job type. A rule names a field, matched without
regard to case at any depth of the payload (inside nested objects and
lists), and in a job's result and `ctx.log` lines too, since handlers often
echo what they were given. The value is replaced, the key is kept, so a
reader still sees that the field was there.

Handlers also echo payloads in free text: `raise ValueError(f"bad {payload}")`
puts the password in the job's error, its traceback and its attempt history.
So the values a job's payload holds under redacted fields are also hidden
wherever they appear inside the strings of that job's view (values shorter
than `MIN_ECHOED` characters only where a whole string equals them: hiding
every "42" in a traceback would hide line numbers, not secrets).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from types import EllipsisType
from typing import Any

from conveyor.job import InvalidOptionError

REDACTED = "[redacted]"
EVERY_JOB = "*"
MIN_ECHOED = 4
# The parts of a job's view where a handler's own text lands; ids, names,
# states and times are conveyor's and stay as they are.
FREE_TEXT = ("result", "error", "traceback", "history", "logs", "key")

# What is hidden when the caller says nothing: names that hold a secret in
# nearly every code base. `redact=None` shows everything; a mapping of one's
# own replaces these (add `"*": DEFAULT_FIELDS` to keep them).
DEFAULT_FIELDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "access_token",
    "refresh_token",
)

RedactRules = Mapping[str, Iterable[str]] | None | EllipsisType


class Redaction:
    """Applies redaction rules to the values a dashboard shows."""

    def __init__(self, rules: RedactRules = ...) -> None:
        if rules is ...:
            rules = {EVERY_JOB: DEFAULT_FIELDS}
        self._rules: dict[str, frozenset[str]] = {}
        for job_name, fields in (rules or {}).items():
            if not isinstance(job_name, str) or not job_name:
                raise InvalidOptionError(f"redact: a job name must be a string, got {job_name!r}")
            if isinstance(fields, str):
                # `{"job": "password"}` would otherwise redact the letters p, a, s...
                raise InvalidOptionError(
                    f"redact[{job_name!r}] must be a list of field names, got the string "
                    f"{fields!r} (write [{fields!r}])"
                )
            names = frozenset(str(field).lower() for field in fields)
            self._rules[job_name] = names
        self._every = self._rules.pop(EVERY_JOB, frozenset())

    def fields_for(self, job_name: str) -> frozenset[str]:
        return self._every | self._rules.get(job_name, frozenset())

    def apply(self, job_name: str, value: Any) -> Any:
        """`value` with every field the rules name for `job_name` replaced."""
        fields = self.fields_for(job_name)
        return _scrub(value, fields) if fields else value

    def job(self, job_name: str, record: dict[str, Any]) -> dict[str, Any]:
        """A job's JSON view (`Job.to_dict()`) with payload, result and log
        lines redacted, and the redacted payload values hidden in every
        string of the view (error, traceback, history, log messages)."""
        fields = self.fields_for(job_name)
        if not fields:
            return record
        secrets = _secrets(record.get("payload"), fields, found=set())
        view = {
            **record,
            "payload": _scrub(record.get("payload"), fields),
            "result": _scrub(record.get("result"), fields),
            "logs": _scrub(record.get("logs"), fields),
        }
        if not secrets:
            return view
        # Longest first: a secret containing another is hidden whole.
        ordered = sorted(secrets, key=len, reverse=True)
        for key in FREE_TEXT:
            view[key] = _hide(view.get(key), ordered)
        return view


def _scrub(value: Any, fields: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {
            key: REDACTED if str(key).lower() in fields else _scrub(item, fields)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(item, fields) for item in value]
    return value


def _secrets(value: Any, fields: frozenset[str], found: set[str], inside: bool = False) -> set[str]:
    """The texts of the values held under redacted fields, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            _secrets(item, fields, found, inside or str(key).lower() in fields)
    elif isinstance(value, list | tuple):
        for item in value:
            _secrets(item, fields, found, inside)
    elif inside and value is not None and not isinstance(value, bool):
        text = str(value)
        if text and text != REDACTED:
            found.update(_spellings(text))
    return found


def _spellings(text: str) -> set[str]:
    """`text` and the escaped forms a handler's message may show it in:
    repr() (an f-string of the payload) and json.dumps (a log line) double
    backslashes and escape newlines, quotes and non-ASCII."""
    return {
        text,
        repr(text)[1:-1],
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
    }


def _hide(value: Any, secrets: list[str]) -> Any:
    """`value` with every secret inside its strings replaced."""
    if isinstance(value, str):
        if value in secrets:
            return REDACTED
        for secret in secrets:
            if len(secret) >= MIN_ECHOED and secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: _hide(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_hide(item, secrets) for item in value]
    return value
