"""The JSON codec: what conveyor stores for a value, and the error for a value
that is not JSON."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    value=_JSON,
    before=st.sampled_from(["", " ", "\n\t "]),
    after=st.sampled_from(["", " ", "\r\n"]),
)
def test_decode_reads_what_json_loads_reads(value: Any, before: str, after: str) -> None:
    for text in (json.dumps(value), json.dumps(value, separators=(",", ":"), indent=1)):
        text = before + text + after
        assert repr(decode_json(text)) == repr(json.loads(text))


@pytest.mark.parametrize(
    "text", ["", " ", "{", '{"a":1} x', "[1,]", "nul", "1 2", '"\\x"', "{'a': 1}", "[1] [2]"]
)
def test_decode_refuses_what_json_loads_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as stock:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as ours:
        decode_json(text)
    assert str(ours.value) == str(stock.value)


def test_decode_takes_bytes_as_json_loads_does() -> None:
    assert decode_json(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
