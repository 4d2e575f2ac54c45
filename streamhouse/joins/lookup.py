"""Lookup joins against an external PostgreSQL table (Flink's ``'connector'='jdbc'``).

A micro-batch of probe rows is joined to the dimension table's rows for its keys: the keys
the cache lacks (or holds past ``lookup.cache.ttl``) are fetched with one
``SELECT ... WHERE key = ANY(%s)`` through psycopg 3; the join itself is Arrow
(``index_in`` + ``take``), with no Python loop over rows.

The cache holds, per key, the dimension row (or the fact that there is none, as Flink's
``lookup.cache.caching-missing-key`` does by default), the time it was loaded and the time
it was last used; past ``lookup.cache.max-rows`` the least recently used keys go.

A composite key (``ON s.a = dim.a AND s.b = dim.b``) is fetched with one
``WHERE (a, b) IN (SELECT * FROM unnest(%s::type[], %s::type[]))``, one typed array per key
column; the cache and the join then key the rows by one string column made of the key's
parts (each prefixed by its length, so no two keys give the same string).

A database that goes away is retried ``lookup.max-retries`` times (reconnecting each time);
then the batch fails with :class:`LookupError`. No row is emitted for a batch whose lookups
did not all succeed, so a LEFT join never pads a row with NULLs because the database was down.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from streamhouse.errors import ConfigError, StreamHouseError

logger = logging.getLogger(__name__)

FOUND = "__found"  # cache column: the key has a row in the dimension table
LOOKUP_KEY = "__lookup_key"  # cache column of a composite key: its parts as one string
_PG_TYPES = {
    pa.int8(): "smallint",
    pa.int16(): "smallint",
    pa.int32(): "integer",
    pa.int64(): "bigint",
    pa.float32(): "real",
    pa.float64(): "double precision",
    pa.string(): "text",
    pa.large_string(): "text",
    pa.bool_(): "boolean",
    pa.date32(): "date",
}
_DURATION = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$")
_UNIT_SECONDS = {
    "": 0.001,  # Flink: a bare number of a duration option is milliseconds
    "ms": 0.001,
    "milli": 0.001,
    "millis": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}


class LookupError(StreamHouseError):  # noqa: A001 - the domain's name; builtins' is unrelated
    """A lookup against the dimension table failed after its retries."""


def duration_seconds(text: str, option: str) -> float:
    """A Flink duration option (``'10 s'``, ``'1min'``, ``'500'`` ms) in seconds.

    >>> duration_seconds('10 s', 'lookup.cache.ttl'), duration_seconds('2min', 'x')
    (10.0, 120.0)
    """
    match = _DURATION.match(text.lower())
    if match is None or match.group(2) not in _UNIT_SECONDS:
        raise ConfigError(f"'{option}'='{text}' is not a duration such as '10 s' or '1 min'")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class JdbcLookupOptions:
    """The options of ``CREATE TABLE dim (...) WITH ('connector'='jdbc', ...)``, Flink's names."""

    url: str
    table_name: str
    cache_max_rows: int | None = None  # None: no cache (every batch asks the database)
    cache_ttl_seconds: float | None = None  # None: rows never expire
    max_retries: int = 3
    cache_missing_key: bool = True

    @classmethod
    def from_options(cls, options: dict[str, str]) -> JdbcLookupOptions:
        """Read Flink's ``jdbc`` connector options (keys lower-case).

        >>> JdbcLookupOptions.from_options({'connector': 'jdbc', 'url': 'postgresql://h/db',
        ...     'table-name': 'dim', 'lookup.cache.max-rows': '100', 'lookup.cache.ttl': '10s'})
        JdbcLookupOptions(url='postgresql://h/db', table_name='dim', cache_max_rows=100, \
cache_ttl_seconds=10.0, max_retries=3, cache_missing_key=True)
        """
        if options.get("connector") != "jdbc":
            raise ConfigError("a lookup table needs 'connector'='jdbc'")
        for required in ("url", "table-name"):
            if required not in options:
                raise ConfigError(f"the jdbc connector needs '{required}'")
        url = options["url"].removeprefix("jdbc:")
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"'url'='{options['url']}': only PostgreSQL URLs are supported")
        known = {
            "connector",
            "url",
            "table-name",
            "username",
            "password",
            "lookup.cache.max-rows",
            "lookup.cache.ttl",
            "lookup.max-retries",
            "lookup.cache.caching-missing-key",
        }
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unsupported jdbc option(s): {', '.join(unknown)}")
        max_rows = options.get("lookup.cache.max-rows")
        ttl = options.get("lookup.cache.ttl")
        retries = options.get("lookup.max-retries", "3")
        if (max_rows is None) != (ttl is None):
            raise ConfigError("'lookup.cache.max-rows' and 'lookup.cache.ttl' go together")
        try:
            rows = int(max_rows) if max_rows is not None else None
            attempts = int(retries)
        except ValueError as error:
            raise ConfigError(f"jdbc lookup option is not an integer: {error}") from None
        return cls(
            url=url,
            table_name=options["table-name"],
            cache_max_rows=rows,
            cache_ttl_seconds=duration_seconds(ttl, "lookup.cache.ttl") if ttl else None,
            max_retries=attempts,
            cache_missing_key=options.get("lookup.cache.caching-missing-key", "true") == "true",
        )


class LookupCache:
    """Dimension rows by key, least recently used first out, each valid for ``ttl`` seconds.

    Columnar: the keys, the rows (with :data:`FOUND`), the load times and the last-use
    batch numbers are arrays of the same length.
    """

    def __init__(self, schema: pa.Schema, key: str, max_rows: int, ttl: float | None) -> None:
        self.schema = schema.append(pa.field(FOUND, pa.bool_()))
        self.key = key
        self.max_rows = max_rows
        self.ttl = ttl
        self.rows = self.schema.empty_table()
        self.loaded = np.empty(0, dtype=np.float64)
        self.used = np.empty(0, dtype=np.int64)
        self.batches = 0
        self.index: tuple[np.ndarray, np.ndarray] | None = None  # sorted keys, positions

    def __len__(self) -> int:
        return self.rows.num_rows

    def positions(self, keys: pa.Array, now: float) -> pa.Array:
        """The cache position of each key (null: absent or expired); marks them used."""
        self.batches += 1
        found = self._find(keys)
        if self.ttl is not None and len(self):
            fresh = pa.array(now - self.loaded < self.ttl)
            found = pc.if_else(pc.fill_null(pc.take(fresh, found), False), found, None)
        valid = found.drop_null().to_numpy()
        self.used[valid] = self.batches
        return found

    def _find(self, keys: pa.Array) -> pa.Array:
        """Positions of ``keys`` (no nulls) in the cache: integer keys by binary search in a
        sorted index kept between batches, others by an Arrow hash lookup."""
        if not pa.types.is_integer(keys.type):
            return pc.index_in(keys, value_set=self.rows.column(self.key).combine_chunks())
        if self.index is None:
            cached = self.rows.column(self.key).to_numpy()
            order = np.argsort(cached, kind="stable")
            self.index = (cached[order], order)
        ordered, order = self.index
        wanted = keys.to_numpy()
        # searched in key order (several times faster than in probe order), then put back
        by_key = np.argsort(wanted, kind="stable")
        at = np.empty(len(wanted), dtype=np.int64)
        at[by_key] = np.searchsorted(ordered, wanted[by_key])
        at = np.minimum(at, max(len(ordered) - 1, 0))
        if len(ordered) == 0:
            return pa.nulls(len(keys), pa.int64())
        return pa.array(order[at], mask=ordered[at] != wanted)

    def add(self, rows: pa.Table, now: float) -> None:
        """Insert freshly loaded ``rows`` (replacing their keys), then evict down to size."""
        keys = rows.column(self.key).combine_chunks()
        if len(self):
            replaced = self._find(keys).drop_null().to_numpy()
            if len(replaced):  # expired keys reloaded: their old rows go
                mask = np.ones(len(self), dtype=bool)
                mask[replaced] = False
                self._take(np.flatnonzero(mask))
        start = len(self)
        self.rows = pa.concat_tables([self.rows, rows.select(self.schema.names)])
        self.index = self._merged_index(keys, start)
        self.loaded = np.concatenate([self.loaded, np.full(rows.num_rows, now)])
        self.used = np.concatenate(
            [self.used, np.full(rows.num_rows, self.batches, dtype=np.int64)]
        )
        if self.ttl is not None:
            self._keep(now - self.loaded < self.ttl)
        if len(self) > self.max_rows:
            newest = np.argsort(-self.used, kind="stable")[: self.max_rows]
            newest.sort()
            self._take(newest)

    def _merged_index(self, keys: pa.Array, start: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The sorted index with ``keys`` (now at positions ``start``...) merged in: a stable
        sort of two sorted runs, linear, instead of sorting the whole cache again."""
        if self.index is None or not pa.types.is_integer(keys.type):
            return None
        ordered, order = self.index
        new = keys.to_numpy()
        by_key = np.argsort(new, kind="stable")
        merged = np.concatenate([ordered, new[by_key]])
        positions = np.concatenate([order, by_key + start])
        at = np.argsort(merged, kind="stable")
        return merged[at], positions[at]

    def _keep(self, mask: np.ndarray) -> None:
        if not mask.all():
            self._take(np.flatnonzero(mask))

    def _take(self, indices: np.ndarray) -> None:
        self.index = None
        self.rows = self.rows.take(pa.array(indices))
        self.loaded = self.loaded[indices]
        self.used = self.used[indices]


class PostgresLookup:
    """One PostgreSQL table read by key with ``= ANY(%s)`` (a composite key: ``IN`` over
    ``unnest`` of one array per key column), Arrow out, reconnecting on loss."""

    def __init__(
        self,
        options: JdbcLookupOptions,
        schema: pa.Schema,
        key: str | list[str],
        retry_delay: float = 0.2,
        connect_timeout: int = 5,
    ) -> None:
        from psycopg import sql

        self.options = options
        self.schema = schema
        self.keys = [key] if isinstance(key, str) else list(key)
        self.key = self.keys[0] if len(self.keys) == 1 else LOOKUP_KEY
        """The column the rows are keyed by: the key column, or :data:`LOOKUP_KEY`."""
        self.retry_delay = retry_delay
        self.connect_timeout = connect_timeout
        self.connection = None
        self.key_types = []
        for name in self.keys:
            pg_type = _PG_TYPES.get(schema.field(name).type)
            if pg_type is None and len(self.keys) > 1:
                raise ConfigError(
                    f"lookup table {options.table_name}: key column {name!r} of type"
                    f" {schema.field(name).type} cannot be part of a composite lookup key"
                )
            self.key_types.append(pg_type)
        self.query = self._query([sql.Placeholder()] * len(self.keys))
        self.csv_query = None
        """The query's rows as one CSV text (see :meth:`_read`), if their types allow."""
        if all(_csv_exact(f.type) for f in schema):
            fields = []
            for f in schema:
                column = sql.Identifier(f.name)
                if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                    text = "CASE WHEN {0} IS NULL THEN '' ELSE '\"' || replace({0}::text, '\"', '\"\"') || '\"' END"
                else:
                    text = "coalesce({0}::text, '')"
                fields.append(sql.SQL(text).format(column))
            self.csv_query = sql.SQL(
                "SELECT convert_to(string_agg({}, E'\\n'), 'UTF8') FROM ({}) AS found"
            ).format(sql.SQL(" || ',' || ").join(fields), self.query)

    def _query(self, arrays: list[Any]) -> Any:
        """The SELECT of the rows whose key is in ``arrays`` (placeholders or literals, one
        per key column)."""
        from psycopg import sql

        columns = sql.SQL(", ").join(sql.Identifier(n) for n in self.schema.names)
        table = sql.Identifier(*self.options.table_name.split("."))
        if len(self.keys) == 1:
            return sql.SQL("SELECT {} FROM {} WHERE {} = ANY({})").format(
                columns, table, sql.Identifier(self.keys[0]), arrays[0]
            )
        typed = [
            sql.SQL("{}::{}[]").format(array, sql.SQL(pg_type))
            for array, pg_type in zip(arrays, self.key_types, strict=True)
        ]
        return sql.SQL("SELECT {} FROM {} WHERE ({}) IN (SELECT * FROM unnest({}))").format(
            columns,
            table,
            sql.SQL(", ").join(sql.Identifier(n) for n in self.keys),
            sql.SQL(", ").join(typed),
        )

    def key_of(self, columns: list[pa.Array]) -> pa.Array:
        """The lookup key of rows whose key columns are ``columns`` (in :attr:`keys` order)."""
        return columns[0] if len(columns) == 1 else composite_key(columns)

    def rows(self, keys: list[pa.Array]) -> pa.Table:
        """The table's rows whose key is one of ``keys`` (one array per key column, each
        key at most once), with :attr:`key`."""
        import psycopg

        params = tuple(array_literal(k) for k in keys)
        attempts = self.options.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                if self.connection is None or self.connection.closed:
                    self.connection = psycopg.connect(
                        self.options.url, autocommit=True, connect_timeout=self.connect_timeout
                    )
                rows = self._read(params)
                break
            except psycopg.OperationalError as error:
                self.close()
                logger.warning(
                    "lookup of %d keys in %s failed (attempt %d of %d): %s",
                    len(keys[0]),
                    self.options.table_name,
                    attempt,
                    attempts,
                    error,
                )
                if attempt == attempts:
                    raise LookupError(
                        f"lookup table {self.options.table_name}: the database did not answer"
                        f" after {attempts} attempts: {str(error).strip()}"
                    ) from error
                time.sleep(self.retry_delay * attempt)
            except psycopg.Error as error:
                raise LookupError(
                    f"lookup table {self.options.table_name}: {str(error).strip()}"
                ) from error
        if len(self.keys) == 1:
            return rows
        return rows.append_column(LOOKUP_KEY, self.key_of([rows.column(k) for k in self.keys]))

    def _read(self, params: tuple[str | list[object], ...]) -> pa.Table:
        """The rows of the query with ``params``: PostgreSQL joins them into one CSV text
        (one value, so no Python object per row) that Arrow parses, when every column has a
        type whose text reads back exactly; else through psycopg's rows."""
        assert self.connection is not None
        if self.csv_query is None:
            with self.connection.cursor() as cursor:
                cursor.execute(self.query, params, prepare=True)
                fetched = cursor.fetchall()
            columns = list(zip(*fetched, strict=True)) if fetched else [()] * len(self.schema)
            return pa.table(
                [pa.array(c, type=f.type) for c, f in zip(columns, self.schema, strict=True)],
                schema=self.schema,
            )
        with self.connection.cursor(binary=True) as cursor:
            cursor.execute(self.csv_query, params, prepare=True)
            row = cursor.fetchone()
        data = row[0] if row is not None else None
        if not data:
            return self.schema.empty_table()
        return (
            pa_csv.read_csv(
                io.BytesIO(data),
                read_options=pa_csv.ReadOptions(column_names=self.schema.names),
                parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(
                    column_types=self.schema,
                    null_values=[""],  # a NULL is an empty field; an empty string is quoted
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                ),
            )
            .cast(self.schema)
            .combine_chunks()
        )  # one chunk: the cache takes rows from it

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            finally:
                self.connection = None


def _csv_exact(data_type: pa.DataType) -> bool:
    """Whether PostgreSQL's text of a column of ``data_type`` reads back exactly as CSV."""
    return (
        pa.types.is_integer(data_type)
        or pa.types.is_floating(data_type)
        or pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_boolean(data_type)
    )


def composite_key(columns: list[pa.Array | pa.ChunkedArray]) -> pa.Array:
    """One string per row naming its key parts, each as its length, ``:`` and its text
    (so ``('a:', 'b')`` and ``('a', ':b')`` differ); null where any part is null.

    >>> composite_key([pa.array([1, None]), pa.array(['x', 'y'])]).to_pylist()
    ['1:1|1:x', None]
    """
    parts = []
    for column in columns:
        text = pc.cast(column, pa.string())
        length = pc.cast(pc.utf8_length(text), pa.string())
        parts += [length, text]
    pieces = []
    for i in range(0, len(parts), 2):
        pieces.append(pc.binary_join_element_wise(parts[i], parts[i + 1], ":"))
    joined = pc.binary_join_element_wise(*pieces, "|") if len(pieces) > 1 else pieces[0]
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def array_literal(keys: pa.Array) -> str | list[object]:
    """``keys`` as a PostgreSQL array literal built by Arrow (integers and strings), else a list.

    A literal is an ``unknown``-typed parameter that PostgreSQL reads as the key column's array
    type; it spares psycopg adapting every key in Python.

    >>> array_literal(pa.array([1, 2])), array_literal(pa.array(['a', 'b,c']))
    ('{1,2}', '{"a","b,c"}')
    """
    if pa.types.is_integer(keys.type):
        text = pc.cast(keys, pa.string())
    elif pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type):
        escaped = pc.replace_substring(pc.replace_substring(keys, "\\", "\\\\"), '"', '\\"')
        text = pc.binary_join_element_wise('"', escaped, '"', "")
    else:
        return keys.to_pylist()
    items = pa.ListArray.from_arrays(pa.array([0, len(text)], pa.int32()), text)
    return "{" + pc.binary_join(items, ",")[0].as_py() + "}"


class LookupJoin:
    """Join each probe batch to a dimension table on ``probe_keys = dim keys`` (INNER or
    LEFT).

    The output is the probe columns followed by the dimension columns (prefixed by
    ``prefix``), in probe order.
    """

    def __init__(
        self,
        source: PostgresLookup,
        probe_key: str | list[str],
        left: bool = False,
        prefix: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.probe_keys = [probe_key] if isinstance(probe_key, str) else list(probe_key)
        if len(self.probe_keys) != len(source.keys):
            raise ValueError("one probe column per key column of the lookup table")
        self.left = left
        self.prefix = prefix
        self.clock = clock
        self.lookups = 0  # queries sent to the database
        self.looked_up_keys = 0
        options = source.options
        schema = source.schema
        if source.key == LOOKUP_KEY:
            schema = schema.append(pa.field(LOOKUP_KEY, pa.string()))
        self.cache = LookupCache(
            schema,
            source.key,
            options.cache_max_rows if options.cache_max_rows is not None else 0,
            options.cache_ttl_seconds,
        )

    def join(self, probe: pa.Table) -> pa.Table:
        """The joined rows of one micro-batch."""
        rows, at = self.matches(probe)
        dim = rows.take(at)  # a probe row without a match: nulls
        if not self.left:
            matched = pc.is_valid(at)
            probe, dim = probe.filter(matched), dim.filter(matched)
        out = probe
        for name, column in zip(dim.column_names, dim.columns, strict=True):
            out = out.append_column(self.prefix + name, column)
        return out

    def matches(self, probe: pa.Table) -> tuple[pa.Table, pa.Array]:
        """(dimension rows, the position there of each probe row's match or null)."""
        now = self.clock()
        parts = []
        for name, key in zip(self.probe_keys, self.source.keys, strict=True):
            column = probe.column(name).combine_chunks()
            key_type = self.source.schema.field(key).type
            parts.append(column if column.type == key_type else column.cast(key_type))
        keys = self.source.key_of(parts)
        distinct, distinct_parts = self._distinct(keys, parts)
        if self.cache.max_rows > 0:
            rows = self._cached_rows(distinct, distinct_parts, now)
        else:
            rows = self._fetch(distinct, distinct_parts)
        rows = rows.filter(rows.column(FOUND)).drop_columns([FOUND])
        at = pc.index_in(keys, value_set=rows.column(self.source.key).combine_chunks())
        if LOOKUP_KEY in rows.column_names:
            rows = rows.drop_columns([LOOKUP_KEY])
        return rows, at

    def _distinct(self, keys: pa.Array, parts: list[pa.Array]) -> tuple[pa.Array, list[pa.Array]]:
        """The distinct non-null keys and, per key column, their parts."""
        if len(parts) == 1:
            distinct = pc.unique(keys.drop_null())
            return distinct, [distinct]
        rows = pa.table({"k": keys, "i": pa.array(np.arange(len(keys)))}).filter(pc.is_valid(keys))
        first = rows.group_by("k", use_threads=False).aggregate([("i", "min")])
        at = first.column("i_min").combine_chunks()
        return first.column("k").combine_chunks(), [p.take(at) for p in parts]

    def _cached_rows(self, keys: pa.Array, parts: list[pa.Array], now: float) -> pa.Table:
        at = self.cache.positions(keys, now)
        absent = pc.is_null(at)
        hits = self.cache.rows.take(at.drop_null())
        if not pc.any(absent).as_py():
            return hits
        fetched = self._fetch(keys.filter(absent), [p.filter(absent) for p in parts])
        self.cache.add(fetched if self.source.options.cache_missing_key else _found(fetched), now)
        return pa.concat_tables([hits, fetched])

    def _fetch(self, keys: pa.Array, parts: list[pa.Array]) -> pa.Table:
        """The rows of ``keys``, with :data:`FOUND`; a key with no row gets a not-found row."""
        if len(keys) == 0:
            return self.cache.schema.empty_table()
        self.lookups += 1
        self.looked_up_keys += len(keys)
        found = self.source.rows(parts)
        absent = keys.filter(pc.invert(pc.is_in(keys, value_set=found.column(self.source.key))))
        found = found.append_column(FOUND, pa.array(np.ones(found.num_rows, dtype=bool)))
        columns = [
            absent
            if name == self.source.key
            else pa.nulls(len(absent), found.schema.field(name).type)
            for name in found.column_names
        ]
        columns[-1] = pa.array(np.zeros(len(absent), dtype=bool))
        return pa.concat_tables([found, pa.table(columns, schema=found.schema)])


class LookupVersions:
    """A lookup table as one table of a continuous temporal join
    (:class:`~streamhouse.joins.temporal.TemporalJoin`): the probe rows are looked up as
    they come (processing time); nothing is kept in state."""

    waits_on = None
    size = 0

    def __init__(self, join: LookupJoin) -> None:
        self.join = join

    def take(self, rows: pa.Table | None) -> None:
        pass  # the table is read by key, not as a source

    def matches(self, probes: pa.Table) -> tuple[pa.Table, np.ndarray]:
        rows, at = self.join.matches(probes)
        return rows, pc.fill_null(at, -1).to_numpy()

    def stage(self, watermark: int, batch: object) -> None:
        pass

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


def _found(rows: pa.Table) -> pa.Table:
    return rows.filter(rows.column(FOUND))


__all__ = [
    "JdbcLookupOptions",
    "LookupCache",
    "LookupError",
    "LookupJoin",
    "LookupVersions",
    "PostgresLookup",
    "composite_key",
    "duration_seconds",
]
