"""The segment object: one object per flush holding the record batches of many partitions.

Layout (all integers big-endian)::

    header   MAGIC                                   8 bytes  b"SHSEG\\x00\\x00\\x01"
    data     one run per (topic, partition), sorted by (topic, partition); a run is the
             partition's Kafka RecordBatch v2 bytes back to back, exactly as stored
    footer   topic_count u32
             topic_count x (name_length u16, name utf-8)
             entry_count u32
             entry_count x entry, 64 bytes each:
                 topic_index u32, partition i32, base_offset i64, last_offset i64,
                 position u64, length u64, min_timestamp i64, max_timestamp i64,
                 record_count u32, crc32c of the run u32
    trailer  footer_offset u64, footer_length u32,
             crc32c u32 (of footer bytes + footer_offset + footer_length), MAGIC
                                                     24 bytes = TRAILER_SIZE

``position`` is the run's byte offset from the start of the object. The fixed-size trailer
lets a reader fetch the footer with one tail range-read (:func:`read_footer_from_store`)
and then one range-read per partition run (:func:`read_entry_from_store`).

>>> builder = SegmentBuilder()
>>> builder.add("t", 0, b"batch-bytes", base_offset=0, last_offset=2,
...             min_timestamp=10, max_timestamp=12, record_count=3)
>>> data, entries = builder.build()
>>> read_footer(data, "k") == entries, check_entry(data, entries[0], "k")
(True, b'batch-bytes')
"""

from __future__ import annotations

import logging
import struct
import uuid
from dataclasses import dataclass

import crc32c

from streamhouse.errors import CorruptSegmentError
from streamhouse.log.objectstore import ObjectStore

logger = logging.getLogger(__name__)

__all__ = [
    "MAGIC",
    "SEGMENT_PREFIX",
    "TRAILER_SIZE",
    "SegmentBuilder",
    "SegmentEntry",
    "check_entry",
    "read_entry_from_store",
    "read_footer",
    "read_footer_from_store",
    "segment_key",
]

MAGIC = b"SHSEG\x00\x00\x01"
SEGMENT_PREFIX = "segments/"
"""Every segment object's key starts with this; nothing else in the store does."""
HEADER_SIZE = len(MAGIC)
_ENTRY = struct.Struct(">IiqqQQqqII")
_TRAILER_HEAD = struct.Struct(">QI")
_TRAILER = struct.Struct(">QII8s")
TRAILER_SIZE = _TRAILER.size
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
# A tail read this large catches the footer of most segments in the same request.
TAIL_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class SegmentEntry:
    """Where one partition's run of record batches lies in a segment object, and what it holds."""

    topic: str
    partition: int
    base_offset: int
    last_offset: int
    position: int
    length: int
    min_timestamp: int
    max_timestamp: int
    record_count: int
    crc: int


class _Run:
    __slots__ = (
        "chunks",
        "length",
        "base_offset",
        "last_offset",
        "min_timestamp",
        "max_timestamp",
        "record_count",
    )

    def __init__(
        self, base_offset: int, last_offset: int, min_ts: int, max_ts: int, count: int
    ) -> None:
        self.chunks: list[bytes | bytearray] = []
        self.length = 0
        self.base_offset = base_offset
        self.last_offset = last_offset
        self.min_timestamp = min_ts
        self.max_timestamp = max_ts
        self.record_count = count


class SegmentBuilder:
    """Collects batches of many partitions and encodes them as one segment object.

    Adding the same (topic, partition) again appends to its run; offsets must ascend.
    """

    def __init__(self) -> None:
        self._runs: dict[tuple[str, int], _Run] = {}
        self._size = HEADER_SIZE

    @property
    def size(self) -> int:
        """Bytes of header and batches added so far (the footer comes on top)."""
        return self._size

    def __len__(self) -> int:
        """Number of (topic, partition) runs, i.e. of footer entries."""
        return len(self._runs)

    def add(
        self,
        topic: str,
        partition: int,
        batches: bytes | bytearray,
        *,
        base_offset: int,
        last_offset: int,
        min_timestamp: int,
        max_timestamp: int,
        record_count: int,
    ) -> None:
        """Append ``batches`` (RecordBatch v2 bytes holding offsets base..last) to the partition's run.

        A ``bytearray`` is kept as it is, not copied: it must not change until :meth:`build`."""
        if not batches:
            raise ValueError(f"no batch bytes for {topic}/{partition}")
        if last_offset < base_offset:
            raise ValueError(f"last offset {last_offset} < base offset {base_offset}")
        if record_count < 0 or record_count > 0xFFFFFFFF:
            raise ValueError(f"record count {record_count} out of range")
        run = self._runs.get((topic, partition))
        if run is not None and run.record_count + record_count > 0xFFFFFFFF:
            raise ValueError(f"{topic}/{partition}: more than 2**32 records in one segment")
        if run is None:
            _check_topic(topic)
            run = self._runs[(topic, partition)] = _Run(
                base_offset, last_offset, min_timestamp, max_timestamp, 0
            )
        elif base_offset <= run.last_offset:
            raise ValueError(
                f"{topic}/{partition}: base offset {base_offset} not after {run.last_offset}"
            )
        else:
            run.last_offset = last_offset
            run.min_timestamp = min(run.min_timestamp, min_timestamp)
            run.max_timestamp = max(run.max_timestamp, max_timestamp)
        run.chunks.append(batches if isinstance(batches, bytes | bytearray) else bytes(batches))
        run.length += len(batches)
        run.record_count += record_count
        self._size += len(batches)

    def build(self) -> tuple[bytes, list[SegmentEntry]]:
        """The object's bytes and its entries (sorted by topic, partition), as :func:`read_footer` returns them."""
        parts: list[bytes] = [MAGIC]
        entries: list[SegmentEntry] = []
        position = HEADER_SIZE
        for (topic, partition), run in sorted(self._runs.items()):
            crc = 0
            for chunk in run.chunks:
                crc = crc32c.crc32c(chunk, crc)
            parts.extend(run.chunks)
            entries.append(
                SegmentEntry(
                    topic,
                    partition,
                    run.base_offset,
                    run.last_offset,
                    position,
                    run.length,
                    run.min_timestamp,
                    run.max_timestamp,
                    run.record_count,
                    crc,
                )
            )
            position += run.length
        footer = _encode_footer(entries)
        head = _TRAILER_HEAD.pack(position, len(footer))
        crc = crc32c.crc32c(head, crc32c.crc32c(footer))
        parts.append(footer)
        parts.append(_TRAILER.pack(position, len(footer), crc, MAGIC))
        return b"".join(parts), entries


def _check_topic(topic: str) -> None:
    if len(topic.encode()) > 0xFFFF:
        raise ValueError(f"topic name too long: {topic[:40]!r}...")


def _encode_footer(entries: list[SegmentEntry]) -> bytes:
    topics: dict[str, int] = {}
    for e in entries:
        topics.setdefault(e.topic, len(topics))
    parts = [_U32.pack(len(topics))]
    for topic in topics:
        name = topic.encode()
        parts.append(_U16.pack(len(name)))
        parts.append(name)
    parts.append(_U32.pack(len(entries)))
    parts.extend(
        _ENTRY.pack(
            topics[e.topic],
            e.partition,
            e.base_offset,
            e.last_offset,
            e.position,
            e.length,
            e.min_timestamp,
            e.max_timestamp,
            e.record_count,
            e.crc,
        )
        for e in entries
    )
    return b"".join(parts)


def _parse_trailer(trailer: bytes, key: str) -> tuple[int, int, int]:
    """(footer_offset, footer_length, crc) from the last TRAILER_SIZE bytes."""
    if len(trailer) < TRAILER_SIZE:
        raise CorruptSegmentError(key, f"{len(trailer)} bytes is too short for a segment")
    offset, length, crc, magic = _TRAILER.unpack_from(trailer, len(trailer) - TRAILER_SIZE)
    if magic != MAGIC:
        raise CorruptSegmentError(key, "bad trailer magic (truncated or not a segment)")
    if offset < HEADER_SIZE:
        raise CorruptSegmentError(key, f"footer offset {offset} inside the header")
    return offset, length, crc


def _decode_footer(footer: bytes, offset: int, crc: int, key: str) -> list[SegmentEntry]:
    if crc32c.crc32c(_TRAILER_HEAD.pack(offset, len(footer)), crc32c.crc32c(footer)) != crc:
        raise CorruptSegmentError(key, "footer checksum mismatch")
    try:
        (topic_count,) = _U32.unpack_from(footer, 0)
        pos = _U32.size
        topics: list[str] = []
        for _ in range(topic_count):
            (n,) = _U16.unpack_from(footer, pos)
            pos += _U16.size
            if pos + n > len(footer):
                raise CorruptSegmentError(key, "footer topic name runs past its end")
            topics.append(footer[pos : pos + n].decode())
            pos += n
        (entry_count,) = _U32.unpack_from(footer, pos)
        pos += _U32.size
        if pos + entry_count * _ENTRY.size != len(footer):
            raise CorruptSegmentError(key, "footer length does not match its entry count")
        entries = []
        for t, *rest in _ENTRY.iter_unpack(footer[pos:]):
            entry = SegmentEntry(topics[t], *rest)
            if entry.position < HEADER_SIZE or entry.position + entry.length > offset:
                raise CorruptSegmentError(key, f"entry {entry} lies outside the data region")
            entries.append(entry)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise CorruptSegmentError(key, f"malformed footer: {exc}") from None
    return entries


def read_footer(data: bytes, key: str) -> list[SegmentEntry]:
    """The entries of the whole segment object ``data`` (named ``key`` in errors)."""
    offset, length, crc = _parse_trailer(data, key)
    if not data.startswith(MAGIC):
        raise CorruptSegmentError(key, "bad header magic")
    if offset + length + TRAILER_SIZE != len(data):
        raise CorruptSegmentError(
            key, f"trailer says {offset + length + TRAILER_SIZE} bytes, object has {len(data)}"
        )
    return _decode_footer(data[offset : offset + length], offset, crc, key)


def read_footer_from_store(store: ObjectStore, key: str) -> list[SegmentEntry]:
    """The entries of the object ``key`` in ``store``; usually one tail range-read, at most two."""
    tail = store.get_tail(key, TAIL_READ_SIZE)
    offset, length, crc = _parse_trailer(tail, key)
    if len(tail) < TAIL_READ_SIZE:  # the tail is the whole object: check it all
        return read_footer(tail, key)
    if length + TRAILER_SIZE <= len(tail):
        footer = tail[len(tail) - TRAILER_SIZE - length : len(tail) - TRAILER_SIZE]
    else:
        footer = store.get(key, offset, offset + length)
        if len(footer) != length:
            raise CorruptSegmentError(key, f"footer truncated: {len(footer)} of {length} bytes")
    return _decode_footer(footer, offset, crc, key)


def check_entry(data: bytes, entry: SegmentEntry, key: str) -> bytes:
    """The run's bytes, if their CRC-32C matches ``entry.crc``.

    ``data`` is the whole object or exactly the run (``len(data) == entry.length``; a whole
    object is always longer than any of its runs).
    """
    if len(data) == entry.length:
        run = bytes(data)
    else:
        run = bytes(data[entry.position : entry.position + entry.length])
        if len(run) != entry.length:
            raise CorruptSegmentError(
                key,
                f"run of {entry.topic}/{entry.partition} truncated: {len(run)} of {entry.length} bytes",
            )
    if crc32c.crc32c(run) != entry.crc:
        raise CorruptSegmentError(
            key, f"checksum mismatch in the run of {entry.topic}/{entry.partition}"
        )
    return run


def read_entry_from_store(store: ObjectStore, key: str, entry: SegmentEntry) -> bytes:
    """The run of ``entry`` from the object ``key``: one range-read, checksum verified."""
    return check_entry(store.get(key, entry.position, entry.position + entry.length), entry, key)


def segment_key(sequence: int) -> str:
    """A fresh object key for segment ``sequence``; keys sort by sequence.

    >>> segment_key(42)[:30]
    'segments/00000000000000000042-'
    """
    if sequence < 0:
        raise ValueError(f"segment sequence {sequence} must not be negative")
    return f"{SEGMENT_PREFIX}{sequence:020d}-{uuid.uuid4().hex[:8]}.seg"
