"""JSON values to Arrow columns of a declared schema: DuckDB's ``json_transform`` first, pyarrow
for the rows it cannot vouch for.

DuckDB's transform (yyjson underneath) reads a value in about 40% of the CPU time pyarrow's
JSON reader takes, but it is lenient: a field whose text does not convert comes out NULL
instead of failing, and a value that is not an object comes out as a row of NULLs. So a row
is taken from DuckDB only when every field came out non-NULL, or when DuckDB's second look
(each field as raw JSON, and the value's JSON type) shows that each NULL field is absent or
``null`` in an object. A value that is not a JSON object is rejected as such. Every other
row goes to pyarrow's reader (:class:`JsonParser`), which parses or rejects it with a
reason, as it does for every row when the schema has a type outside the ones below. A value DuckDB cannot parse at all fails the whole call; the
lines that are not JSON at all (``json_valid``) are rejected, and the rest read again; when
DuckDB cannot tell which lines fail, they are halved until the failing ones stand alone, and
those go to pyarrow. A row's
fate depends only on its own text, never on which other rows shared its micro-batch.

No line reaches pyarrow's reader that can crash it (nested deeper than 1,000 levels, or
starting with ``null``: :mod:`streamhouse.sql.json_guard`); such a line is rejected with
its reason. DuckDB's reader takes them (to 1,000,000 levels), so a row it reads whole
with a flat schema, whose deep field comes out as JSON text or is not read, is kept.

What DuckDB accepts beyond pyarrow, as Flink's JSON format does: a quoted number for a
numeric field (``"8"``), a number or an object for a text field (its JSON text), ``true`` and
``false`` for numbers and ``"true"`` for BOOLEAN; a float for an integer field is rounded.
Timestamps are ISO-8601 text (a zone or offset is honoured, none means UTC) or integer epoch
milliseconds. DuckDB reads them with two structures, text first or numbers first (whichever
read most rows of the last batch); the rows with a NULL field are read with the other
structure too, and a row is kept if either structure explains its NULLs, so a row's fate
does not depend on the order (so not on the batch before).
"""

from __future__ import annotations

import json
import logging
import threading
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from streamhouse.log.records import JsonLines
from streamhouse.sql.json_flat import flat_readable, read_flat
from streamhouse.sql.json_guard import unreadable

log = logging.getLogger(__name__)

_NEWLINE = 10


def parse_json(
    lines: JsonLines, values: pa.Array | None, schema: pa.Schema
) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """Parse the JSON values ``lines`` holds (one a line, whitespace around each allowed) with
    ``schema`` (at least one field). ``values``, if given, are the same values as an array
    (binary, binary view or text, none null or empty): DuckDB reads them where they are, and
    ``lines`` is only made if pyarrow has to read them all.

    Returns the parsed table, the lines its rows come from (increasing) and the
    (line, reason) of each line that does not fit.
    """
    structures = _structures(schema)
    if structures is None:  # pyarrow reads every line
        text = values if values is not None else _lines(lines.buffer, lines.starts)
        if not (skipped := unreadable(text)):
            return JsonParser(lines.buffer, lines.starts, schema).parse()
        return read_with_pyarrow(text, np.arange(len(text)), schema, skipped)
    text = _AS_TEXT.get(values.type) if values is not None else None
    if values is None or text is None:
        values, text = _lines(lines.buffer, lines.starts), None
    values = values.view(text) if text else values
    if flat_readable(schema) and (flat := read_flat(values, schema)) is not None:
        return _after_flat(values, schema, structures, *flat)
    return _DuckDBParser(values, schema, structures).parse()


def _after_flat(
    values: pa.Array, schema: pa.Schema, structures: list[str], table: pa.Table, read: np.ndarray
) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """The rows the C reader read (``table``, where ``read``), with the others read by the
    general reader; as :func:`parse_json` returns them."""
    if read.all():
        return table, np.arange(len(values)), []
    if not read.any():
        return _DuckDBParser(values, schema, structures).parse()
    rest = np.flatnonzero(~read)
    if pa.types.is_string_view(values.type):  # (no take kernel for views)
        values = values.view(pa.binary_view()).cast(pa.binary()).view(pa.string())
    others, rows, bad = _DuckDBParser(values.take(pa.array(rest)), schema, structures).parse()
    rows = np.concatenate((np.flatnonzero(read), rest[rows]))
    order = np.argsort(rows, kind="stable")
    merged = pa.concat_tables([table.filter(pa.array(read)), others]).take(pa.array(order))
    return merged, rows[order], [(int(rest[i]), reason) for i, reason in bad]


_AS_TEXT = {  # the text type each binary type is viewed as (the same buffers)
    pa.binary(): pa.string(),
    pa.large_binary(): pa.large_string(),
    pa.binary_view(): pa.string_view(),
    pa.string(): pa.string(),
    pa.large_string(): pa.large_string(),
    pa.string_view(): pa.string_view(),
}


_DUCKDB_TYPES = {
    pa.bool_(): "BOOLEAN",
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.date32(): "DATE",
}


def _structures(schema: pa.Schema) -> list[str] | None:
    """``json_transform``'s structure argument for ``schema``, as SQL text: timestamps as text,
    then (if there are timestamps) as epoch milliseconds. None if a field has a type DuckDB
    would read differently from pyarrow (nested types, whose elements it nulls silently;
    decimals, which it rounds; nanoseconds; binary; time of day)."""
    fields: dict[str, str] = {}
    for f in schema:
        if f.type in _DUCKDB_TYPES:
            fields[f.name] = _DUCKDB_TYPES[f.type]
        elif pa.types.is_timestamp(f.type) and f.type.unit != "ns" and f.type.tz in (None, "UTC"):
            fields[f.name] = "TIMESTAMPTZ"
        else:
            return None
    if len({name.lower() for name in fields}) != len(schema):  # a name twice, to DuckDB
        return None  # (its struct field names ignore case; the schema's do not)
    structures = [fields]
    if "TIMESTAMPTZ" in fields.values():  # as their JSON text, which must be an integer
        structures.append({k: "JSON" if t == "TIMESTAMPTZ" else t for k, t in fields.items()})
    return [_literal(json.dumps(s)) for s in structures]


_preferred: dict[str, int] = {}  # schema -> which structure read all its fields last time


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _lines(buffer: pa.Buffer, bounds: np.ndarray) -> pa.Array:
    """The lines as an Arrow string array over ``buffer`` itself (the bounds are its offsets).

    Not checked for UTF-8 here: DuckDB's JSON reader rejects what is not, and pyarrow's
    reader then reports it.
    """
    base = int(bounds[0])
    offsets = bounds - base
    big = int(offsets[-1]) >= 0x7FFFFFFF
    data = buffer.slice(base, int(offsets[-1]))
    return pa.Array.from_buffers(
        pa.large_string() if big else pa.string(),
        len(bounds) - 1,
        [None, pa.py_buffer(offsets.astype(np.int64 if big else np.int32)), data],
    )


if TYPE_CHECKING:
    import duckdb
else:
    duckdb: Any = None  # imported at first use (_load_duckdb): flat JSON never needs its 14 MB

_database: duckdb.DuckDBPyConnection | None = None
_database_lock = threading.Lock()
_threads: int | None = None  # DuckDB's threads per database (None: as many as cores)


def set_duckdb_threads(threads: int) -> None:
    """Run this process's in-memory DuckDB databases (JSON parsing here, sink encoding in
    :mod:`streamhouse.runtime.sink`) on ``threads`` threads, not one per core: a task of a
    parallel query takes its share of the cores (its sibling tasks parse at the same time).
    For the databases opened after the call."""
    global _threads
    _threads = threads


def duckdb_config() -> dict[str, str | int]:
    """The configuration a DuckDB database of this process is opened with."""
    return {"threads": _threads} if _threads is not None else {}


def _load_duckdb() -> None:
    global duckdb
    if duckdb is None:
        import duckdb as module

        duckdb = module


def _cursor() -> duckdb.DuckDBPyConnection:
    """A new cursor on the module's in-memory DuckDB, whose time zone is UTC (text timestamps
    without a zone are UTC, as pyarrow reads them).

    A cursor per call, not one kept per thread: a forked child frees the thread-local objects
    of the parent's other threads, and a DuckDB connection freed there crashes the child.
    """
    global _database
    with _database_lock:
        if _database is None:
            _load_duckdb()
            _database = duckdb.connect(config=duckdb_config())
            _database.execute("SET GLOBAL TimeZone = 'UTC'")
        return _database.cursor()


class _DuckDBParser:
    def __init__(self, lines: pa.Array, schema: pa.Schema, structures: list[str]) -> None:
        _load_duckdb()  # its errors are caught by name
        self._lines = lines
        self._schema = schema
        self._typed = [f"json_transform(line, {s})" for s in structures]
        self._raw = "json_transform(line, {})".format(
            _literal(json.dumps(dict.fromkeys(schema.names, "JSON")))
        )
        self._tables: list[pa.Table] = []
        self._rows: list[np.ndarray] = []
        self._bad: list[tuple[int, str]] = []
        self._redo: list[np.ndarray] = []  # lines for pyarrow

    def parse(self) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
        stack = [(0, len(self._lines))]
        while stack:
            lo, hi = stack.pop()
            try:
                self._transform(lo, hi)
                continue
            except (duckdb.Error, UnicodeDecodeError) as exc:  # invalid JSON or UTF-8
                if hi - lo == 1:
                    log.debug("JSON line %d: %s", lo, str(exc).splitlines()[0])
            valid = self._valid(lo, hi)
            if hi - lo == 1 and (valid is None or valid.all()):  # JSON, yet DuckDB fails
                self._redo.append(np.array([lo]))
                continue
            if valid is None or valid.all():  # DuckDB cannot say which: halve and retry
                mid = (lo + hi) // 2
                stack += [(mid, hi), (lo, mid)]
                continue
            self._bad += [(lo + int(i), "not valid JSON") for i in np.flatnonzero(~valid)]
            good = np.flatnonzero(valid)
            if len(good):
                try:
                    self._transform(lo, hi, good)
                except (duckdb.Error, UnicodeDecodeError):
                    self._redo.append(lo + good)

        if self._redo:
            self._with_pyarrow(np.concatenate(self._redo))
        return self._result()

    def _valid(self, lo: int, hi: int) -> np.ndarray | None:
        """Which of lines ``lo:hi`` are JSON at all, or None if DuckDB cannot tell."""
        try:
            valid = self._query("json_valid(line)", lo, hi).column(0)
        except (duckdb.Error, UnicodeDecodeError):
            return None
        return pc.fill_null(valid, False).to_numpy(zero_copy_only=False)

    def _query(self, select: str, lo: int, hi: int, rows: np.ndarray | None = None) -> pa.Table:
        """``SELECT {select}`` over lines ``lo:hi``, or only over lines ``lo + rows``."""
        lines = pa.table({"line": self._lines.slice(lo, hi - lo)})
        with _cursor() as con:
            if rows is None:
                con.register("json_lines", lines)
                return con.sql(f"SELECT {select} FROM json_lines").to_arrow_table()
            con.register("all_lines", lines.append_column("i", pa.array(np.arange(hi - lo))))
            con.register("picked", pa.table({"i": rows}))
            return con.sql(
                f"SELECT {select} FROM (SELECT i, line FROM all_lines SEMI JOIN picked USING (i)"
                " ORDER BY i) AS json_lines"
            ).to_arrow_table()

    def _typed_table(
        self, variant: int, lo: int, hi: int, rows: np.ndarray | None = None
    ) -> tuple[pa.Table, np.ndarray]:
        """The lines read with one structure, and which rows have a NULL field."""
        typed = _fields(self._query(self._typed[variant], lo, hi, rows))
        columns = [_from_duckdb(typed[i], f.type) for i, f in enumerate(self._schema)]
        table = pa.table(columns, schema=self._schema)
        nulls = reduce(pc.or_, [pc.is_null(c) for c in table.columns]).to_numpy(
            zero_copy_only=False
        )
        return table, nulls

    def _transform(self, lo: int, hi: int, picked: np.ndarray | None = None) -> None:
        """Read lines ``lo:hi`` (or only ``lo + picked``) and sort their rows: read, rejected,
        or for pyarrow."""
        key = str(self._schema)
        variant = _preferred.get(key, 0)
        at = np.arange(hi - lo) if picked is None else picked  # row i is line lo + at[i]
        table, nulls = self._typed_table(variant, lo, hi, picked)
        suspect = np.flatnonzero(nulls)
        readings = [table.take(pa.array(suspect))]  # the suspect rows, by each structure
        if len(self._typed) > 1 and len(suspect):
            # Timestamps given the other way (text, or epoch milliseconds): every row has
            # both structures tried before pyarrow, whichever one is tried first.
            other, other_nulls = self._typed_table(1 - variant, lo, hi, at[suspect])
            read = ~other_nulls
            if read.any():
                self._tables.append(other.filter(pa.array(read)))
                self._rows.append(lo + at[suspect[read]])
                if read.sum() * 2 > len(nulls):
                    _preferred[key] = 1 - variant
            suspect = suspect[~read]
            readings = [readings[0].filter(pa.array(~read)), other.filter(pa.array(~read))]
        keep = ~nulls  # (rows the other structure read are not kept from this one)
        if len(suspect):
            explained, objects = self._explained(readings, lo, hi, at[suspect])
            # A row either structure explains reads the same by both (its timestamps are
            # absent or null): which one was tried first never changes what it becomes.
            keep[suspect[explained[0]]] = True
            for reading, by in zip(readings[1:], explained[1:], strict=True):
                if (alone := by & ~explained[0]).any():
                    self._tables.append(reading.filter(pa.array(alone)))
                    self._rows.append(lo + at[suspect[alone]])
            unexplained = ~np.logical_or.reduce(explained)
            self._redo.append(lo + at[suspect[unexplained & objects]])
            self._bad += [(lo + int(i), "not a JSON object") for i in at[suspect[~objects]]]
        self._tables.append(table if keep.all() else table.filter(pa.array(keep)))
        self._rows.append(lo + at[keep])

    def _explained(
        self, readings: list[pa.Table], lo: int, hi: int, suspect: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Of the ``suspect`` lines (``lo + suspect``; ``readings``: as each structure read
        them, with a NULL field): for each reading, those whose every NULL field is absent or
        ``null`` in a JSON object; and those that are JSON objects."""
        raw = self._query(f"json_type(line) = 'OBJECT' AS object, {self._raw}", lo, hi, suspect)
        raw_fields = _fields(raw.select([1]))
        objects = pc.fill_null(raw.column(0), False)
        explained = []
        for typed in readings:
            ok = objects
            for i in range(typed.num_columns):
                lost = pc.and_(pc.is_null(typed.column(i)), pc.is_valid(raw_fields[i]))
                ok = pc.and_(ok, pc.invert(lost))
            explained.append(ok.to_numpy(zero_copy_only=False))
        return explained, objects.to_numpy(zero_copy_only=False)

    def _with_pyarrow(self, rows: np.ndarray) -> None:
        table, good, bad = read_with_pyarrow(self._lines, rows, self._schema)
        self._tables.append(table)
        self._rows.append(good)
        self._bad += bad

    def _result(self) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
        self._bad.sort()
        tables = [t for t in self._tables if t.num_rows]
        if not tables:
            return self._schema.empty_table(), np.zeros(0, np.int64), self._bad
        rows = np.concatenate(self._rows)
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        if len(rows) > 1 and not (rows[1:] > rows[:-1]).all():  # pieces came back out of order
            order = np.argsort(rows, kind="stable")
            table, rows = table.take(pa.array(order)), rows[order]
        return table, rows, self._bad


def read_with_pyarrow(
    lines: pa.Array,
    rows: np.ndarray,
    schema: pa.Schema,
    skipped: list[tuple[int, str]] | None = None,
) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """Read ``lines[rows]`` with :class:`JsonParser`, except the lines it must never see
    (:func:`~streamhouse.sql.json_guard.unreadable`: they can crash it), which are rejected;
    ``skipped``: those already found, when ``rows`` are all the lines. Rows and rejections
    are indices of ``lines``."""
    if pa.types.is_string_view(lines.type) or pa.types.is_binary_view(lines.type):
        lines = lines.view(pa.binary_view()).cast(pa.binary())  # no take kernel for views
    if not pa.types.is_string(lines.type) and not pa.types.is_large_string(lines.type):
        lines = lines.view(
            pa.large_string() if pa.types.is_large_binary(lines.type) else pa.string()
        )
    lines = lines.take(pa.array(rows))
    if skipped is None:
        skipped = [(int(rows[i]), reason) for i, reason in unreadable(lines)]
    if skipped:
        keep = ~np.isin(rows, [i for i, _ in skipped])
        lines, rows = lines.filter(pa.array(keep)), rows[keep]
    lines = pc.ascii_rtrim_whitespace(lines)  # (utf8_ would check the UTF-8: pyarrow will)
    buffer, bounds = newline_joined(lines)
    table, good, bad = JsonParser(buffer, bounds, schema).parse()
    return table, rows[good], sorted([(int(rows[i]), reason) for i, reason in bad] + skipped)


def _fields(table: pa.Table) -> list[pa.ChunkedArray]:
    """The fields of the struct column ``table`` holds, NULL where the struct is. (DuckDB
    2.0 crashes expanding a NULL struct with ``s.*`` or ``unnest``: pyarrow does it.)"""
    chunks = [c.flatten() for c in table.column(0).chunks]
    width = table.column(0).type.num_fields
    return [
        pa.chunked_array([c[i] for c in chunks], table.column(0).type.field(i).type)
        for i in range(width)
    ]


def _from_duckdb(column: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray:
    """A column as DuckDB returns it, as the declared type. A timestamp comes as
    microseconds in UTC, or as JSON text, read as epoch milliseconds when it is an integer
    (NULL otherwise)."""
    if column.type == to:
        return column
    if pa.types.is_timestamp(to):
        if pa.types.is_string(column.type):
            integer = pc.fill_null(pc.match_substring_regex(column, _EPOCH_MS), False)
            column = pc.if_else(integer, column, None).cast(pa.int64())
            column = column.cast(pa.timestamp("ms", tz="UTC"))
        column = column.cast(pa.timestamp(to.unit, tz="UTC"), safe=False)  # cut to the unit
        return column if to.tz else pa.chunked_array([c.view(to) for c in column.chunks], to)
    return column.cast(to)


_EPOCH_MS = r"^-?[0-9]{1,15}$"  # an integer JSON number of milliseconds (to year 33658)


def _epoch_variants(schema: pa.Schema) -> list[pa.Schema]:
    """``schema`` with temporal columns read as epoch milliseconds: all of them first, then
    (for up to 4 temporal columns) every other mix, so a record may give one column as an
    ISO string and another as a number."""
    temporal = [
        i for i, f in enumerate(schema) if pa.types.is_timestamp(f.type) or pa.types.is_date(f.type)
    ]
    if not temporal:
        return []
    everything = (1 << len(temporal)) - 1
    masks = [everything]
    if len(temporal) <= 4:
        masks += [m for m in range(everything - 1, 0, -1)]
    variants = []
    for mask in masks:
        epoch = {temporal[j] for j in range(len(temporal)) if mask >> j & 1}
        variants.append(
            pa.schema([f.with_type(pa.int64()) if i in epoch else f for i, f in enumerate(schema)])
        )
    return variants


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast epoch-millisecond columns read by the variant schema to the declared types."""
    if table.schema.equals(schema):
        return table
    columns = []
    for f in schema:
        column = table[f.name]
        if column.type != f.type:
            column = column.cast(pa.timestamp("ms")).cast(f.type)
        columns.append(column)
    return pa.table(columns, schema=schema)


class JsonParser:
    """Parses JSON lines (line ``i`` is ``buffer[bounds[i]:bounds[i + 1]]``); on failure finds
    out whether values span lines, then bisects to find and report the bad ones."""

    def __init__(self, buffer: pa.Buffer, bounds: np.ndarray, schema: pa.Schema) -> None:
        self._schema = schema
        self._variants = [schema, *_epoch_variants(schema)]
        self._buffer, self._bounds = buffer, bounds
        self._n = len(bounds) - 1
        self._multiline: bool | None = None  # not known until a read fails

    def parse(self) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
        tables: list[pa.Table] = []
        good: list[np.ndarray] = []
        bad: list[tuple[int, str]] = []
        stack = [(0, self._n)] if self._n else []
        while stack:
            lo, hi = stack.pop()
            table, reason = self._read(lo, hi)
            if table is None and self._multiline is None:
                start, end = int(self._bounds[0]), int(self._bounds[-1])
                region = np.frombuffer(self._buffer, np.uint8)[start:end]
                self._multiline = np.count_nonzero(region == _NEWLINE) != self._n
                if self._multiline:  # values with newlines in them (pretty-printed JSON)
                    table, reason = self._read(lo, hi)
            if table is not None:
                tables.append(table)
                good.append(np.arange(lo, hi))
            elif hi - lo == 1:
                bad.append((lo, reason))
            else:
                mid = (lo + hi) // 2
                stack.append((mid, hi))  # popped second: keeps output in offset order
                stack.append((lo, mid))
        if not tables:
            return self._schema.empty_table(), np.zeros(0, dtype=np.int64), bad
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        return table, np.concatenate(good), bad

    def _read(self, lo: int, hi: int) -> tuple[pa.Table | None, str]:
        start, end = int(self._bounds[lo]), int(self._bounds[hi])
        chunk = self._buffer.slice(start, end - start)
        if hi - lo == 1 and chunk.to_pybytes().strip() == b"null":
            return None, "not a JSON object"  # (pyarrow 26 crashes reading just a null)
        reason = ""
        for schema in self._variants:
            try:
                table = pa_json.read_json(
                    pa.BufferReader(chunk),
                    read_options=pa_json.ReadOptions(block_size=_block_size(len(chunk))),
                    parse_options=pa_json.ParseOptions(
                        explicit_schema=schema,
                        unexpected_field_behavior="ignore",
                        newlines_in_values=bool(self._multiline),
                    ),
                )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                reason = reason or str(exc).splitlines()[0]
                continue
            if table.num_rows != hi - lo:
                return None, "not a JSON object"
            return _conform(table, self._schema), ""
        return None, reason


def _block_size(size: int) -> int:
    """Blocks of 1-64 MiB, about two per chunk: both cores busy, little per-block overhead."""
    return max(1 << 20, min(size // 2 + 1, 64 << 20))


def newline_joined(values: pa.Array) -> tuple[pa.Buffer, np.ndarray]:
    """The values each followed by a newline, as one buffer, and where each line starts (n + 1).

    Arrow's ``binary_join_element_wise`` does it in C++, in one pass; no copy is made after.
    """
    values = values.cast(pa.binary()) if values.type != pa.binary() else values
    if len(values) == 0:
        return pa.py_buffer(b""), np.zeros(1, np.int64)
    joined = pc.binary_join_element_wise(values, _EMPTY, _NEWLINE_SCALAR)
    if joined.type != pa.binary():
        joined = joined.cast(pa.binary())
    offsets_buffer, data = joined.buffers()[1], joined.buffers()[2]
    bounds = np.frombuffer(
        offsets_buffer, np.int32, count=len(joined) + 1, offset=joined.offset * 4
    )
    bounds = bounds.astype(np.int64)
    return data.slice(int(bounds[0]), int(bounds[-1] - bounds[0])), bounds - bounds[0]


_EMPTY = pa.scalar(b"", pa.binary())
_NEWLINE_SCALAR = pa.scalar(b"\n", pa.binary())
