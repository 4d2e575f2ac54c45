"""Query results written out: csv, JSON lines and Arrow IPC streamed batch by batch; a table
for people that shows the first and last rows of any number and counts them all.

Nothing here holds a whole result: writers take a :class:`pyarrow.RecordBatchReader` and write
each batch as it arrives; the table keeps only the rows it shows (:class:`RowSample`).
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import click
import numpy as np
import pyarrow as pa

from streamhouse.errors import StreamHouseError
from streamhouse.result import unique_names

DEFAULT_MAX_ROWS = 40  # rows the table format shows, as DuckDB's shell does
CELL_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})
UNBOUNDED_WIDTH = 1 << 14
"""Characters a table written to a file or a pipe may take per line (no cell is cut)."""


def write_result(
    rows: pa.RecordBatchReader | pa.Table,
    fmt: str,
    output: str | None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> None:
    """Write ``rows`` as ``fmt`` to ``output`` (or stdout) while they are read."""
    if isinstance(rows, pa.Table):
        rows = pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches())
    if fmt == "table":
        if output is None:
            print_rows(rows, max_rows)
        else:
            with open(output, "w", encoding="utf-8") as fh:
                print_rows(rows, max_rows, file=fh)
        return
    sink = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
    try:
        WRITERS[fmt](rows, sink)
    finally:
        if output:
            sink.close()
        else:
            sink.flush()


def write_csv(rows: pa.RecordBatchReader, sink: BinaryIO) -> None:
    """CSV with a header; a column Arrow cannot write as text (lists, structs, maps,
    intervals) holds DuckDB's text of each value (``[1, 2]``, ``{'a': 1}``), as DuckDB's CSV."""
    import pyarrow.csv as pa_csv

    rows = _with_text(rows, [i for i, f in enumerate(rows.schema) if not _has_text(f.type)])
    with pa_csv.CSVWriter(sink, rows.schema) as writer:
        for batch in rows:
            writer.write_batch(batch)


def _has_text(type_: pa.DataType) -> bool:
    """Whether Arrow casts ``type_`` to a string (what its CSV writer does with every column)."""
    try:
        pa.array([], type_).cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return False
    return True


def _with_text(rows: pa.RecordBatchReader, columns: list[int]) -> pa.RecordBatchReader:
    """``rows`` with ``columns`` (positions) cast to VARCHAR by DuckDB, batch by batch."""
    if not columns:
        return rows
    schema = rows.schema
    for i in columns:
        schema = schema.set(i, schema.field(i).with_type(pa.string()))
    names = [f"c{i}" for i in columns]
    sql = "SELECT " + ", ".join(f"CAST({n} AS VARCHAR)" for n in names) + " FROM text_rows"

    def batches() -> Iterator[pa.RecordBatch]:
        import duckdb

        with duckdb.connect() as con:
            for batch in rows:
                text_rows = pa.Table.from_arrays([batch.column(i) for i in columns], names)  # noqa: F841
                try:
                    text = con.sql(sql).to_arrow_table()
                except duckdb.Error as exc:
                    raise StreamHouseError(f"cannot write the rows as CSV: {exc}") from None
                arrays = batch.columns
                for i, column in zip(columns, text.columns, strict=True):
                    arrays[i] = column.combine_chunks().cast(pa.string())
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def write_arrow(rows: pa.RecordBatchReader, sink: BinaryIO) -> None:
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        for batch in rows:
            writer.write_batch(batch)


def write_json(rows: pa.RecordBatchReader, sink: BinaryIO) -> None:
    """One JSON object per row, made by DuckDB batch by batch; a name that repeats an earlier
    one becomes ``name_1``, ``name_2`` (as DuckDB names them), since JSON keys are unique."""
    import duckdb

    names = unique_names(rows.schema.names)
    pairs = ", ".join(
        "'{}', \"{}\"".format(n.replace("'", "''"), n.replace('"', '""')) for n in names
    )
    sql = f"SELECT json_object({pairs}) || chr(10) FROM answer_rows"  # any name: no to_json(row)
    with duckdb.connect() as con:
        for batch in rows:  # read here, not by DuckDB's threads: our errors stay ours
            answer_rows = batch.rename_columns(names)  # noqa: F841 (DuckDB reads it by name)
            try:
                text = con.sql(sql).to_arrow_table().column(0)
            except duckdb.Error as exc:
                raise StreamHouseError(f"cannot write the rows as JSON: {exc}") from None
            for chunk in text.chunks:
                sink.write(_utf8_bytes(chunk))


def _utf8_bytes(text: pa.Array) -> memoryview:
    """The characters of a string column, back to back, without making Python strings."""
    _, offsets, data = text.buffers()
    width = 8 if pa.types.is_large_string(text.type) else 4
    bounds = np.frombuffer(offsets, dtype=f"<i{width}")[text.offset : text.offset + len(text) + 1]
    return memoryview(data)[int(bounds[0]) : int(bounds[-1])] if len(text) else memoryview(b"")


WRITERS: dict[str, Callable[[pa.RecordBatchReader, BinaryIO], None]] = {
    "csv": write_csv,
    "json": write_json,
    "arrow": write_arrow,
}


def print_rows(
    rows: pa.RecordBatchReader, max_rows: int, title: str | None = None, file: Any = None
) -> None:
    """Print ``rows`` with rich to stdout (or ``file``): all of them, or when there are more
    than ``max_rows`` (> 0) the first and last halves of that with a ``…`` row between; then
    the row count to stderr. Only the rows shown become Python values. Cells are cut to fit
    a terminal's width; into a file or a pipe the table is as wide as its cells (``COLUMNS``
    set in the environment still bounds it)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    shown = RowSample(rows.schema, max_rows)
    for batch in rows:
        shown.add(batch)
    head, tail = shown.head_and_tail()
    view = Table(title=title, title_justify="left", header_style="bold")
    for field in rows.schema:
        numeric = (
            pa.types.is_integer(field.type)
            or pa.types.is_floating(field.type)
            or pa.types.is_decimal(field.type)
        )
        view.add_column(field.name, justify="right" if numeric else "left")
    for row in _cells(head):
        view.add_row(*map(Text, row))  # Text: a value like "[b]" is not rich markup
    if tail is not None:
        view.add_row(*("…" for _ in rows.schema), style="dim")
        for row in _cells(tail):
            view.add_row(*map(Text, row))
    if file is not None:
        console = Console(file=file, width=UNBOUNDED_WIDTH)
    else:
        console = Console(soft_wrap=True)
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(soft_wrap=True, width=UNBOUNDED_WIDTH)
    console.print(view)
    total = f"{shown.total:,} row{'s' if shown.total != 1 else ''}"
    if tail is not None:
        total += f", {head.num_rows + tail.num_rows:,} shown"
    click.echo(f"({total})", err=True)


def _cells(table: pa.Table) -> list[tuple[str, ...]]:
    """The rows of ``table`` as text, one line each (line breaks and tabs written ``\\n``...)."""
    columns = [
        ["NULL" if v is None else str(v).translate(CELL_ESCAPES) for v in c.to_pylist()]
        for c in table.columns
    ]
    return list(zip(*columns, strict=True))


def print_table(table: pa.Table, title: str | None = None, file: Any = None) -> None:
    """Print every row of ``table`` (see :func:`print_rows`)."""
    rows = pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    print_rows(rows, 0, title, file)


class RowSample:
    """The first and last rows of a stream of batches and its row count, in bounded memory:
    all rows when ``max_rows`` is 0, else the first ``max_rows - max_rows // 2`` and the last
    ``max_rows // 2`` (DuckDB's shell shows 20 and 20 of 40). Batches are sliced, never turned
    into Python values.

    >>> sample = RowSample(pa.schema([("i", pa.int64())]), 4)
    >>> for start in range(0, 100, 7):
    ...     sample.add(pa.record_batch({"i": list(range(start, min(start + 7, 100)))}))
    >>> head, tail = sample.head_and_tail()
    >>> head["i"].to_pylist(), tail["i"].to_pylist(), sample.total
    ([0, 1], [98, 99], 100)
    """

    def __init__(self, schema: pa.Schema, max_rows: int) -> None:
        self.schema = schema
        self.max_rows = max_rows
        self.total = 0
        self._head: list[pa.RecordBatch] = []
        self._head_rows = 0
        self._tail: deque[pa.RecordBatch] = deque()
        self._tail_rows = 0

    @property
    def _head_limit(self) -> int | None:
        return None if self.max_rows == 0 else self.max_rows - self.max_rows // 2

    def add(self, batch: pa.RecordBatch) -> None:
        self.total += batch.num_rows
        limit = self._head_limit
        if limit is None:
            self._head.append(batch)
            return
        taken = min(limit - self._head_rows, batch.num_rows)
        if taken > 0:
            self._head.append(batch.slice(0, taken))
            self._head_rows += taken
        if taken == batch.num_rows:
            return
        self._tail.append(batch.slice(max(taken, 0)))
        self._tail_rows += batch.num_rows - max(taken, 0)
        keep = self.max_rows // 2
        while self._tail and self._tail_rows - self._tail[0].num_rows >= keep:
            self._tail_rows -= self._tail.popleft().num_rows

    def head_and_tail(self) -> tuple[pa.Table, pa.Table | None]:
        """The rows to show: all of them and None, or the head and the tail when rows were
        left out between them."""
        head = pa.Table.from_batches(self._head, self.schema)
        tail = pa.Table.from_batches(list(self._tail), self.schema)
        if self.total <= self.max_rows or self.max_rows == 0:
            return pa.concat_tables([head, tail]), None
        keep = self.max_rows // 2
        return head, tail.slice(tail.num_rows - keep)
