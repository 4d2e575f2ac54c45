"""An Iceberg table's current state read straight from its files: the metadata JSON, the
snapshot's manifest list and its manifests (Avro object container files), without pyiceberg.

A bounded query plans its read of a stream's table from these (:mod:`streamhouse.iceberg.read`);
importing pyiceberg (pydantic models, about half a CPU second) would cost more than the read.
Only what a read needs is kept: the current snapshot, its ancestors' summaries, and the data
files the snapshot holds. A table with delete files (StreamHouse writes none) is refused with
:class:`UnsupportedTable`, and the caller opens it with pyiceberg instead.

The Avro decoder follows the specification's binary encoding
(https://avro.apache.org/docs/1.11.1/specification/): zig-zag varints, blocks of arrays and
maps, unions as a branch index; codecs ``null`` and ``deflate``.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["DataFile", "TableState", "UnsupportedTable", "read_avro", "table_state"]

MAGIC = b"Obj\x01"
SYNC_SIZE = 16
DATA_CONTENT = 0  # manifest list "content" and data file "content": data (1, 2: deletes)
DELETED = 2  # manifest entry "status": 0 existing, 1 added, 2 deleted


class UnsupportedTable(Exception):
    """The table uses something this reader does not read (pyiceberg does)."""


@dataclass(frozen=True)
class DataFile:
    """One Parquet file of a snapshot: its location (a URI) and size in bytes."""

    path: str
    size: int


@dataclass(frozen=True)
class TableState:
    """The current snapshot's id (None: no snapshot), the summaries of it and its ancestors,
    newest first, and the data files it holds."""

    snapshot_id: int | None
    summaries: list[tuple[int, dict[str, str]]]
    files: list[DataFile]


def table_state(metadata_location: str, read: Callable[[str], bytes]) -> TableState:
    """The state of the table whose metadata file is ``metadata_location``; ``read`` gives
    a file's bytes by its location."""
    metadata = json.loads(read(metadata_location))
    current = metadata.get("current-snapshot-id")
    if current is None or current == -1:
        return TableState(None, [], [])
    snapshots = {s["snapshot-id"]: s for s in metadata.get("snapshots", [])}
    summaries = []
    snapshot_id: int | None = current
    while snapshot_id is not None and snapshot_id in snapshots:
        snapshot = snapshots[snapshot_id]
        summaries.append((snapshot_id, snapshot.get("summary", {})))
        snapshot_id = snapshot.get("parent-snapshot-id")
    files = []
    for manifest in read_avro(read(snapshots[current]["manifest-list"])):
        if manifest.get("content", DATA_CONTENT) != DATA_CONTENT:
            raise UnsupportedTable("the table has delete files")
        for entry in read_avro(read(manifest["manifest_path"])):
            data_file = entry["data_file"]
            if entry["status"] == DELETED:
                continue
            if data_file.get("content", DATA_CONTENT) != DATA_CONTENT:
                raise UnsupportedTable("the table has delete files")
            files.append(DataFile(data_file["file_path"], data_file["file_size_in_bytes"]))
    return TableState(current, summaries, files)


def read_avro(data: bytes) -> Iterator[dict[str, Any]]:
    """The records of an Avro object container file."""
    stream = io.BytesIO(data)
    if stream.read(len(MAGIC)) != MAGIC:
        raise UnsupportedTable("not an Avro object container file")
    header = _Decoder(stream).read({"type": "map", "values": "bytes"}, {})
    sync = stream.read(SYNC_SIZE)
    codec = header.get("avro.codec", b"null").decode()
    if codec not in ("null", "deflate"):
        raise UnsupportedTable(f"Avro codec {codec!r}")
    schema = json.loads(header["avro.schema"])
    names: dict[str, Any] = {}
    while True:
        decoder = _Decoder(stream)
        if stream.tell() == len(data):
            return
        count = decoder.long()
        block = stream.read(decoder.long())
        if codec == "deflate":
            block = zlib.decompress(block, -15)
        if stream.read(SYNC_SIZE) != sync:
            raise UnsupportedTable("Avro block without its sync marker")
        records = _Decoder(io.BytesIO(block))
        for _ in range(count):
            yield records.read(schema, names)


class _Decoder:
    """Avro's binary encoding of one value of a schema, read from ``stream``."""

    def __init__(self, stream: io.BytesIO) -> None:
        self._stream = stream

    def long(self) -> int:
        shift = value = 0
        while True:
            byte = self._stream.read(1)[0]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return (value >> 1) ^ -(value & 1)
            shift += 7

    def _blocks(self) -> Iterator[None]:
        """One item per element of an array's or a map's blocks."""
        while count := self.long():
            if count < 0:  # a negative count is followed by the block's size in bytes
                count = -count
                self.long()
            for _ in range(count):
                yield None

    def read(self, schema: Any, names: dict[str, Any]) -> Any:
        if isinstance(schema, list):  # a union: the branch's index, then its value
            return self.read(schema[self.long()], names)
        if isinstance(schema, str):
            if schema in names:
                return self.read(names[schema], names)
            kind = schema
        else:
            kind = schema["type"]
            if isinstance(kind, (dict, list)) or kind in names:
                return self.read(kind, names)
            if "name" in schema and kind in ("record", "enum", "fixed"):
                names[schema["name"]] = schema
        stream = self._stream
        match kind:
            case "null":
                return None
            case "boolean":
                return stream.read(1) == b"\x01"
            case "int" | "long":
                return self.long()
            case "float":
                return struct.unpack("<f", stream.read(4))[0]
            case "double":
                return struct.unpack("<d", stream.read(8))[0]
            case "bytes":
                return stream.read(self.long())
            case "string":
                return stream.read(self.long()).decode()
            case "fixed":
                return stream.read(schema["size"])
            case "enum":
                return schema["symbols"][self.long()]
            case "record":
                return {f["name"]: self.read(f["type"], names) for f in schema["fields"]}
            case "array":
                return [self.read(schema["items"], names) for _ in self._blocks()]
            case "map":
                return {
                    self.read("string", names): self.read(schema["values"], names)
                    for _ in self._blocks()
                }
        raise UnsupportedTable(f"Avro type {kind!r}")
