"""Bounded SQL over the log: statements in, Arrow out.

DDL (``CREATE STREAM``, ``CREATE TABLE``, ``CREATE VIEW``, ``DROP``) runs at once against the
catalog in the metadata store. ``INSERT INTO t SELECT`` runs at once too: the rows the query
answers now are appended to topic ``t`` as JSON records (keyed by the upsert key of an updating
query, as its continuous query's are); a statement set (``EXECUTE STATEMENT SET BEGIN ...
END``) answers every SELECT first, then runs each INSERT once. A query runs when its :class:`~streamhouse.result.Relation` is
read: every stream, view or topic it names is decoded from the log into Arrow (only the columns
the query uses), registered in a fresh DataFusion context, and the statement runs there. The
answer reflects the log as of the moment it runs.

``SET 'read.on-damage' = 'skip'`` makes the engine's queries read after it leave damaged
ranges of records out (listed in ``stats.damaged`` and logged); by default (``'fail'``) they
fail naming the range and its object. Queries read committed records only (Kafka's
read_committed: see :mod:`streamhouse.log.isolation`); ``SET 'isolation.level' =
'read_uncommitted'`` makes them read open and aborted transactions' records too.

``CREATE TEMPORARY STREAM | TABLE | VIEW`` declares an object of the engine's session only
(see :mod:`streamhouse.sql.session`): never written to the catalog, and refused if its name
clashes with a catalog object or another temporary object; ``DROP TEMPORARY ...`` drops it.

Name resolution, in order: a temporary object of the session; a stream or table declared with
``CREATE STREAM``/``CREATE TABLE``; a view; a plain topic (its JSON schema inferred from a sample of its values). Names are
case-sensitive, as in Flink SQL.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
    StreamHouseError,
    TopicExistsError,
    UnknownStreamError,
)
from streamhouse.iceberg.read import ColumnarCopy, columnar_copy, register_parquet_scan
from streamhouse.iceberg.tableflow import iceberg_enabled
from streamhouse.joins.lookup import LookupVersions
from streamhouse.joins.temporal import latest_matches, match_versions, temporal_inputs
from streamhouse.key_codes import group_codes
from streamhouse.log import Log
from streamhouse.log.isolation import ISOLATION_LEVEL, Isolation, isolation_level
from streamhouse.log.metadata import CatalogEntry
from streamhouse.result import Relation, status
from streamhouse.sql.arrival import orderable_by_arrival, proctime_ties_by_arrival
from streamhouse.sql.computed import ComputedColumnError, ComputedColumns
from streamhouse.sql.ddl import StreamDef, stream_definition
from streamhouse.sql.dialect import Explain
from streamhouse.sql.execute import (
    Answer,
    register,
    run_sql,
    session_context,
    sql_errors,
)
from streamhouse.sql.execute import (
    quoted as _quoted,
)
from streamhouse.sql.functions import functions, to_datafusion
from streamhouse.sql.hints import SourceOptions, check_hints, source_options
from streamhouse.sql.inline import inline_window_inputs, name_window_inputs
from streamhouse.sql.join_chain import (
    catalog_proctime_columns,
    catalog_stream_columns,
    catalog_stream_time,
    chain_stars,
)
from streamhouse.sql.join_order import aggregate_first
from streamhouse.sql.joins import name_temporal_joins, plan_temporal_join, plan_temporal_star
from streamhouse.sql.lookup import is_lookup_table, is_proctime, lookup_join_of, lookup_options
from streamhouse.sql.memory import default_memory_limit, parse_memory_limit, use_system_allocator
from streamhouse.sql.nodes import TemporalJoin, TemporalStar
from streamhouse.sql.over import named_windows
from streamhouse.sql.parse import DIALECT, nesting_guard, node_position, parse, sql_error
from streamhouse.sql.plan import source_tables
from streamhouse.sql.proctime_select import ProctimeStream, with_proctime_streams
from streamhouse.sql.projection import declared_stars, distinct_outputs, star_query
from streamhouse.sql.pruning import scan_bounds
from streamhouse.sql.scan import TopicScan
from streamhouse.sql.scan_cache import ColumnarCache, default_capacity, parse_cache_bytes
from streamhouse.sql.session import TemporaryObjects, is_temporary, without_temporary
from streamhouse.sql.shared_subqueries import SharedSubquery, computed_first, share_subqueries
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
from streamhouse.sql.statement_set import StatementSet, parse_with_sets
from streamhouse.sql.unnest import ELEMENT, expand_row_elements
from streamhouse.sql.window_spec import WindowSpec, take_out_windows
from streamhouse.windows.frame import NATIVE_KINDS, window_frame
from streamhouse.windows.table import window_table
from streamhouse.workers import worker

log = logging.getLogger(__name__)

STREAM_KINDS = {"STREAM": "stream", "TABLE": "table"}
READ_ICEBERG = "read.iceberg"
MEMORY_LIMIT = "memory.limit"
SCAN_FRAGMENTS = max(2, os.cpu_count() or 2)
"""Fragments of a streaming scan: DataFusion decodes that many segment groups at a time."""


@dataclass(slots=True)
class QueryStats:
    """What the last run of a query read and left out."""

    rows_read: int = 0
    objects_read: int = 0  # segment objects the streaming scans read (pruning, LIMIT)
    bytes_read: int = 0
    cached_runs: int = 0  # runs the columnar cache answered
    iceberg_files: int = 0  # Parquet files of Iceberg tables read in place of the log
    rejected: list[RejectedRow] = field(default_factory=list)
    damaged: list[DamagedRangeError] = field(default_factory=list)  # ranges skipped


class Engine:
    """Runs StreamHouse SQL statements over one :class:`~streamhouse.log.Log`."""

    def __init__(self, log_: Log, temporary: TemporaryObjects | None = None) -> None:
        self.log = log_
        self.on_materialized_view: Callable[[exp.Create], object] | None = None
        self.skip_damaged = False  # SET 'read.on-damage' = 'skip'
        self.isolation = Isolation.READ_COMMITTED  # SET 'isolation.level'
        # Streams and topics reach DataFusion as streaming scans (sql/scan.py); False reads
        # each whole into one table first, as order-sensitive queries and views still do.
        self.stream_sources = True
        cache_dir = log_.settings.data_dir / "scan-cache"
        capacity = log_.settings.scan_cache_bytes
        if capacity is None:
            capacity = default_capacity(cache_dir)
        elif not isinstance(capacity, int):  # Settings built directly, not through load()
            capacity = parse_cache_bytes(capacity)
        self.scan_cache = ColumnarCache(cache_dir, capacity) if capacity > 0 else None
        use_system_allocator()
        limit = log_.settings.memory_limit  # SET 'memory.limit' = '512MB'
        self.memory_limit = default_memory_limit() if limit is None else parse_memory_limit(limit)
        self.temporary = temporary if temporary is not None else TemporaryObjects()
        self.parallelism = 1  # SET 'parallelism': what EXPLAIN plans continuous queries at
        self.read_iceberg = True  # SET 'read.iceberg': streams' Iceberg tables read for the log
        self._proctime_streams: dict[str, ProctimeStream] = {}  # streams + PROCTIME() AS p

    def session(self) -> Engine:
        """An engine over the same log in a session of its own (a continuous query's file):
        it sees this engine's temporary objects; those it declares stay its own."""
        engine = Engine(self.log, self.temporary.child())
        engine.on_materialized_view = self.on_materialized_view
        engine.skip_damaged = self.skip_damaged
        engine.isolation = self.isolation
        engine.stream_sources = self.stream_sources
        engine.scan_cache = self.scan_cache  # one cache (and its size bound) per directory
        engine.memory_limit = self.memory_limit
        engine.parallelism = self.parallelism
        engine.read_iceberg = self.read_iceberg
        return engine

    def execute(self, sql: str) -> Relation:
        """Run every statement of ``sql``; the result of the last one is returned."""
        statements = parse_with_sets(sql)
        if not statements:
            raise SqlError("no SQL statement given", 1, 1)
        result: Relation | None = None
        for statement in statements:
            if isinstance(statement, StatementSet):
                result = self._statement_set(statement)
                continue
            with nesting_guard(statement):
                result = self.statement(statement)
        assert result is not None
        return result

    def statement(self, statement: exp.Expr) -> Relation:
        check_hints(statement)
        if isinstance(statement, exp.Query | exp.Insert | Explain):
            statement = self._with_proctime_streams(statement)
        if isinstance(statement, exp.Create):
            return self._create(statement)
        if isinstance(statement, exp.Drop):
            return self._drop(statement)
        if isinstance(statement, exp.Alter):
            return self._alter(statement)
        if isinstance(statement, exp.Show):
            return self._show(statement)
        if isinstance(statement, exp.Query):
            return self.query(statement)
        if isinstance(statement, exp.Insert):
            return status(self._write(*self._inserted(statement)))
        if isinstance(statement, Explain):
            return self._explain(statement.this)
        if isinstance(statement, exp.Set):
            return self._set(statement)
        raise sql_error(f"{statement.key.upper()} statements are not supported here", statement)

    # -- INSERT --------------------------------------------------------------------------------

    def _inserted(self, statement: exp.Insert) -> tuple[str, pa.Table, list[str]]:
        """(sink topic, rows, record key columns) of a bounded ``INSERT INTO t SELECT``: the
        rows the continuous query would end with, keyed as its records would be."""
        from streamhouse.sql.plan import plan_query

        check_hints(statement)
        target = statement.this
        while target is not None and not isinstance(target, exp.Table):
            target = target.this
        query = statement.expression
        if target is None or not isinstance(query, exp.Query):
            raise sql_error("INSERT takes INSERT INTO <topic> SELECT ...", statement)
        with nesting_guard(statement):
            rows = self.query(query).to_arrow_table()
        try:  # an updating query's records are keyed (upserts), as the continuous query's
            keys = plan_query(self._as_continuous(statement)).operator.key_columns
        except SqlError:
            keys = []
        return target.name, rows, list(keys)

    def _as_continuous(self, statement: exp.Expr) -> exp.Expr:
        """``statement`` as a continuous query plans it: the catalog's views inlined, the stars
        of joins of three or more inputs spelled out (as :mod:`streamhouse.runtime.query`)."""
        from streamhouse.sql.inline import catalog_views, inline

        inlined = inline(statement, catalog_views(self._resolve))
        return chain_stars(inlined, catalog_stream_columns(self._resolve))

    def _write(self, topic: str, rows: pa.Table, keys: list[str]) -> str:
        """Append ``rows`` to ``topic`` as the continuous INSERT's sink does (JSON records);
        what was done, in words."""
        from streamhouse.runtime.sink import TopicSink

        if self.log.get_topic(topic) is None:
            self.log.create_topic(topic, 1, {"cleanup.policy": "compact"} if keys else None)
        TopicSink(self.log, topic, keys).write(rows)
        return f"INSERT INTO {topic}: {rows.num_rows} rows"

    def _statement_set(self, statements: StatementSet) -> Relation:
        """A bounded statement set: every SELECT answers over the log as it is before any of
        the set's INSERTs writes, then each INSERT writes once."""
        inserted = [self._inserted(insert) for insert in statements.inserts]
        table = pa.table({"status": [self._write(*each) for each in inserted]})
        return Relation(lambda: table, description="STATEMENT SET")

    def _explain(self, statement: exp.Expr) -> Relation:
        """The continuous plan (stateless parts, stateful operators and their state layout),
        and for a query the bounded plan DataFusion would run."""
        from streamhouse.sql.plan import plan_query

        lines: list[str] = []
        try:
            plan = plan_query(self._as_continuous(statement))
            stream_time = catalog_stream_time(self._resolve)
            if self.parallelism > 1:
                from streamhouse.runtime.parallel import explain_parallel

                explained = explain_parallel(plan, self.parallelism, "<query>", stream_time)
            else:
                explained = plan.explain(stream_time)
            lines += ["continuous plan:", *("  " + x for x in explained.splitlines())]
        except SqlError as exc:
            lines += [f"continuous plan: not possible: {exc}"]
        query = (
            statement.expression if isinstance(statement, exp.Insert | exp.Create) else statement
        )
        if isinstance(query, exp.Query):
            self._check_names(query)
            try:  # a query may run continuously only
                merged, inputs = name_window_inputs(inline_window_inputs(query))
                rewritten, windowed = take_out_windows(merged)  # type: ignore[arg-type]
                bounded = to_datafusion(rewritten)
            except SqlError as exc:
                lines += [f"bounded plan: not possible: {exc}"]
            else:
                lines += ["bounded plan (windows added to the sources, then DataFusion):"]
                for name, input_ in sorted(inputs.items()):
                    lines.append(f"  {name} = {to_datafusion(input_)}")
                for name, (source, spec) in sorted(windowed.items()):
                    lines.append(
                        f"  {name} = {spec.kind.upper()} window over {source}.{spec.time_column}"
                    )
                lines.append(f"  {bounded}")
        table = pa.table({"plan": lines})
        return Relation(lambda: table, description="EXPLAIN", listing=True)

    def _set(self, statement: exp.Set) -> Relation:
        """``SET 'read.on-damage' = 'fail' | 'skip'``, ``SET 'memory.limit' = '512MB'`` and
        ``SET 'read.iceberg' = 'true' | 'false'`` (streams' Iceberg tables read in place of
        the log's records they hold: :mod:`streamhouse.iceberg.read`): the settings of
        bounded queries; ``SET 'parallelism' = 'N'``, the parallelism ``EXPLAIN`` plans
        continuous queries at."""
        from streamhouse.runtime.options import READ_ON_DAMAGE, on_damage, parallelism, set_options

        for key, value in set_options(statement).items():
            if key.lower() == READ_ON_DAMAGE:
                self.skip_damaged = on_damage(value) == "skip"
            elif key.lower() == ISOLATION_LEVEL:
                self.isolation = isolation_level(value)
            elif key.lower() == MEMORY_LIMIT:
                self.memory_limit = parse_memory_limit(value)
            elif key.lower() == "parallelism":
                self.parallelism = parallelism(value)
            elif key.lower() == READ_ICEBERG:
                if value.lower() not in ("true", "false"):
                    raise ConfigError(f"{READ_ICEBERG} is 'true' or 'false', not {value!r}")
                self.read_iceberg = value.lower() == "true"
            else:
                raise ConfigError(
                    f"unknown setting {key!r} for bounded queries (known: {READ_ON_DAMAGE}, "
                    f"{ISOLATION_LEVEL}, {MEMORY_LIMIT}, parallelism, {READ_ICEBERG}); continuous"
                    " query options are SET in the query's file"
                )
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
        temporary = self.temporary.get(name)
        if is_temporary(statement):
            return self._create_temporary(statement, kind, name, existing, temporary)
        if temporary is not None:
            raise sql_error(
                f"a temporary {temporary.kind} {name!r} exists in this session: DROP TEMPORARY "
                f"{_drop_kind(temporary.kind)} {name} first",
                statement.this,
            )
        if existing is not None and if_not_exists:
            return status(f"{existing.kind.upper()} {name} exists already")
        if existing is not None and not replace:
            raise sql_error(f"{existing.kind} {name!r} already exists", statement.this)
        if kind in STREAM_KINDS:
            self._declare_stream(statement)
            try:
                self.log.metadata.put_catalog(
                    name, STREAM_KINDS[kind], statement.sql(dialect=DIALECT), replace=replace
                )
            except SqlError:
                # Another session declared it between the look-up above and this write.
                raced = self.log.metadata.get_catalog(name) if if_not_exists else None
                if raced is None:
                    raise
                return status(f"{raced.kind.upper()} {name} exists already")
            return status(f"CREATE {kind} {name}")
        if kind == "VIEW":
            query = statement.expression
            self._check_names(query)  # names must resolve now, not when the view is read
            for table in source_tables(query):
                if (used := self.temporary.get(table.name)) is not None:
                    raise sql_error(
                        f"a view in the catalog cannot read temporary {used.kind} {table.name!r}"
                        " (the view outlives this session): CREATE TEMPORARY VIEW instead",
                        table,
                    )
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

    def _declare_stream(self, statement: exp.Create) -> None:
        """Check a ``CREATE STREAM | TABLE`` and create its topic if there is none."""
        definition = stream_definition(statement)
        if is_lookup_table(definition):  # an external table: no topic
            try:
                lookup_options(definition)
            except SqlError as error:
                raise sql_error(error.message, statement.args.get("properties")) from None
            return
        try:
            ComputedColumns.of(definition).check()
        except ComputedColumnError as error:
            raise sql_error(error.message, _column_def(statement, error.column)) from None
        try:
            SourceOptions.of(definition.options)  # the options StreamHouse reads are valid
        except SqlError as error:
            raise sql_error(error.message, statement.args.get("properties")) from None
        try:
            iceberg_enabled(definition)
        except StreamHouseError as error:
            raise sql_error(str(error), statement.args.get("properties")) from None
        if self.log.get_topic(definition.topic) is None:
            partitions = int(
                definition.options.get("partitions", self.log.settings.default_partitions)
            )
            # Declared at the same moment by another session: one topic either way.
            with contextlib.suppress(TopicExistsError):
                self.log.create_topic(definition.topic, partitions)

    def _alter(self, statement: exp.Alter) -> Relation:
        """``ALTER STREAM | TABLE s SET ('key' = 'value', ...)``: the options set (added or
        replaced) in the declaration in the catalog, checked as at ``CREATE``."""
        kind = (statement.args.get("kind") or "").upper()
        name = statement.this.name
        actions = statement.args.get("actions") or []
        if (
            kind not in STREAM_KINDS
            or len(actions) != 1
            or not isinstance(actions[0], exp.AlterSet)
        ):
            raise sql_error("ALTER takes ALTER STREAM <name> SET ('key' = 'value', ...)", statement)
        if (temporary := self.temporary.get(name)) is not None:
            raise sql_error(
                f"{name!r} is a temporary {temporary.kind}: it cannot be altered", statement.this
            )
        entry = self.log.metadata.get_catalog(name)
        if entry is None or entry.kind not in STREAM_KINDS.values():
            raise UnknownStreamError(f"stream {name!r} does not exist", *_pos(statement.this))
        changes: dict[str, exp.Expr] = {}
        for pair in actions[0].expressions:
            if not (isinstance(pair, exp.EQ) and isinstance(pair.expression, exp.Literal)):
                raise sql_error("SET takes 'key' = 'value' pairs", pair)
            key = pair.this.name if isinstance(pair.this, exp.Literal) else pair.this.sql()
            changes[key.lower()] = pair.expression
        create = parse(entry.sql)[0]
        properties = create.args.get("properties") or exp.Properties(expressions=[])
        kept = [p for p in properties.expressions if _option_key(p) not in changes]
        added = [exp.Property(this=exp.Literal.string(k), value=v) for k, v in changes.items()]
        properties.set("expressions", kept + added)
        create.set("properties", properties)
        try:
            self._declare_stream(create)
        except SqlError as error:  # located in the ALTER, not in the stored declaration
            raise sql_error(error.message, actions[0]) from None
        self.log.metadata.put_catalog(name, entry.kind, create.sql(dialect=DIALECT), replace=True)
        return status(f"ALTER {kind} {name}")

    def _create_temporary(
        self,
        statement: exp.Create,
        kind: str,
        name: str,
        existing: CatalogEntry | None,
        temporary: CatalogEntry | None,
    ) -> Relation:
        """``CREATE TEMPORARY STREAM | TABLE | VIEW``: an object of this session only."""
        if existing is not None:
            raise sql_error(
                f"{existing.kind} {name!r} exists in the catalog: a temporary {kind.lower()} "
                "of the same name would shadow it; choose another name",
                statement.this,
            )
        if temporary is not None and statement.args.get("exists"):
            return status(f"TEMPORARY {temporary.kind.upper()} {name} exists already")
        if temporary is not None and not statement.args.get("replace"):
            raise sql_error(f"temporary {temporary.kind} {name!r} already exists", statement.this)
        if _materialized(statement):
            raise sql_error(
                "CREATE TEMPORARY MATERIALIZED VIEW is not supported: a materialized view is a "
                "continuous query with an output topic, which outlives the session",
                statement,
            )
        plain = without_temporary(statement)
        if kind in STREAM_KINDS:
            self._declare_stream(plain)
            self.temporary.put(name, STREAM_KINDS[kind], plain.sql(dialect=DIALECT))
        elif kind == "VIEW":
            self._check_names(plain.expression)
            self.temporary.put(name, "view", plain.sql(dialect=DIALECT))
        else:
            raise sql_error(
                f"CREATE TEMPORARY {kind} is not supported (TEMPORARY STREAM, TABLE or VIEW)",
                statement,
            )
        return status(f"CREATE TEMPORARY {kind} {name}")

    def _drop(self, statement: exp.Drop) -> Relation:
        target = (statement.args.get("tables") or [statement.this])[0]  # sqlglot 30: `tables`
        name = target.name
        kind = (statement.args.get("kind") or "").upper()
        temporary = self.temporary.get(name)
        if is_temporary(statement):
            if not self.temporary.drop(name) and not statement.args.get("exists"):
                raise UnknownStreamError(
                    f"temporary {kind.lower() or 'stream'} {name!r} does not exist", *_pos(target)
                )
            return status(f"DROP TEMPORARY {kind} {name}")
        if temporary is not None:
            raise sql_error(
                f"{name!r} is a temporary {temporary.kind}: DROP TEMPORARY "
                f"{_drop_kind(temporary.kind)} {name}",
                target,
            )
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
            ] + [
                {"name": e.name, "kind": f"temporary {e.kind}", "sql": e.sql}
                for e in self.temporary.entries()
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

    def _with_proctime_streams(self, statement: exp.Expr) -> exp.Expr:
        """``statement`` with its ``SELECT *, PROCTIME() AS p FROM s`` relations reading
        streams with a ``PROCTIME()`` column (:mod:`streamhouse.sql.proctime_select`)."""
        statement, streams = with_proctime_streams(statement, self._resolve)
        self._proctime_streams.update(streams)
        return statement

    def _resolve(self, name: str) -> tuple[str, object] | None:
        if (stream := self._proctime_streams.get(name)) is not None:
            return stream.kind, stream
        entry = self.temporary.get(name) or self.log.metadata.get_catalog(name)
        if entry is not None:
            return entry.kind, entry
        if self.log.get_topic(name) is not None:
            return "topic", name
        return None

    def _answer(self, query: exp.Query, stats: QueryStats) -> Answer:
        """The answer of a top-level query, not yet computed: its output names as written
        (duplicates too), its types plain (no view types)."""
        stats.rows_read = stats.objects_read = stats.bytes_read = stats.cached_runs = 0
        stats.iceberg_files = 0
        stats.rejected.clear()
        stats.damaged.clear()
        planned = self._plan(query, stats)
        if isinstance(planned, pa.Table):
            return Answer(planned)
        ctx, sql_query, scans = planned
        sql_query, renamed = distinct_outputs(
            sql_query, lambda select: _output_names(ctx, star_query(select))
        )
        return Answer(
            self._dataframe(ctx, sql_query),
            _pos(query),
            renamed,
            scans=scans,
            done=lambda: self._scanned(scans, stats),
            memory_limit=self.memory_limit,
        )

    def _run(self, query: exp.Query, stats: QueryStats) -> pa.Table:
        """The rows of ``query`` (a view's, read as a source of another query)."""
        planned = self._plan(query, stats)
        if isinstance(planned, pa.Table):
            return planned
        ctx, sql_query, scans = planned
        frame = self._dataframe(ctx, sql_query)
        try:
            table = sql_errors(frame.to_arrow_table, _pos(query), scans, self.memory_limit)
        finally:
            self._scanned(scans, stats)
        return table

    def _scanned(self, scans: list[TopicScan], stats: QueryStats) -> None:
        """Adds what the streaming scans read and left out to ``stats`` (once they ran)."""
        for scan in scans:
            scan.close()
            _report(scan.name, scan, stats)
            stats.objects_read += scan.counter.objects
            stats.bytes_read += scan.counter.bytes
            stats.cached_runs += scan.cached_runs
            stats.iceberg_files += len(scan.columnar)

    def _plan(
        self, query: exp.Query, stats: QueryStats
    ) -> pa.Table | tuple[datafusion.SessionContext, exp.Query, list[TopicScan]]:
        """A context holding ``query``'s sources and the query to run there (windows taken
        out, stars spelled out) and the sources it streams, or the rows themselves (a
        temporal join)."""
        # OVER (w ROWS ...) of a WINDOW clause: DataFusion dropped w's PARTITION BY
        query = inline_window_inputs(named_windows(query))  # type: ignore[assignment]
        query, inputs = name_window_inputs(query)  # type: ignore[assignment]
        query = proctime_ties_by_arrival(query, self._proctime_columns, orderable_by_arrival)
        columns = referenced_columns(query)
        named = column_names(query)
        hints = source_options(query)
        if isinstance(query, exp.Select):
            temporal = plan_temporal_join(query) or plan_temporal_star(query)
            if temporal is not None:
                return self._temporal(temporal, columns, named, stats, hints)
        query, temporal_rows = name_temporal_joins(query)  # computed first, as a view is
        query, windowed = take_out_windows(query)
        # derived tables aggregating one source the same way (q5's two counts) are computed
        # once; ``bounded`` is the query as written, whose WHERE clauses prune each source
        bounded = query
        query, shared = share_subqueries(query, lambda name: windowed.get(name, name))
        # FIRST_VALUE, LISTAGG, ... depend on the order rows arrive in: one partition
        # keeps the log's order (DataFusion's repartitioning would not)
        ordered = order_sensitive(query)
        ctx = session_context(ordered=ordered, memory_limit=self.memory_limit)
        schemas: dict[str, pa.Schema] = {}
        scans: list[TopicScan] = []
        parquet: set[str] = set()  # sources DataFusion reads as Parquet files (and a tail)
        read = [query, *(s.select for s in shared)]
        for name in sorted(
            {t.name for q in read for t in source_tables(q)} - {s.name for s in shared}
        ):
            if name in temporal_rows:
                register(ctx, name, self._run(temporal_rows[name], stats))
                continue
            scan = None
            if name not in windowed and not ordered and self.stream_sources:
                scan = self.source_scan(name, columns, named, bounded, hints.get(name))
            if scan is not None:
                scans.append(scan)
                schemas[name] = scan.schema
                if register_parquet_scan(ctx, _quoted(name), scan):
                    parquet.add(name)
                else:
                    ctx.register_dataset(_quoted(name), scan.dataset())
                continue
            if name in windowed and not ordered and self.stream_sources:
                scan = self._window_scan(ctx, name, windowed[name], columns, named, bounded, hints)
                if scan is not None:
                    scans.append(scan)
                    schemas[name] = ctx.table(_quoted(name)).schema()
                    continue
            if name in windowed:
                source, spec = windowed[name]
                needed = (
                    None if columns is None else columns | {spec.time_column, *spec.partition_by}
                )
                # a window's rows in any order: the Iceberg table may give some (not ORDER-ed)
                # a window TVF's subquery input: its rows, as a view's
                rows = (
                    self._run(inputs[source], stats)
                    if source in inputs
                    else self.source_table(
                        source, needed, stats, hints.get(source), None if ordered else named
                    )
                )
                table = window_table(rows, spec)
            else:
                table = self.source_table(name, columns, stats, hints.get(name))
            table = hide_metadata(table, named)
            schemas[name] = table.schema
            register(ctx, name, table)
        query = expand_row_elements(query, {f.name: f.type for s in schemas.values() for f in s})  # type: ignore[assignment]
        if named & METADATA_COLUMNS:
            query = declared_stars(query, schemas, METADATA_COLUMNS)
        if parquet:
            query, moved = aggregate_first(query, parquet)
            # each such aggregate computed first (few rows): DataFusion then broadcasts it
            shared += filter(None, (computed_first(m, f"__first_{i}") for i, m in enumerate(moved)))
        for subquery in shared:
            self._computed_once(ctx, subquery, scans, _pos(query))
        return ctx, query, scans

    def _computed_once(
        self,
        ctx: datafusion.SessionContext,
        shared: SharedSubquery,
        scans: list[TopicScan],
        where: tuple[int | None, int | None],
    ) -> None:
        """Registers ``shared``'s rows, computed now, as table ``shared.name`` of ``ctx``
        (kept in memory, in its partitions, for each reader)."""
        try:
            rows = sql_errors(
                lambda: self._dataframe(ctx, shared.select).cache(),
                where,
                scans,
                self.memory_limit,
            )
        except BaseException:
            for scan in scans:
                scan.close()
            raise
        ctx.register_view(_quoted(shared.name), rows)

    def _proctime_columns(self, name: str) -> set[str]:
        """The ``PROCTIME()`` columns of stream or table ``name`` (none for a topic or view)."""
        return catalog_proctime_columns(self._resolve)(name)

    def _dataframe(self, ctx: datafusion.SessionContext, query: exp.Query) -> datafusion.DataFrame:
        with nesting_guard(query):
            sql = to_datafusion(query)
        return sql_errors(lambda: ctx.sql(sql), _pos(query))

    def _temporal(
        self,
        plan: TemporalJoin | TemporalStar,
        columns: set[str] | None,
        named: set[str],
        stats: QueryStats,
        hints: dict[str, dict[str, str]],
    ) -> pa.Table:
        """A bounded temporal (or lookup) join: every probe row with the version of each
        versioned table current at its time; the probes are read once."""
        probe = plan.source
        wanted = None if columns is None else columns | {j.probe_time for j in plan.tables.values()}
        probes = self.source_table(probe, wanted, stats, hints.get(probe))
        inputs: dict[str, pa.Table] = {}
        for name, join in plan.tables.items():
            versions, matched = self._versions(join, probes, columns, stats, hints)
            left, right = temporal_inputs(probes, versions, matched)
            inputs["__left"] = hide_metadata(left, named)  # the same probes for every join
            inputs[name] = hide_metadata(right, named)
        return run_sql(plan.sql, inputs, ordered=False)

    def _versions(
        self,
        plan: TemporalJoin,
        probes: pa.Table,
        columns: set[str] | None,
        stats: QueryStats,
        hints: dict[str, dict[str, str]],
    ) -> tuple[pa.Table, np.ndarray]:
        """The rows of ``plan``'s versioned (or lookup) table and, per probe row, the index of
        the one current at its time (-1: none)."""
        resolved = self._resolve(plan.right)
        version_time = None
        latest = False  # a processing-time probe meets the table as it is now
        probe = self._resolve(plan.left)
        if resolved is not None and resolved[0] in ("stream", "table"):
            definition = stream_definition(parse(resolved[1].sql)[0])  # type: ignore[attr-defined]
            if is_lookup_table(definition):
                return self._lookup(plan, definition, probes, probe)
            latest = (
                probe is not None
                and probe[0] in ("stream", "table")
                and is_proctime(stream_definition(parse(probe[1].sql)[0]), plan.probe_time)  # type: ignore[attr-defined]
            )
            version_time = definition.watermark.column if definition.watermark else None
        if version_time is None and not latest:
            raise SqlError(
                f"the versioned table {plan.right!r} of a temporal join needs a time column: "
                "declare it as a stream with a WATERMARK"
            )
        times = {plan.probe_time} if latest else {version_time, plan.probe_time}
        wanted = None if columns is None else columns | times
        versions = self.source_table(plan.right, wanted, stats, hints.get(plan.right))
        if latest:
            return versions, latest_matches(probes, plan.probe_keys, versions, plan.version_keys)
        return versions, match_versions(
            probes, plan.probe_time, plan.probe_keys, versions, version_time, plan.version_keys
        )

    def _lookup(
        self,
        plan: TemporalJoin,
        dim: StreamDef,
        probes: pa.Table,
        resolved: tuple[str, object] | None,
    ) -> tuple[pa.Table, np.ndarray]:
        """A bounded lookup join's rows of the lookup table and, per probe row, the index of
        the one for its key (-1: none)."""
        entry = resolved[1] if resolved is not None and resolved[0] != "view" else None
        probe_sql = getattr(entry, "sql", None)
        if probe_sql is None:
            raise SqlError(f"a lookup join probes a declared stream, not {plan.left!r}")
        probe = stream_definition(parse(probe_sql)[0])
        join = lookup_join_of(dim, probe, plan.probe_time, plan.probe_keys, plan.version_keys)
        try:
            return LookupVersions(join).matches(probes)
        finally:
            join.source.close()

    def _window_scan(
        self,
        ctx: datafusion.SessionContext,
        name: str,
        window: tuple[str, WindowSpec],
        columns: set[str] | None,
        named: set[str],
        query: exp.Query,
        hints: dict[str, dict[str, str]],
    ) -> TopicScan | None:
        """Registers windowed source ``name`` (``window``: its source and window) as a view
        of ``ctx`` that DataFusion windows (:func:`window_frame`) over its source's scan, when
        that source is a stream with an Iceberg table: the windowed rows of its Parquet files
        are then never Python's. None (nothing registered): windowed by ``window_table``."""
        source, spec = window
        if spec.kind not in NATIVE_KINDS:
            return None
        resolved = self._resolve(source)
        if resolved is None or resolved[0] not in STREAM_KINDS.values():
            return None
        needed = None if columns is None else columns | {spec.time_column}
        scan = self.source_scan(source, needed, named, query, hints.get(source), bounds_of=name)
        if scan is None:
            return None
        rows = _quoted(f"__rows_{name}")
        if not register_parquet_scan(ctx, rows, scan):
            ctx.register_dataset(rows, scan.dataset())
        try:
            ctx.register_view(_quoted(name), window_frame(ctx, ctx.table(rows), spec))
        except Exception:
            scan.close()
            raise
        return scan

    def source_scan(
        self,
        name: str,
        columns: set[str] | None,
        named: set[str],
        query: exp.Query,
        hint: dict[str, str] | None = None,
        bounds_of: str | None = None,
    ) -> TopicScan | None:
        """A stream or topic as a streaming scan (``columns``: those needed; the WHERE of
        ``query`` on ``bounds_of``, by default ``name``, prunes its segments), or None for a
        view (read as a table)."""
        resolved = self._resolve(name)
        if resolved is None:
            raise UnknownStreamError(f"unknown stream, view or topic {name!r}")
        kind, entry = resolved
        if kind == "view":
            return None
        topic, schema, computed, options, columns = self._declared(name, kind, entry, hint, columns)
        declared = set() if schema is None else set(schema.names)
        if computed is not None:
            declared |= {c.name for c in computed.columns}
        bounds = scan_bounds(query, bounds_of or name, frozenset(METADATA_COLUMNS - declared))
        columnar = self._columnar_copy(kind, entry, topic, options, named)

        def finish(table: pa.Table) -> pa.Table:
            if computed:  # DataFusion, not from the DataFusion thread that runs the scan
                table = worker("computed").submit(computed.apply, table).result()
            return hide_metadata(table, named)

        return TopicScan(
            self.log,
            name,
            topic,
            schema,
            columns,
            finish=finish,
            bounds=bounds,
            skip_damaged=self.skip_damaged,
            isolation=self.isolation,
            fail_on_rejected=(
                None if options.ignore_parse_errors else lambda row: parse_failure(name, row)
            ),
            fragments=SCAN_FRAGMENTS,
            cache=self.scan_cache,
            start_offsets=columnar.tail_starts if columnar else None,
            columnar=columnar.parts if columnar else (),
        )

    def _columnar_copy(
        self,
        kind: str,
        entry: object,
        topic: str,
        options: SourceOptions,
        named: set[str],
    ) -> ColumnarCopy | None:
        """The Iceberg table's part of a stream a streaming scan reads in place of the log's
        records, where the answer is the same (see :mod:`streamhouse.iceberg.read`)."""
        if kind == "topic" or not self.read_iceberg or not options.ignore_parse_errors:
            return None
        definition = stream_definition(parse(entry.sql)[0])  # type: ignore[attr-defined]
        if "_key" in named or topic != definition.topic or not iceberg_enabled(definition):
            return None
        try:  # the copy is an optimisation: if it cannot be read, the log still can
            return columnar_copy(self.log, definition)
        except Exception:
            log.warning(
                "Iceberg table of %r not read; reading the log", definition.name, exc_info=True
            )
            return None

    def _declared(
        self,
        name: str,
        kind: str,
        entry: object,
        hint: dict[str, str] | None,
        columns: set[str] | None,
    ) -> tuple[str, pa.Schema | None, ComputedColumns | None, SourceOptions, set[str] | None]:
        """What a stream or topic's declaration says: the topic it reads, its value schema
        (None: inferred), its computed columns, its options, and the columns to parse for
        ``columns`` (a computed column's inputs too)."""
        topic, schema, computed = name, None, None
        options = SourceOptions.of({}, hint)
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
        return topic, schema, computed, options, columns

    def source_table(
        self,
        name: str,
        columns: set[str] | None,
        stats: QueryStats,
        hint: dict[str, str] | None = None,
        named: set[str] | None = None,
    ) -> pa.Table:
        """The rows of a stream, view or topic as one Arrow table (``columns``: those needed;
        ``hint``: its OPTIONS hint). With ``named`` (the query's column names), rows may come
        from the stream's Iceberg table (then not by partition and offset)."""
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
            records = read_records(
                self.log,
                name,
                damaged=damaged if self.skip_damaged else None,
                isolation=self.isolation,
            )
            stats.damaged.extend(damaged)
            _report_damage(name, damaged)
            updating = _updating(chain_stars(view, catalog_stream_columns(self._resolve)))
            rows = latest_per_key(records) if updating else np.arange(records.num_rows)
            records = records.take(pa.array(rows))
            stats.rows_read += records.num_rows
            schema = infer_schema(records["value"])
            if schema is None:
                return with_metadata(pa.table({}), records, np.arange(records.num_rows))
            table, kept, _ = decode_json(records["value"], schema)
            return with_metadata(table, records, kept)
        topic, schema, computed, options, columns = self._declared(name, kind, entry, hint, columns)
        columnar = None
        if named is not None:
            columnar = self._columnar_copy(kind, entry, topic, options, named)
        source = read_source(
            self.log,
            topic,
            schema,
            columns,
            start_offsets=columnar.tail_starts if columnar else None,
            skip_damaged=self.skip_damaged,
            isolation=self.isolation,
            parallel=True,
        )
        if source.rejected and not options.ignore_parse_errors:
            raise parse_failure(name, source.rejected[0])
        _report(name, source, stats)
        table = source.table
        if columnar is not None and columnar.parts:
            table = columnar.table_with(table, source.schema, stats)
        return computed.apply(table) if computed else table


def parse_failure(name: str, row: RejectedRow) -> SqlError:
    """The error of a row that does not parse, with 'json.ignore-parse-errors'='false'."""
    return SqlError(
        f"a record of {name!r} does not parse (partition {row.partition} offset {row.offset}: "
        f"{row.reason}) and 'json.ignore-parse-errors' is 'false' for it"
    )


def hide_metadata(table: pa.Table, named: set[str]) -> pa.Table:
    """``table`` without the metadata columns the query does not name: as in Flink, ``*`` is
    the declared columns; ``_offset``, ``_partition``, ``_timestamp`` and ``_key`` are there
    when asked for by name (and so are an UNNEST expansion's element numbers, see
    :func:`~streamhouse.sql.unnest.lateral_input`)."""
    hidden = [
        c
        for c in table.column_names
        if (c in METADATA_COLUMNS or c.startswith(ELEMENT)) and c not in named
    ]
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


def _option_key(option: exp.Expr) -> str:
    """The lower-cased key of a ``WITH (key = 'value')`` option."""
    key = option.this
    return (key.name if isinstance(key, exp.Literal) else key.sql()).lower()


def _drop_kind(kind: str) -> str:
    """The word DROP takes for an object of ``kind`` (a stream is dropped as a TABLE too)."""
    return "VIEW" if kind == "view" else kind.upper()


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


def _report(name: str, source: SourceTable | TopicScan, stats: QueryStats) -> None:
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
