"""The JSON codec of payloads, results and cache values: one place that
says what JSON conveyor stores and what a value that is not JSON gets.

Compact separators keep stored rows small; NaN and infinity are refused
because other JSON readers (and PostgreSQL's jsonb) reject them.
"""

from __future__ import annotations

import json
import json.scanner
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from conveyor.job import InvalidPayloadError


def encode_json(value: Any, what: str) -> str:
    """JSON text of a payload or result, with a clear error when it is not JSON.

    `what` names the value in that error, e.g. "the result of job 'send'"."""
    if value is None:  # most handlers return nothing: skip the encoder
        return "null"
    if isinstance(value, BaseModel):
        try:
            return value.model_dump_json()
        except PydanticSerializationError as exc:  # e.g. bytes that are not UTF-8
            raise InvalidPayloadError(f"{what} is not JSON: {exc}") from exc
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidPayloadError(f"{what} is not JSON: {exc}") from exc
    if "\\ud" in text:  # a surrogate's escape, maybe: rare, so checked only then
        _refuse_surrogates(value, what)
    return text


def _refuse_surrogates(value: Any, what: str) -> None:
    """A string holding a surrogate (a lone one: a file name decoded from
    bytes that are not UTF-8) is no Unicode text: PostgreSQL refuses its
    JSON escape, and a worker could never store it. Refused here, saying so."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise InvalidPayloadError(
            f"{what} is not JSON: it holds {bad!r}, a surrogate that is no Unicode character"
            " (text decoded from bytes that are not UTF-8?); decode with errors='replace',"
            " or send the bytes as base64"
        ) from None


def storable(text: str) -> str:
    """`text` as every store takes it: UTF-8 cannot hold a surrogate (a file
    name decoded from bytes that are not UTF-8), which is shown escaped. For
    what is shown of a job (errors, tracebacks, log lines), not its data."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def storable_fields(value: Any) -> Any:
    """`value` (a log line's fields) with `storable` text throughout."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable_fields(key): storable_fields(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable_fields(item) for item in value]
    return value


# The standard library's own scanner (C), which json.loads calls after checks
# that cost it five times the scan of a small payload: every job a worker
# takes is decoded here, so the scan is tried first and json.loads kept for
# what the scan alone cannot judge (whitespace around, bytes, bad text).
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def decode_json(text: str | bytes) -> Any:
    """The value of JSON text that `encode_json` wrote (json.loads's value
    and errors for any text)."""
    if type(text) is str:
        try:
            value, end = _scan(text, 0)
        except (StopIteration, ValueError):
            pass
        else:
            if end == len(text):
                return value
    return json.loads(text)
