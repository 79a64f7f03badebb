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
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidPayloadError(f"{what} is not JSON: {exc}") from exc


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
