"""Record framing in C (streamhouse/log/records/_framing.c) against the numpy path: the same
records from the same batches, and the same outcome (rows, or the error naming the record)
from damaged ones."""

from __future__ import annotations

import random

import pytest

from streamhouse.errors import CorruptRecordError
from streamhouse.log.records import Compression, framing
from streamhouse.log.records.build import build_batch
from streamhouse.log.records.decode import decode_records

pytestmark = pytest.mark.skipif(
    not framing.native, reason="the C framing library is not built (pip install -e .)"
)


def _batches(rng: random.Random) -> list[bytes]:
    batches, offset = [], 0
    for _ in range(rng.randint(1, 6)):
        n = rng.choice([9, 40, 300, 3000])
        values = [
            None if rng.random() < 0.05 else bytes(rng.getrandbits(8) for _ in range(size))
            for size in (rng.choice([0, 3, 12, 13, 90, 200, 20000]) for _ in range(n))
        ]
        keys = None
        if rng.random() < 0.5:
            keys = [None if rng.random() < 0.3 else b"k%d" % rng.randint(0, 99) for _ in values]
        headers = None
        if rng.random() < 0.3:
            headers = [[("h", b"v")] if rng.random() < 0.5 else [] for _ in values]
        timestamps = [1_700_000_000_000 + rng.randint(-(10**9), 10**9) for _ in values]
        codec = rng.choice([Compression.NONE, Compression.LZ4])
        batches.append(
            build_batch(values, keys, timestamps, headers, compression=codec, base_offset=offset)
        )
        offset += n + rng.randint(0, 5)
    return batches


def _outcome(buffers: list[bytes], native: bool, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(framing, "native", native)
    try:
        decoded = decode_records(
            buffers, [(5, 10**9)] * len(buffers), verify=False, json_lines=True
        )
    except CorruptRecordError as exc:
        return "error", str(exc)
    table = decoded.table
    table = table.set_column(3, "value", table["value"].cast("binary"))  # views: as bytes
    return "rows", table.to_pylist(), decoded.source.tolist()


@pytest.mark.parametrize("seed", range(12))
def test_native_framing_decodes_as_numpy_does(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    buffers = [b"".join(_batches(rng)) for _ in range(rng.randint(1, 3))]
    native = _outcome(buffers, True, monkeypatch)
    assert native[0] == "rows" and len(native[1]) > 0
    assert native == _outcome(buffers, False, monkeypatch)


@pytest.mark.parametrize("seed", range(40))
def test_native_framing_of_damaged_records_fails_as_numpy_does(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    batch = bytearray(build_batch([b'{"a": %d}' % i * rng.randint(1, 3) for i in range(50)]))
    for _ in range(rng.randint(1, 4)):  # bytes of the records section (after the header)
        batch[rng.randrange(61, len(batch))] = rng.getrandbits(8)
    assert _outcome([bytes(batch)], True, monkeypatch) == _outcome(
        [bytes(batch)], False, monkeypatch
    )
