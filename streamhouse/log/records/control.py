"""Transaction markers: the control batches that end a transaction on a partition.

A marker is a batch with the transactional and control attribute bits, stamped with the
producer id and epoch of the transaction it ends, holding one record whose key says COMMIT or
ABORT and whose value carries the coordinator's epoch (Kafka's ``EndTransactionMarker``)::

    key:   version int16 (0) | type int16 (0 ABORT, 1 COMMIT)
    value: version int16 (0) | coordinator_epoch int32

Readers never show markers as records (:func:`~streamhouse.log.records.decode_batches` skips
control batches); Kafka consumers use them to close a producer's transaction.

>>> from streamhouse.log.records import read_header
>>> header = read_header(marker_batch(7, 2, commit=True, timestamp_ms=1000))
>>> header.is_control, header.is_transactional, header.producer_id, header.record_count
(True, True, 7, 1)
>>> marker_type(marker_batch(7, 2, commit=False, timestamp_ms=1000))
0
"""

from __future__ import annotations

import struct
import time
from functools import cache

from streamhouse.log.records.build import encode_records, frame_batch
from streamhouse.log.records.header import (
    ATTR_CONTROL,
    ATTR_TRANSACTIONAL,
    BATCH_OVERHEAD,
    Compression,
)
from streamhouse.log.records.varints import read_varint

__all__ = ["ABORT", "COMMIT", "marker_batch", "marker_type"]

ABORT = 0
COMMIT = 1

_KEY = struct.Struct(">hh")  # version, type
_VALUE = struct.Struct(">hi")  # version, coordinator_epoch
_NO_SEQUENCE = -1


def marker_batch(
    producer_id: int,
    producer_epoch: int,
    *,
    commit: bool,
    coordinator_epoch: int = 0,
    timestamp_ms: int | None = None,
) -> bytes:
    """One control batch ending ``producer_id``'s transaction (at ``producer_epoch``)."""
    stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return frame_batch(
        _marker_record(commit, coordinator_epoch),
        1,
        stamp,
        stamp,
        Compression.NONE,
        0,
        producer_id,
        producer_epoch,
        _NO_SEQUENCE,
        flags=ATTR_TRANSACTIONAL | ATTR_CONTROL,
    )


@cache
def _marker_record(commit: bool, coordinator_epoch: int) -> bytes:
    """The one record of a marker, encoded: its timestamp and offset deltas are 0 whatever
    the batch's timestamp, so it is the same bytes for every COMMIT (or ABORT) of a
    coordinator epoch (EndTxn built it per transaction: ~10 us of the event loop)."""
    key = _KEY.pack(0, COMMIT if commit else ABORT)
    value = _VALUE.pack(0, coordinator_epoch)
    records, _, _ = encode_records([value], [key], [0], None)
    return records


def marker_type(batch: bytes | memoryview) -> int:
    """:data:`COMMIT` or :data:`ABORT`: the type of the (uncompressed) marker ``batch``."""
    data = bytes(batch[BATCH_OVERHEAD:])
    pos = read_varint(data, 0)[1] + 1  # record length, attributes
    pos = read_varint(data, pos)[1]  # timestamp delta
    pos = read_varint(data, pos)[1]  # offset delta
    length, pos = read_varint(data, pos)
    return _KEY.unpack_from(data, pos)[1] if length == _KEY.size else -1
