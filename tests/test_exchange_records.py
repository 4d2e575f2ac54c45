"""The exchange's records (:mod:`streamhouse.runtime.exchange_records`) on a real log.

- records appended by two processes' logs at once (most runs indexed at other offsets than
  their batches were written with) read back with the index's offsets, keys and rows, from
  the writer's cache and from the store alike, each value read in place;
- the batches an earlier version wrote (LZ4-compressed, or several records in one batch)
  read alike;
- a record with a bad CRC-32C is refused before it reaches the log (what the exchange hands
  over is checked once, where it is framed).
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest

from streamhouse.config import Settings
from streamhouse.errors import CorruptRecordError
from streamhouse.log import Log
from streamhouse.log.records import Compression, build_batch
from streamhouse.runtime.exchange import append_shares, encode
from streamhouse.runtime.exchange_records import exchange_batch, read_exchange

TOPIC = "q.exchange"


def _rows(rng: random.Random, n: int) -> pa.Table:
    return pa.table(
        {
            "k": pa.array([rng.randrange(1_000) for _ in range(n)], pa.int64()),
            "s": pa.array(["x" * rng.randrange(40) for _ in range(n)], pa.string()),
        }
    )


def test_records_of_two_writers_read_back_in_place_at_the_index_offsets(tmp_path: Path) -> None:
    rng = random.Random(5)
    settings = Settings.load(data_dir=tmp_path, linger_ms=1)
    sent: dict[int, list[tuple[bytes, pa.Table | None]]] = {0: [], 1: []}
    with Log.open(settings) as a, Log.open(settings) as b:
        a.create_topic(TOPIC, partitions=2)
        for sequence in range(1, 9):
            for task, log_ in ((0, a), (1, b)):
                rows = _rows(rng, rng.randrange(1, 300)) if sequence % 4 else None
                shares = None
                if rows is not None:
                    owner = pa.array([k % 2 for k in rows["k"].to_pylist()])
                    shares = [owner.to_numpy(zero_copy_only=False) == t for t in (0, 1)]
                key = f"{task}:{sequence}:{sequence * 10}:0".encode()
                append_shares(log_, TOPIC, 2, rows, shares, key, [("p", b"{}")])
                for target in (0, 1):
                    share = None
                    if rows is not None and shares is not None:
                        share = rows.filter(pa.array(shares[target]))
                    sent[target].append((key, share if share is not None and len(share) else None))
        assert a.writer.stats.sequenced_elsewhere + b.writer.stats.sequenced_elsewhere > 0
        with Log.open(settings) as fresh:  # nothing cached: each run read from the store alone
            for reader in (a, fresh):
                for target in (0, 1):
                    records = read_exchange(reader, TOPIC, [target], {target: 3}, {target: 13})
                    assert [r.offset for r in records] == list(range(3, 13))
                    assert [r.partition for r in records] == [target] * 10
                    for record, (key, share) in zip(records, sent[target][3:13], strict=True):
                        assert record.key == key
                        if share is None:
                            assert record.value is not None and record.value.size == 0
                        else:
                            assert record.value is not None
                            table = pa.ipc.open_stream(record.value).read_all()
                            assert table.equals(share)
        # from the writer's cache: the rows are the object's bytes, not a copy of them
        (row,) = [r for r in a.metadata.segments(TOPIC, 0) if r.base_offset <= 12 <= r.last_offset]
        obj = pa.py_buffer(a.reader._cache.run(row))
        (record,) = read_exchange(a, TOPIC, [0], {0: 12}, {0: 13})
        assert record.value is not None and record.value.size > 0
        column = pa.ipc.open_stream(record.value).read_all()["s"].chunk(0)
        data = column.buffers()[2]
        assert obj.address <= data.address < obj.address + obj.size


def test_batches_of_an_earlier_version_read_alike(tmp_path: Path) -> None:
    """Exchange records LZ4-compressed (as an earlier version wrote them), or several in one
    batch, read as the uncompressed one-record batches do."""
    rows = _rows(random.Random(8), 50)
    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=1)) as log_:
        log_.create_topic(TOPIC, partitions=1)
        log_.append(
            TOPIC, 0, build_batch([encode(rows)], [b"0:1:5:0"], compression=Compression.LZ4)
        ).result(10)
        log_.append(
            TOPIC, 0, build_batch([encode(rows.slice(0, 9)), b""], [b"0:2:6:0", b"0:3:7:1"])
        ).result(10)
        log_.append_together(TOPIC, {0: exchange_batch(rows, b"0:4:8:0")}, framed_here=True)[
            0
        ].result(10)
        records = read_exchange(log_, TOPIC, [0], {0: 0}, {0: 4})
        assert [(r.offset, r.key) for r in records] == [
            (0, b"0:1:5:0"),
            (1, b"0:2:6:0"),
            (2, b"0:3:7:1"),
            (3, b"0:4:8:0"),
        ]
        values = [r.value for r in records]
        assert values[2] is not None and values[2].size == 0
        tables = [pa.ipc.open_stream(v).read_all() for v in values if v is not None and v.size]
        expected = [rows, rows.slice(0, 9), rows]
        assert [t.equals(e) for t, e in zip(tables, expected, strict=True)] == [True] * 3
        # from inside the batch of two: only the second record
        assert [r.offset for r in read_exchange(log_, TOPIC, [0], {0: 2}, {0: 3})] == [2]


def test_a_batch_with_a_bad_crc_is_refused(tmp_path: Path) -> None:
    batch = exchange_batch(_rows(random.Random(2), 20), b"0:1:0:0")
    batch[-1] ^= 0xFF  # the last header byte: the CRC no longer matches
    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=1)) as log_:
        log_.create_topic(TOPIC, partitions=1)
        with pytest.raises(CorruptRecordError, match="CRC"):
            log_.append_together(TOPIC, {0: bytes(batch)})
