"""Kafka RecordBatch v2 (magic 2): parse, verify, build and decode to Arrow.

A batch is a 61-byte header followed by ``record_count`` records, possibly compressed as
one block. The layout (big-endian)::

    baseOffset int64 | batchLength int32 | partitionLeaderEpoch int32 | magic int8 |
    crc uint32 | attributes int16 | lastOffsetDelta int32 | baseTimestamp int64 |
    maxTimestamp int64 | producerId int64 | producerEpoch int16 | baseSequence int32 |
    recordCount int32 | records...

``batchLength`` counts the bytes after itself; the CRC-32C covers ``attributes`` to the end,
so changing ``baseOffset`` never touches it. Each record is::

    length varint | attributes int8 | timestampDelta varlong | offsetDelta varint |
    keyLength varint | key | valueLength varint | value | headerCount varint |
    (headerKeyLength varint | headerKey | headerValueLength varint | headerValue)*

Varints are zigzag-encoded; a length of -1 means null.

The package has one module per concept:

- :mod:`~streamhouse.log.records.header`: the header layout, spelled once, and framing
  (:func:`read_header`, :func:`split_batches`, :func:`verify_crc`);
- :mod:`~streamhouse.log.records.codecs`: decompression and compression;
- :mod:`~streamhouse.log.records.varints`: varints in plain Python and with numpy;
- :mod:`~streamhouse.log.records.build`: :func:`build_batch`;
- :mod:`~streamhouse.log.records.decode`: :func:`decode_batches`, :func:`decode_records`;
- :mod:`~streamhouse.log.records.json_lines`: values as JSON lines for SQL sources.

>>> batch = build_batch([b"a", None], keys=[b"k", None], timestamps=[1000, 1001])
>>> decode_batches(batch).column("value").to_pylist()
[b'a', None]
"""

from streamhouse.log.records.build import build_batch
from streamhouse.log.records.decode import (
    DECODED_SCHEMA,
    VIEW_SCHEMA,
    DecodedRecords,
    decode_batches,
    decode_records,
)
from streamhouse.log.records.header import (
    BATCH_OVERHEAD,
    BatchHeader,
    Compression,
    first_base_offset,
    read_header,
    shift_offsets,
    split_batches,
    verify_crc,
)
from streamhouse.log.records.json_lines import JsonLines

__all__ = [
    "BATCH_OVERHEAD",
    "DECODED_SCHEMA",
    "VIEW_SCHEMA",
    "BatchHeader",
    "Compression",
    "DecodedRecords",
    "JsonLines",
    "build_batch",
    "decode_batches",
    "decode_records",
    "first_base_offset",
    "read_header",
    "shift_offsets",
    "split_batches",
    "verify_crc",
]
