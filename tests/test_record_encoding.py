"""Record encoding in C (streamhouse/log/records/_encode.c) against the numpy and Arrow path:
byte for byte the same records sections, from Arrow values and keys with nulls, empty values,
sliced arrays, and timestamps (given or not)."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from streamhouse.log.records import Compression, build
from streamhouse.log.records.decode import decode_records

pytestmark = pytest.mark.skipif(
    build._encoder is None, reason="the C encoding library is not built (pip install -e .)"
)


def _sections(monkeypatch: pytest.MonkeyPatch, values, keys, timestamps) -> tuple[bytes, bytes]:
    native = build._encode_columns(values, keys, timestamps, None)
    monkeypatch.setattr(build, "_encoder", None)
    numpy = build._encode_columns(values, keys, timestamps, None)
    monkeypatch.undo()
    return (bytes(native[0]), *native[1:]), (bytes(numpy[0]), *numpy[1:])


@pytest.mark.parametrize("seed", range(10))
def test_native_encoding_equals_numpy(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    n = rng.choice([40, 300, 3000])
    sizes = [rng.choice([0, 1, 12, 63, 64, 127, 128, 300, 20_000]) for _ in range(n)]
    values = pa.array(
        [
            None if rng.random() < 0.05 else bytes(rng.getrandbits(8) for _ in range(s))
            for s in sizes
        ],
        pa.binary(),
    )
    keys = None
    if rng.random() < 0.6:
        keys = pa.array(
            [None if rng.random() < 0.3 else b"k%d" % rng.randint(0, 10**6) for _ in range(n)],
            pa.binary(),
        )
    timestamps = None
    if rng.random() < 0.5:
        timestamps = [1_700_000_000_000 + rng.randint(-(10**9), 10**9) for _ in range(n)]
    native, numpy = _sections(monkeypatch, values, keys, timestamps)
    if timestamps is None:  # "now": the base timestamps may differ by a millisecond
        native, numpy = native[0], numpy[0]
    assert native == numpy
    # a slice of the arrays (offsets not from 0), as the sink passes a partition's rows
    lo, hi = n // 3, n // 3 + n // 2
    sliced = _sections(
        monkeypatch,
        values.slice(lo, hi - lo),
        keys.slice(lo, hi - lo) if keys is not None else None,
        timestamps[lo:hi] if timestamps is not None else None,
    )
    assert sliced[0][0] == sliced[1][0]


def test_native_batch_decodes_to_its_rows() -> None:
    values = pa.array([b'{"a":1}', None, b"", b"x" * 5000] * 50, pa.binary())
    keys = pa.array([b"k", None, b"", b"key"] * 50, pa.binary())
    batch = build.build_batch(values, keys, compression=Compression.LZ4, base_offset=7)
    table = decode_records([batch], [(7, 10**9)]).table
    assert table["value"].to_pylist() == values.to_pylist()
    assert table["key"].to_pylist() == keys.to_pylist()
    assert table["offset"].to_pylist() == list(range(7, 207))
