"""The values kept from the JSON readers are found by vectorized scans of their bytes: the
nesting depth equals that of the values Python parses, and values starting with ``n`` are
found, for every array type a source hands over."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamhouse.sql.json_guard import MAX_JSON_DEPTH, depth, null_first, too_deep, unreadable

# Strings full of what the scanner must not be fooled by: brackets, quotes, backslashes.
TRICKY = st.text(alphabet='[]{}"\\ax', max_size=8)
JSON = st.recursive(
    st.none() | st.integers() | TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=40,
)
TYPES = [pa.binary(), pa.string(), pa.large_binary(), pa.binary_view(), pa.string_view()]


def reference(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(reference, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(reference, value), default=0)
    return 0


def nest(value: Any, levels: int) -> Any:
    for _ in range(levels):
        value = [value]
    return value


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.tuples(JSON, st.integers(0, 12)), min_size=1, max_size=30),
    bound=st.integers(0, 8),
    kind=st.sampled_from(TYPES),
    spaces=st.booleans(),
    start=st.integers(0, 3),
)
def test_too_deep_agrees_with_parsed_values(
    values: list[tuple[Any, int]], bound: int, kind: pa.DataType, spaces: bool, start: int
) -> None:
    parsed = [nest(v, levels) for v, levels in values]
    texts = [json.dumps(v, separators=None if spaces else (",", ":")) for v in parsed]
    array = pa.array(texts if pa.types.is_string(kind) else [t.encode() for t in texts])
    array = array.cast(kind).slice(start)  # an offset into the buffers, as a slice has
    want = [i for i, v in enumerate(parsed[start:]) if reference(v) > bound]
    assert too_deep(array, bound).tolist() == want
    assert [depth(t.encode()) for t in texts] == [reference(v) for v in parsed]


def test_the_bound_is_inclusive_and_nulls_and_strings_do_not_count() -> None:
    at_bound = b'{"a":' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    beyond = b"[" + at_bound + b"]"
    in_string = b'{"s": "' + b"[{" * 200 + b'"}'
    escaped = b'{"s": "\\"' + b"[" * 200 + b'"}'  # an escaped quote does not end the string
    unclosed = b"[" * (MAX_JSON_DEPTH + 1)
    values = pa.array([at_bound, None, beyond, in_string, escaped, b"", unclosed])
    assert too_deep(values).tolist() == [2, 6]
    assert too_deep(pa.chunked_array([values, values])).tolist() == [2, 6, 9, 13]
    assert depth(escaped) == 1 and depth(in_string) == 1
    # Values of one buffer read through overlapping views (the same bytes twice) are found too.
    view = pa.array([beyond, at_bound], pa.binary_view())
    words = np.frombuffer(view.buffers()[1], np.uint8)
    twice = pa.Array.from_buffers(
        pa.binary_view(),
        3,
        [None, pa.py_buffer(np.concatenate([words, words[:16]])), *view.buffers()[2:]],
    )
    assert too_deep(twice).tolist() == [0, 2]


@pytest.mark.parametrize("kind", TYPES)
def test_values_starting_with_n_are_found_in_every_array_type(kind: pa.DataType) -> None:
    texts = ["null", '{"a": null}', " \t null", "n", "", None, "nope, a long value past 12 bytes"]
    texts += ['"null"', "  {}", "x" * 20 + "null", "   ", " " * 30 + "null"]
    values = pa.array(texts).cast(kind)
    assert null_first(values).tolist() == [0, 2, 3, 6, 11]
    assert null_first(values.slice(2)).tolist() == [0, 1, 4, 9]
    assert unreadable(pa.chunked_array([values])) == [
        (0, "not a JSON object"),
        (2, "not a JSON object"),
        (3, "not a JSON object"),
        (6, "not a JSON object"),
        (11, "not a JSON object"),
    ]
