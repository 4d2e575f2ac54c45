"""The records of an exchange (:mod:`.exchange`): their bytes, written and read without copies.

An exchange record is one Kafka record batch (magic 2, uncompressed) holding one record per
producing task, micro-batch and consuming task: its key ``<task>:<sequence>:<watermark>:<idle>``,
its value the rows as an Arrow IPC stream (empty without rows), its headers the producer's
progress. The value is megabytes (the source rows of a micro-batch), so every pass over it
counts:

- :func:`exchange_batch` writes the Arrow IPC stream straight into the batch (sized first by
  a dry run), instead of into a buffer of its own that framing then copies; its CRC-32C is
  computed once, and :meth:`~streamhouse.log.Log.append_together` (``framed_here``) neither
  checks it again nor copies the batch on its way into the segment.
- :func:`read_exchange` reads the batches as their segment objects hold them (checked by the
  run's CRC-32C, never re-stamped: the exchange's partitions are appended by every producing
  task, so most runs were written at other offsets than the index gave them, and a re-stamp
  copies the whole run), each value a view of the object for ``pyarrow.ipc`` to read in
  place, instead of decoding the records into Arrow arrays (a copy) and taking each value out
  (another).

The bytes are those :func:`~streamhouse.log.records.build_batch` makes of the same record,
and batches in any other form (compressed, several records: written by an earlier version)
are read through the generic decoder, so exchange topics of earlier versions read alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import crc32c
import pyarrow as pa

from streamhouse.errors import CorruptRecordError
from streamhouse.log import Log
from streamhouse.log.isolation import Isolation
from streamhouse.log.records import BATCH_OVERHEAD, Compression, decode_batches, read_header
from streamhouse.log.records.header import CRC_COVERED, FRAMING, LENGTH_END
from streamhouse.log.records.varints import encode_varint, read_varint
from streamhouse.sql.source import RunScan

_CRC_START = FRAMING.size  # the CRC covers the batch from its attributes on
_NO_PRODUCER = -1


@dataclass(frozen=True, slots=True)
class ExchangeRecord:
    """One exchange record as read: its key, and its value as a view of the segment object
    (None when it is null)."""

    partition: int
    offset: int
    key: bytes | None
    value: pa.Buffer | None


def ipc_size(rows: pa.Table) -> int:
    """The bytes of ``rows`` as an Arrow IPC stream (a dry run that copies nothing)."""
    sized = pa.MockOutputStream()
    with pa.ipc.new_stream(sized, rows.schema) as writer:
        writer.write_table(rows)
    return sized.size()


def write_ipc(rows: pa.Table, into: memoryview) -> None:
    """``rows`` as an Arrow IPC stream into ``into`` (exactly :func:`ipc_size` bytes)."""
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(pa.py_buffer(into)), rows.schema) as writer:
        writer.write_table(rows)


def exchange_batch(
    rows: pa.Table | None,
    key: bytes,
    headers: Sequence[tuple[str, bytes]] = (),
    timestamp_ms: int | None = None,
) -> bytearray:
    """The record batch of one exchange record: ``rows`` (none, or no rows: an empty value)
    as an Arrow IPC stream written in place, keyed ``key``, with ``headers``; stamped
    ``timestamp_ms`` (default: now), offset 0.

    >>> from streamhouse.log.records import build_batch, decode_batches
    >>> from streamhouse.runtime.exchange import encode
    >>> rows = pa.table({"a": [1, 2]})
    >>> batch = exchange_batch(rows, b"0:1:5:0", [("h", b"v")], 7)
    >>> bytes(batch) == build_batch([encode(rows)], [b"0:1:5:0"], [7], [[("h", b"v")]])
    True
    >>> value = decode_batches(bytes(batch))["value"][0].as_py()
    >>> pa.ipc.open_stream(value).read_all().equals(rows)
    True
    """
    size = ipc_size(rows) if rows is not None and rows.num_rows else 0
    # attributes | timestampDelta | offsetDelta | keyLength | key | valueLength
    head = b"".join((b"\x00\x00\x00", encode_varint(len(key)), key, encode_varint(size)))
    tail = [encode_varint(len(headers))]
    for name, value in headers:
        tail += (encode_varint(len(name.encode())), name.encode(), encode_varint(len(value)), value)
    trailer = b"".join(tail)
    record_head = encode_varint(len(head) + size + len(trailer)) + head
    total = BATCH_OVERHEAD + len(record_head) + size + len(trailer)
    out = bytearray(total)
    view = memoryview(out)
    at = BATCH_OVERHEAD + len(record_head)
    view[BATCH_OVERHEAD:at] = record_head
    if size:
        assert rows is not None
        write_ipc(rows, view[at : at + size])
    view[at + size :] = trailer
    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    CRC_COVERED.pack_into(
        out, _CRC_START, int(Compression.NONE), 0, now, now, _NO_PRODUCER, -1, -1, 1
    )
    crc = crc32c.crc32c(view[_CRC_START:])
    FRAMING.pack_into(out, 0, 0, total - LENGTH_END, -1, 2, crc)  # magic 2, no leader epoch
    return out


def read_exchange(
    log_: Log, topic: str, partitions: list[int], starts: dict[int, int], ends: dict[int, int]
) -> list[ExchangeRecord]:
    """The records of ``topic``'s ``partitions`` at offsets ``[starts[p], ends[p])``, in order,
    their values views of the segment objects (see the module's docstring)."""
    # the bounds a scan of the records has (the topic known, no start below the log's)
    bounds = RunScan(
        log_, topic, partitions, starts, ends, read=False, isolation=Isolation.READ_UNCOMMITTED
    )
    starts = bounds.starts
    out: list[ExchangeRecord] = []
    for row, run, delta in log_.reader.scan_as_written(topic, partitions, starts, ends):
        start, end = starts.get(row.partition, 0), ends[row.partition]
        pos = 0
        while pos < len(run):
            header = read_header(run, pos)
            stop = pos + header.size
            if stop > len(run):
                raise CorruptRecordError(f"{topic}-{row.partition}: batch cut short at {pos}")
            offset = header.base_offset + delta
            if offset >= end:
                break
            if header.is_control or offset + header.last_offset_delta < start:
                pass
            elif header.compression == Compression.NONE and header.record_count == 1:
                key, value = _one_record(run, pos + BATCH_OVERHEAD, stop)
                out.append(ExchangeRecord(row.partition, offset, key, value))
            else:  # an earlier version's batch: decoded (a copy)
                out += _decoded(row.partition, run[pos:stop], delta, start, end)
            pos = stop
    return out


def _one_record(run: memoryview, pos: int, stop: int) -> tuple[bytes | None, pa.Buffer | None]:
    """The key and value (a view) of the record at ``pos`` (its batch ends at ``stop``)."""
    _, pos = read_varint(run, pos)  # length
    pos += 1  # attributes
    _, pos = read_varint(run, pos)  # timestampDelta
    _, pos = read_varint(run, pos)  # offsetDelta
    key, pos = _sized(run, pos, stop)
    value, pos = _sized(run, pos, stop)
    return (bytes(key) if key is not None else None), (
        pa.py_buffer(value) if value is not None else None
    )


def _sized(run: memoryview, pos: int, stop: int) -> tuple[memoryview | None, int]:
    length, pos = read_varint(run, pos)
    if length < 0:
        return None, pos
    if pos + length > stop:
        raise CorruptRecordError(f"record field of {length} bytes runs past its batch")
    return run[pos : pos + length], pos + length


def _decoded(
    partition: int, batch: memoryview, delta: int, start: int, end: int
) -> list[ExchangeRecord]:
    records = decode_batches(batch, verify=False)
    out = []
    offsets = records["offset"].to_pylist()
    keys, values = records["key"].to_pylist(), records["value"].to_pylist()
    for offset, key, value in zip(offsets, keys, values, strict=True):
        if start <= offset + delta < end:
            buffer = pa.py_buffer(value) if value is not None else None
            out.append(ExchangeRecord(partition, offset + delta, key, buffer))
    return out


__all__ = ["ExchangeRecord", "exchange_batch", "ipc_size", "read_exchange", "write_ipc"]
