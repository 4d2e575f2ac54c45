"""Bounded SQL over the log: statements in, Arrow out.

DDL (``CREATE STREAM``, ``CREATE TABLE``, ``CREATE VIEW``, ``DROP``) runs at once against the
catalog in the metadata store. A query runs when its :class:`~streamhouse.result.Relation` is
read: every stream, view or topic it names is decoded from the log into Arrow (only the columns
the query uses), registered in a fresh DataFusion context, and the statement runs there. The
answer reflects the log as of the moment it runs.

``SET 'read.on-damage' = 'skip'`` makes the engine's queries read after it leave damaged
ranges of records out (listed in ``stats.damaged`` and logged); by default (``'fail'``) they
fail naming the range and its object.

Name resolution, in order: a stream or table declared with ``CREATE STREAM``/``CREATE TABLE``;
a view; a plain topic (its JSON schema inferred from a sample of its values). Names are
case-sensitive, as in Flink SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import datafusion
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from streamhouse.errors import (
    ConfigError,
    DamagedRangeError,
    SqlError,
    UnknownStreamError,
)
from streamhouse.joins.temporal import match_versions, temporal_inputs
from streamhouse.key_codes import group_codes
from streamhouse.log import Log
from streamhouse.result import Relation, status
from streamhouse.sql.computed import ComputedColumnError, ComputedColumns
from streamhouse.sql.ddl import stream_definition
from streamhouse.sql.dialect import Explain
from streamhouse.sql.execute import Answer, register, run_sql, session_context, sql_errors
from streamhouse.sql.functions import functions, to_datafusion
from streamhouse.sql.hints import SourceOptions, check_hints, source_options
from streamhouse.sql.joins import plan_temporal_join
from streamhouse.sql.nodes import TemporalJoin
from streamhouse.sql.parse import DIALECT, nesting_guard, node_position, parse, sql_error
from streamhouse.sql.plan import source_tables
from streamhouse.sql.projection import declared_stars, distinct_outputs, star_query
from streamhouse.sql.source import (
    METADATA_COLUMNS,
    RejectedRow,
    SourceTable,
    decode_json,
    infer_schema,
    read_records,
    read_source,
    with_metadata,
)
from streamhouse.sql.window_spec import take_out_windows
from streamhouse.windows.table import window_table

log = logging.getLogger(__name__)

STREAM_KINDS = {"STREAM": "stream", "TABLE": "table"}


@dataclass(slots=True)
class QueryStats:
    """What the last run of a query read and left out."""

    rows_read: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    damaged: list[DamagedRangeError] = field(default_factory=list)  # ranges skipped


class Engine:
    """Runs StreamHouse SQL statements over one :class:`~streamhouse.log.Log`."""

    def __init__(self, log_: Log) -> None:
        self.log = log_
        self.on_materialized_view: Callable[[exp.Create], object] | None = None
        self.skip_damaged = False  # SET 'read.on-damage' = 'skip'
        self.parallelism = 1  # SET 'parallelism': what EXPLAIN plans continuous queries at

    def execute(self, sql: str) -> Relation:
        """Run every statement of ``sql``; the result of the last one is returned."""
        statements = parse(sql)
        if not statements:
            raise SqlError("no SQL statement given", 1, 1)
        result: Relation | None = None
        for statement in statements:
            with nesting_guard(statement):
                result = self.statement(statement)
        assert result is not None
        return result

    def statement(self, statement: exp.Expr) -> Relation:
        check_hints(statement)
        if isinstance(statement, exp.Create):
            return self._create(statement)
        if isinstance(statement, exp.Drop):
            return self._drop(statement)
        if isinstance(statement, exp.Show):
            return self._show(statement)
        if isinstance(statement, exp.Query):
            return self.query(statement)
        if isinstance(statement, Explain):
            return self._explain(statement.this)
        if isinstance(statement, exp.Set):
            return self._set(statement)
        raise sql_error(f"{statement.key.upper()} statements are not supported here", statement)

    def _explain(self, statement: exp.Expr) -> Relation:
        """The continuous plan (stateless parts, stateful operators and their state layout),
        and for a query the bounded plan DataFusion would run."""
        from streamhouse.sql.inline import catalog_views, inline
        from streamhouse.sql.plan import plan_query

        lines: list[str] = []
        try:
            continuous = inline(statement, catalog_views(self._resolve))
            plan = plan_query(continuous)
            if self.parallelism > 1:
                from streamhouse.runtime.parallel import explain_parallel

                explained = explain_parallel(plan, self.parallelism, "<query>")
            else:
                explained = plan.explain()
            lines += ["continuous plan:", *("  " + x for x in explained.splitlines())]
        except SqlError as exc:
            lines += [f"continuous plan: not possible: {exc}"]
        query = (
            statement.expression if isinstance(statement, exp.Insert | exp.Create) else statement
        )
        if isinstance(query, exp.Query):
            self._check_names(query)
            lines += ["bounded plan (windows added to the sources, then DataFusion):"]
            rewritten, windowed = take_out_windows(query)
            for name, (source, spec) in sorted(windowed.items()):
                lines.append(
                    f"  {name} = {spec.kind.upper()} window over {source}.{spec.time_column}"
                )
            lines.append(f"  {to_datafusion(rewritten)}")
        table = pa.table({"plan": lines})
        return Relation(lambda: table, description="EXPLAIN", listing=True)

    def _set(self, statement: exp.Set) -> Relation:
        """``SET 'read.on-damage' = 'fail' | 'skip'``, the one setting of bounded queries, and
        ``SET 'parallelism' = 'N'``, the parallelism ``EXPLAIN`` plans continuous queries at."""
        from streamhouse.runtime.options import READ_ON_DAMAGE, on_damage, parallelism, set_options

        for key, value in set_options(statement).items():
            if key.lower() == "parallelism":
                self.parallelism = parallelism(value)
                continue
            if key.lower() != READ_ON_DAMAGE:
                raise ConfigError(
                    f"unknown setting {key!r} for bounded queries (known: {READ_ON_DAMAGE},"
                    " parallelism); continuous query options are SET in the query's file"
                )
            self.skip_damaged = on_damage(value) == "skip"
        return status("SET")

    # -- DDL ----------------------------------------------------------------------------------

    def _create(self, statement: exp.Create) -> Relation:
        kind = (statement.args.get("kind") or "").upper()
        name = (
            statement.this.name
            if isinstance(statement.this, exp.Table)
            else statement.this.this.name
        )
        replace = bool(statement.args.get("replace"))
        if_not_exists = bool(statement.args.get("exists"))
        existing = self.log.metadata.get_catalog(name)
        if existing is not None and if_not_exists:
            return status(f"{existing.kind.upper()} {name} exists already")
        if existing is not None and not replace:
            raise sql_error(f"{existing.kind} {name!r} already exists", statement.this)
        if kind in STREAM_KINDS:
            definition = stream_definition(statement)
            try:
                ComputedColumns.of(definition).check()
            except ComputedColumnError as error:
                raise sql_error(error.message, _column_def(statement, error.column)) from None
            try:
                SourceOptions.of(definition.options)  # the options StreamHouse reads are valid
            except SqlError as error:
                raise sql_error(error.message, statement.args.get("properties")) from None
            if self.log.get_topic(definition.topic) is None:
                partitions = int(
                    definition.options.get("partitions", self.log.settings.default_partitions)
                )
                self.log.create_topic(definition.topic, partitions)
            self.log.metadata.put_catalog(
                name, STREAM_KINDS[kind], statement.sql(dialect=DIALECT), replace=replace
            )
            return status(f"CREATE {kind} {name}")
        if kind == "VIEW":
            query = statement.expression
            self._check_names(query)  # names must resolve now, not when the view is read
            if _materialized(statement) and self.on_materialized_view is not None:
                self.on_materialized_view(statement)  # registers it and starts it
                return status(f"CREATE MATERIALIZED VIEW {name}")
            self.log.metadata.put_catalog(
                name, "view", statement.sql(dialect=DIALECT), replace=replace
            )
            return status(f"CREATE VIEW {name}")
        if kind == "FUNCTION":
            if name.lower() in {f.name for f in functions()}:
                return status(f"FUNCTION {name} is registered")
            raise sql_error(
                f"function {name!r} is not registered: define it in Python with "
                "sh.register_function(name, fn, input_types, return_type) (Arrow in, Arrow out)",
                statement.this,
            )
        raise sql_error(f"CREATE {kind} is not supported", statement)

    def _drop(self, statement: exp.Drop) -> Relation:
        target = (statement.args.get("tables") or [statement.this])[0]  # sqlglot 30: `tables`
        name = target.name
        kind = (statement.args.get("kind") or "").upper()
        if not self.log.metadata.drop_catalog(name) and not statement.args.get("exists"):
            raise UnknownStreamError(
                f"{kind.lower() or 'stream'} {name!r} does not exist", *_pos(target)
            )
        return status(f"DROP {kind} {name}")

    def _show(self, statement: exp.Show) -> Relation:
        what = statement.name.upper()
        if what == "TOPICS":
            rows = [{"topic": t.name, "partitions": t.partitions} for t in self.log.list_topics()]
            schema = pa.schema([("topic", pa.string()), ("partitions", pa.int32())])
        elif what in ("STREAMS", "TABLES", "VIEWS"):
            rows = [
                {"name": e.name, "kind": e.kind, "sql": e.sql}
                for e in self.log.metadata.list_catalog()
            ]
            schema = pa.schema([("name", pa.string()), ("kind", pa.string()), ("sql", pa.string())])
        else:
            raise sql_error(f"SHOW {what} is not supported", statement)
        table = pa.Table.from_pylist(rows, schema=schema)
        return Relation(lambda: table, description=f"SHOW {what}")

    # -- queries ------------------------------------------------------------------------------

    def query(self, query: exp.Query) -> Relation:
        """A lazy relation over ``query``; names are checked now, rows are read later."""
        self._check_names(query)
        stats = QueryStats()
        relation = Relation(
            lambda: self._answer(query, stats).to_arrow_table(),
            stream=lambda: self._answer(query, stats).to_arrow_reader(),
            description=query.sql(dialect=DIALECT),
        )
        relation.stats = stats  # type: ignore[attr-defined]
        return relation

    def _check_names(self, query: exp.Query) -> None:
        for table in source_tables(query):
            if self._resolve(table.name) is None:
                raise UnknownStreamError(
                    f"unknown stream, view or topic {table.name!r}", *_pos(table)
                )

    def _resolve(self, name: str) -> tuple[str, object] | None:
        entry = self.log.metadata.get_catalog(name)
        if entry is not None:
            return entry.kind, entry
        if self.log.get_topic(name) is not None:
            return "topic", name
        return None

    def _answer(self, query: exp.Query, stats: QueryStats) -> Answer:
        """The answer of a top-level query, not yet computed: its output names as written
        (duplicates too), its types plain (no view types)."""
        stats.rows_read = 0
        stats.rejected.clear()
        stats.damaged.clear()
        planned = self._plan(query, stats)
        if isinstance(planned, pa.Table):
            return Answer(planned)
        ctx, sql_query = planned
        sql_query, renamed = distinct_outputs(
            sql_query, lambda select: _output_names(ctx, star_query(select))
        )
        return Answer(self._dataframe(ctx, sql_query), _pos(query), renamed)

    def _run(self, query: exp.Query, stats: QueryStats) -> pa.Table:
        """The rows of ``query`` (a view's, read as a source of another query)."""
        planned = self._plan(query, stats)
        if isinstance(planned, pa.Table):
            return planned
        ctx, sql_query = planned
        frame = self._dataframe(ctx, sql_query)
        return sql_errors(frame.to_arrow_table, _pos(query))

    def _plan(
        self, query: exp.Query, stats: QueryStats
    ) -> pa.Table | tuple[datafusion.SessionContext, exp.Query]:
        """A context holding ``query``'s sources and the query to run there (windows taken
        out, stars spelled out), or the rows themselves (a temporal join)."""
        columns = referenced_columns(query)
        named = column_names(query)
        hints = source_options(query)
        if isinstance(query, exp.Select) and (temporal := plan_temporal_join(query)) is not None:
            return self._temporal(temporal, columns, named, stats, hints)
        query, windowed = take_out_windows(query)
        # FIRST_VALUE, LISTAGG, ... depend on the order rows arrive in: one partition
        # keeps the log's order (DataFusion's repartitioning would not)
        ctx = session_context(ordered=order_sensitive(query))
        schemas: dict[str, pa.Schema] = {}
        for name in sorted({t.name for t in source_tables(query)}):
            if name in windowed:
                source, spec = windowed[name]
                needed = (
                    None if columns is None else columns | {spec.time_column, *spec.partition_by}
                )
                table = window_table(
                    self.source_table(source, needed, stats, hints.get(source)), spec
                )
            else:
                table = self.source_table(name, columns, stats, hints.get(name))
            table = hide_metadata(table, named)
            schemas[name] = table.schema
            register(ctx, name, table)
        if named & METADATA_COLUMNS:
            query = declared_stars(query, schemas, METADATA_COLUMNS)
        return ctx, query

    def _dataframe(self, ctx: datafusion.SessionContext, query: exp.Query) -> datafusion.DataFrame:
        with nesting_guard(query):
            sql = to_datafusion(query)
        return sql_errors(lambda: ctx.sql(sql), _pos(query))

    def _temporal(
        self,
        plan: TemporalJoin,
        columns: set[str] | None,
        named: set[str],
        stats: QueryStats,
        hints: dict[str, dict[str, str]],
    ) -> pa.Table:
        """A bounded temporal join: every probe row with the version current at its time."""
        resolved = self._resolve(plan.right)
        version_time = None
        if resolved is not None and resolved[0] in ("stream", "table"):
            definition = stream_definition(parse(resolved[1].sql)[0])  # type: ignore[attr-defined]
            version_time = definition.watermark.column if definition.watermark else None
        if version_time is None:
            raise SqlError(
                f"the versioned table {plan.right!r} of a temporal join needs a time column: "
                "declare it as a stream with a WATERMARK"
            )
        wanted = None if columns is None else columns | {version_time, plan.probe_time}
        probes = self.source_table(plan.left, wanted, stats, hints.get(plan.left))
        versions = self.source_table(plan.right, wanted, stats, hints.get(plan.right))
        matched = match_versions(
            probes, plan.probe_time, plan.probe_keys, versions, version_time, plan.version_keys
        )
        left, right = temporal_inputs(probes, versions, matched)
        return run_sql(
            plan.sql,
            {"__left": hide_metadata(left, named), "__right": hide_metadata(right, named)},
            ordered=False,
        )

    def source_table(
        self,
        name: str,
        columns: set[str] | None,
        stats: QueryStats,
        hint: dict[str, str] | None = None,
    ) -> pa.Table:
        """The rows of a stream, view or topic as one Arrow table (``columns``: those needed;
        ``hint``: its OPTIONS hint)."""
        resolved = self._resolve(name)
        if resolved is None:
            raise UnknownStreamError(f"unknown stream, view or topic {name!r}")
        kind, entry = resolved
        schema = None
        topic = name
        options = SourceOptions.of({}, hint)
        if kind == "view" and hint:
            raise SqlError(f"an OPTIONS hint applies to a stream or topic; {name!r} is a view")
        if kind == "view":
            view = parse(entry.sql)[0]  # type: ignore[attr-defined]
            if not _materialized(view):
                return self._run(view.expression, stats)
            # A materialized view is its output topic, read as a table: the latest record per
            # key, tombstones dropped (a windowed view's keys repeat per window: all stay).
            damaged: list[DamagedRangeError] = []
            records = read_records(self.log, name, damaged=damaged if self.skip_damaged else None)
            stats.damaged.extend(damaged)
            _report_damage(name, damaged)
            rows = latest_per_key(records) if _updating(view) else np.arange(records.num_rows)
            records = records.take(pa.array(rows))
            stats.rows_read += records.num_rows
            schema = infer_schema(records["value"])
            if schema is None:
                return with_metadata(pa.table({}), records, np.arange(records.num_rows))
            table, kept, _ = decode_json(records["value"], schema)
            return with_metadata(table, records, kept)
        computed = None
        if kind != "topic":
            definition = stream_definition(parse(entry.sql)[0])  # type: ignore[attr-defined]
            topic = definition.topic
            schema = definition.schema()
            computed = ComputedColumns.of(definition)
            columns = computed.needs(columns)
            options = SourceOptions.of(definition.options, hint)
        if options.topic is not None and options.topic != topic:
            topic = options.topic
            if self.log.get_topic(topic) is None:
                raise UnknownStreamError(
                    f"topic {topic!r} of the OPTIONS hint on {name!r} does not exist"
                )
        source = read_source(self.log, topic, schema, columns, skip_damaged=self.skip_damaged)
        if source.rejected and not options.ignore_parse_errors:
            raise parse_failure(name, source.rejected[0])
        _report(name, source, stats)
        return computed.apply(source.table) if computed else source.table


def parse_failure(name: str, row: RejectedRow) -> SqlError:
    """The error of a row that does not parse, with 'json.ignore-parse-errors'='false'."""
    return SqlError(
        f"a record of {name!r} does not parse (partition {row.partition} offset {row.offset}: "
        f"{row.reason}) and 'json.ignore-parse-errors' is 'false' for it"
    )


def hide_metadata(table: pa.Table, named: set[str]) -> pa.Table:
    """``table`` without the metadata columns the query does not name: as in Flink, ``*`` is
    the declared columns; ``_offset``, ``_partition``, ``_timestamp`` and ``_key`` are there
    when asked for by name."""
    hidden = [c for c in table.column_names if c in METADATA_COLUMNS and c not in named]
    return table.drop_columns(hidden) if hidden else table


def _output_names(ctx: datafusion.SessionContext, query: exp.Query) -> list[str]:
    """The output column names DataFusion gives ``query``; none if it cannot plan it."""
    try:
        return ctx.sql(to_datafusion(query)).schema().names
    except Exception:  # the whole query then fails with DataFusion's own message
        return []


def _column_def(statement: exp.Create, name: str) -> exp.Expr:
    """The definition of column ``name`` in a CREATE STREAM (the statement if not found)."""
    for coldef in statement.find_all(exp.ColumnDef):
        if coldef.name == name:
            return coldef
    return statement


def _materialized(statement: exp.Expr) -> bool:
    properties = statement.args.get("properties")
    return properties is not None and any(
        isinstance(p, exp.MaterializedProperty) for p in properties.expressions
    )


def _updating(view: exp.Expr) -> bool:
    """Whether a materialized view's output is an upsert stream (no window keys its rows)."""
    from streamhouse.sql.plan import plan_query

    try:
        return plan_query(view).operator.updating
    except SqlError:
        return False


def _report(name: str, source: SourceTable, stats: QueryStats) -> None:
    stats.rows_read += source.rows_read
    stats.damaged.extend(source.damaged)
    _report_damage(name, source.damaged)
    if not source.rejected:
        return
    stats.rejected.extend(source.rejected)
    first = source.rejected[0]
    log.warning(
        "%d record(s) of %r do not fit its schema and were left out "
        "(first: partition %d offset %d: %s)",
        len(source.rejected),
        name,
        first.partition,
        first.offset,
        first.reason,
    )


def _report_damage(name: str, damaged: list[DamagedRangeError]) -> None:
    for exc in damaged:
        log.warning("%d record(s) of %r skipped: %s", exc.records, name, exc)


def latest_per_key(records: pa.Table) -> np.ndarray:
    """Indices of the records that make an upsert stream a table: per key the last record
    (in partition and offset order) unless it is a tombstone (null value); keyless records."""
    n = records.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    keys = records["key"]
    keyed = pc.is_valid(keys).to_numpy(zero_copy_only=False)
    order = np.lexsort((records["offset"].to_numpy(), records["partition"].to_numpy()))
    codes = group_codes([keys.take(pa.array(order))])
    _, from_end = np.unique(codes[::-1], return_index=True)
    last_sorted = np.zeros(n, dtype=bool)
    last_sorted[n - 1 - from_end] = True
    last = np.zeros(n, dtype=bool)
    last[order] = last_sorted
    alive = pc.is_valid(records["value"]).to_numpy(zero_copy_only=False)
    return np.flatnonzero((last | ~keyed) & alive)


def referenced_columns(query: exp.Expr) -> set[str] | None:
    """Column names a query uses, or None when it needs every column (``*``)."""
    if any(True for _ in query.find_all(exp.Star)):
        for star in query.find_all(exp.Star):
            if not isinstance(star.parent, exp.Count):
                return None
    return column_names(query) | set(METADATA_COLUMNS)


_ORDER_SENSITIVE = (exp.FirstValue, exp.LastValue, exp.GroupConcat, exp.JSONObjectAgg)
_ORDER_SENSITIVE_NAMES = {"LISTAGG", "JSON_ARRAYAGG"}


def order_sensitive(query: exp.Expr) -> bool:
    """Whether ``query`` has an aggregate whose answer depends on the order of its rows:
    FIRST_VALUE, LAST_VALUE, LISTAGG, JSON_ARRAYAGG or JSON_OBJECTAGG outside an OVER window
    (those name their order)."""
    for node in query.find_all(*_ORDER_SENSITIVE, exp.Anonymous):
        if isinstance(node, exp.Anonymous) and node.name.upper() not in _ORDER_SENSITIVE_NAMES:
            continue
        if not isinstance(node.parent, exp.Window):
            return True
    return False


def column_names(query: exp.Expr) -> set[str]:
    """The columns ``query`` names; ``t.c.field`` (a field of ROW column ``c``) names ``c``."""
    return {c.table if c.args.get("db") else c.name for c in query.find_all(exp.Column)}


def _pos(node: exp.Expr | None) -> tuple[int | None, int | None]:
    return node_position(node)
