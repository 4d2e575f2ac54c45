"""Lookup tables in SQL: ``CREATE TABLE dim (...) WITH ('connector'='jdbc', ...)`` and
``JOIN dim FOR SYSTEM_TIME AS OF s.p ON s.k = dim.k``.

As in Flink, a lookup join probes at processing time: ``p`` must be a ``PROCTIME()`` column
of the probe stream; an event-time ``AS OF`` against a lookup table is refused (Flink:
"Event-Time Temporal Table Join requires both primary key and row time attribute in
versioned table"). A lookup table has no topic and cannot be read on its own.
"""

from __future__ import annotations

import pyarrow as pa

from streamhouse.errors import ConfigError, SqlError
from streamhouse.joins.lookup import JdbcLookupOptions, LookupJoin, PostgresLookup
from streamhouse.sql.ddl import StreamDef


def is_lookup_table(definition: StreamDef) -> bool:
    """Whether ``definition`` declares an external lookup table (``'connector'='jdbc'``)."""
    return definition.options.get("connector") == "jdbc"


def lookup_options(definition: StreamDef) -> JdbcLookupOptions:
    """The table's jdbc options, checked; a :class:`SqlError` naming the table if invalid."""
    try:
        return JdbcLookupOptions.from_options(definition.options)
    except ConfigError as error:
        raise SqlError(f"lookup table {definition.name}: {error}") from None


def is_proctime(definition: StreamDef, column: str) -> bool:
    """Whether ``column`` of ``definition`` is a ``PROCTIME()`` computed column."""
    return any(
        c.name == column and (c.expression or "").replace(" ", "").upper() == "PROCTIME()"
        for c in definition.columns
    )


def lookup_join_of(
    dim: StreamDef, probe: StreamDef, probe_time: str, probe_keys: list[str], dim_keys: list[str]
) -> LookupJoin:
    """The lookup join of ``probe`` rows into ``dim`` (refused unless Flink would run it)."""
    if not is_proctime(probe, probe_time):
        raise SqlError(
            f"a lookup join against {dim.name} (connector jdbc) probes at processing time:"
            f" FOR SYSTEM_TIME AS OF takes a PROCTIME() column of {probe.name},"
            f" not {probe_time}"
        )
    schema = lookup_schema(dim)
    for key in dim_keys:
        if key not in schema.names:
            raise SqlError(f"{key!r} is not a column of lookup table {dim.name}")
    try:
        source = PostgresLookup(lookup_options(dim), schema, dim_keys)
    except ConfigError as error:
        raise SqlError(str(error)) from None
    return LookupJoin(source, probe_keys)


def lookup_schema(dim: StreamDef) -> pa.Schema:
    """The columns of lookup table ``dim`` (those the database holds)."""
    return pa.schema([pa.field(c.name, c.type) for c in dim.columns if c.physical])


__all__ = [
    "is_lookup_table",
    "is_proctime",
    "lookup_join_of",
    "lookup_options",
    "lookup_schema",
]
