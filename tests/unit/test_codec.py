"""The JSON codec: what conveyor stores for a value, and the error for a value
that is not JSON."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor.codec import decode_json, encode_json
from conveyor.job import InvalidPayloadError


class Point(BaseModel):
    x: int
    y: int


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        ({"a": [1, 2.5, "é"]}, '{"a":[1,2.5,"\\u00e9"]}'),
        (Point(x=1, y=2), '{"x":1,"y":2}'),
    ],
)
def test_encode_is_compact_json(value: Any, text: str) -> None:
    assert encode_json(value, "the value") == text


def test_round_trip() -> None:
    value = {"n": 3, "tags": ["a", "b"], "nested": {"ok": True, "none": None}}
    assert decode_json(encode_json(value, "the value")) == value


@pytest.mark.parametrize("bad", [{"when": object()}, {1, 2}, math.nan, [math.inf]])
def test_not_json_names_the_value(bad: Any) -> None:
    with pytest.raises(InvalidPayloadError, match=r"^the result of job 'x' is not JSON: "):
        encode_json(bad, "the result of job 'x'")


def test_registry_still_exports_the_encoder() -> None:
    from conveyor.registry import encode_json as from_registry

    assert from_registry is encode_json
