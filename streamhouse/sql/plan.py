"""Logical plans of continuous queries: the entry point, :func:`plan_query`, and
:func:`plan_select`, which hands one SELECT to the planner of its kind (GROUP BY and windows in
:mod:`~streamhouse.sql.window_aggregate`, joins in :mod:`~streamhouse.sql.joins`, unions in
:mod:`~streamhouse.sql.union`, Top-N in :mod:`~streamhouse.sql.top_n`, aggregates over updating
inputs in :mod:`~streamhouse.sql.recompute`, time sorts in :mod:`~streamhouse.sql.time_sort`,
OVER in :mod:`~streamhouse.sql.over`). The nodes they plan are :mod:`streamhouse.sql.nodes`;
the checks of a planned query :mod:`streamhouse.sql.plan_checks`.

>>> from streamhouse.sql.parse import parse_one
>>> plan = plan_query(parse_one(
...     "SELECT user_id, COUNT(*) AS n FROM events GROUP BY user_id, TUMBLING(ts, INTERVAL '1' MINUTE)"))
>>> plan.operator.keys, [str(c.func) for c in plan.operator.aggregates]
(['__k0'], ['count_all'])
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.bounds import TimeBound, evictable_bound
from streamhouse.sql.changelog_join import output_names, spelled_out_stars
from streamhouse.sql.dialect import TableArgument
from streamhouse.sql.functions import stateless_sql, to_datafusion
from streamhouse.sql.inline import inline
from streamhouse.sql.join_chain import nested_joins
from streamhouse.sql.joins import plan_join, plan_temporal_join, plan_temporal_star
from streamhouse.sql.nodes import (
    PASSED,
    Operator,
    Recompute,
    Stateless,
    StreamJoin,
    TemporalJoin,
    TemporalStar,
    TimeSort,
    TopN,
    UnionAll,
    WindowAggregate,
    Windowed,
)
from streamhouse.sql.over import OverAggregate, named_windows, plan_over
from streamhouse.sql.parse import sql_error
from streamhouse.sql.plan_checks import (
    check_changelogs,
    check_order,
    check_upsert_key,
)
from streamhouse.sql.recompute import distinct_as_group_by, filter_over_changes, plan_recompute
from streamhouse.sql.time_sort import plan_time_sort
from streamhouse.sql.top_n import plan_top_n, top_n_over_updates
from streamhouse.sql.top_n_changes import top_n_over_changes
from streamhouse.sql.union import (
    plan_distinct_union,
    plan_over_union,
    plan_union,
    window_over_union,
)
from streamhouse.sql.unnest import (
    EXPANSION,
    is_lateral_join,
    lateral_columns,
    lateral_elements,
    lateral_input,
)
from streamhouse.sql.window_aggregate import plan_window
from streamhouse.sql.window_inputs import (
    computed_time,
    session_aggregates_as_inputs,
    window_inputs,
)
from streamhouse.sql.window_rows import SESSION_ROWS, joins_window_rows, window_rows_in_join
from streamhouse.sql.window_spec import WindowKind, find_window, take_out_windows

log = logging.getLogger(__name__)

StreamTime = Callable[[str], str | None]
"""The time attribute (WATERMARK column) of a stream, by name; None when it has none."""


@dataclass(frozen=True)
class ContinuousPlan:
    """What a continuous query reads, computes and where it writes."""

    operator: (
        Stateless
        | WindowAggregate
        | Windowed
        | StreamJoin
        | TopN
        | TemporalJoin
        | TemporalStar
        | Recompute
        | TimeSort
        | UnionAll
        | OverAggregate
    )
    sink_kind: str = "results"  # results | topic
    sink: str | None = None  # the sink topic/stream name for INSERT INTO and materialized views
    options: dict[str, str] = field(default_factory=dict)
    derived: dict[str, Operator] = field(default_factory=dict)
    """Inputs computed by nested operators (a join over a windowed aggregate), by the name the
    outer operator reads them under; each is append-only and runs first in every micro-batch."""

    @property
    def source(self) -> str:
        return self.sources[0]

    @property
    def sources(self) -> list[str]:
        """The streams and topics the query reads (derived inputs resolved to theirs)."""
        found: list[str] = []
        for op in [self.operator, *self.derived.values()]:
            for name in op.sources:
                if name not in self.derived and name not in found:
                    found.append(name)
        return found

    def time_attribute(self, name: str, stream_time: StreamTime) -> str | None:
        """The time attribute (WATERMARK column) of input ``name``: a stream's from
        ``stream_time``, a derived input's that of the input it keeps the time attribute of."""
        derived = self.derived.get(name)
        if isinstance(derived, UnionAll) and derived.time_column is not None:
            # each input passes its stream's time attribute on (Stateless.time_column)
            passed = [getattr(self.derived[i], "time_column", None) for i in derived.inputs]
            attributes = [self.time_attribute(i, stream_time) for i in derived.inputs]
            return derived.time_column if passed == attributes else None
        if derived is not None:
            source = derived.time_source
            return self.time_attribute(source, stream_time) if source else None
        return stream_time(name)

    def missing_time_attribute(self, name: str, stream_time: StreamTime) -> str:
        """Why input ``name`` has no time attribute, and what to write: for a UNION ALL, the
        first input (by position and stream) that passes another column at the time position."""
        found = self._union_input_without_time(name, stream_time)
        return found[1] if found else f"{name!r} has no time attribute (declare a WATERMARK)"

    def union_without_time(self, stream_time: StreamTime) -> tuple[str, str] | None:
        """The first input of a UNION ALL under a window or an OVER that does not pass its
        stream's time attribute at the union's time column (its rows would be dropped as
        late): that stream, and what to write instead."""
        for name in self.derived:
            found = self._union_input_without_time(name, stream_time)
            if found is not None:
                return found
        return None

    def _union_input_without_time(
        self, name: str, stream_time: StreamTime
    ) -> tuple[str, str] | None:
        union = self.derived.get(name)
        if not isinstance(union, UnionAll) or union.time_column is None:
            return None
        for position, branch in enumerate(union.inputs, 1):
            op = self.derived[branch]
            passed = getattr(op, "time_column", None)
            stream = getattr(op, "source", branch)
            attribute = self.time_attribute(branch, stream_time)
            if passed == attribute:
                continue
            if attribute is None:
                attribute = stream_time(stream)
            where = f"input {position} of the UNION ALL (stream {stream!r}) passes {passed!r}"
            if attribute is None:
                return stream, (
                    f"{where}, and {stream!r} has no time attribute: declare a WATERMARK"
                    f" on {stream!r}, or leave it out of the union"
                )
            return stream, (
                f"{where}, not its time attribute {attribute!r}: select {attribute} there"
                f" (as {union.time_column}), as it is"
            )
        return None

    def join_bound(self, join: StreamJoin, stream_time: StreamTime) -> TimeBound | None:
        """The bound ``join`` evicts state by: the one between its inputs' time attributes."""
        left, right = (self.time_attribute(n, stream_time) for n in (join.left, join.right))
        return evictable_bound(list(join.candidates), left, right)

    def explain(self, stream_time: StreamTime | None = None) -> str:
        """The plan's operators; with ``stream_time`` (each stream's time attribute), each
        stream join's interval bound as it runs (else the bounds its condition states)."""

        def lines_of(node: Operator) -> list[str]:
            if isinstance(node, StreamJoin) and stream_time is not None:
                node = replace(node, bound=self.join_bound(node, stream_time))
            return _explain_node(node)

        sink = f"Sink  topic {self.sink}" if self.sink_kind == "topic" else "Sink  results"
        lines = [sink, *("  " + line for line in lines_of(self.operator))]
        for name, op in self.derived.items():
            lines += [f"  Derived input {name}:", *("    " + line for line in lines_of(op))]
        return "\n".join(lines)


def _explain_node(node: Operator) -> list[str]:
    """A node's ``EXPLAIN`` lines, its changelog mode under the first."""
    first, *rest = node.explain()
    return [first, f"  {node.changelog}", *rest]


def plan_query(statement: exp.Expr) -> ContinuousPlan:
    """Plan ``SELECT``, ``INSERT INTO t SELECT`` or ``CREATE MATERIALIZED VIEW v AS SELECT``
    (its CTEs and filtering subqueries merged in, see :mod:`streamhouse.sql.inline`)."""
    statement = named_windows(inline(statement))
    sink_kind, sink = "results", None
    query = statement
    if isinstance(statement, exp.Insert):
        target = statement.this
        while not isinstance(target, exp.Table) and target is not None:
            target = target.this
        sink_kind, sink = "topic", target.name if target is not None else None
        query = statement.expression
    elif isinstance(statement, exp.Create) and (statement.args.get("kind") or "").upper() == "VIEW":
        sink_kind, sink = "topic", statement.this.name
        query = statement.expression
    derived: dict[str, Operator] = {}
    if isinstance(query, exp.Union) and query.args.get("distinct"):
        operator: Operator = plan_distinct_union(query, derived, plan_select)
        check_changelogs(operator, derived, query)
        return ContinuousPlan(operator, sink_kind, sink, derived=derived)
    if isinstance(query, exp.Union):
        operator = plan_union(query, derived, plan_select)
        check_changelogs(operator, derived, query)
        return ContinuousPlan(operator, sink_kind, sink, derived=derived)
    if not isinstance(query, exp.Select):
        raise sql_error(
            "a continuous query must be a SELECT or a UNION ALL of SELECTs"
            f" ({query.key.upper()} is not supported continuously yet)",
            query,
        )
    operator = plan_select(query, derived)
    check_upsert_key(operator, query)
    check_order(operator, query)
    check_changelogs(operator, derived, query)
    return ContinuousPlan(operator, sink_kind, sink, derived=derived)


def _derive(select: exp.Select, derived: dict[str, Operator]) -> exp.Select:
    """Plan the subqueries that are direct join inputs of ``select`` as derived inputs; returns
    ``select`` reading them by name."""
    select = select.copy()
    sides = [select.args["from_"]] + list(select.args.get("joins") or [])
    outputs: dict[str, list[str] | None] = {}  # each input's columns, by alias (None: a stream's)
    updating = False
    for side in sides:
        sub = side.this
        if not isinstance(sub, exp.Subquery) or not isinstance(sub.this, exp.Select):
            if isinstance(sub, exp.Table) and sub.name not in derived:
                outputs[sub.alias_or_name] = None
            continue
        op = plan_select(sub.this, derived)  # an updating one makes a ChangelogJoin
        updating = updating or op.updating
        name = f"__derived_{len(derived)}"
        derived[name] = op
        alias = sub.alias_or_name or name
        names = output_names(sub.this)
        if names is not None:
            outputs[alias] = names
        sub.replace(exp.to_table(name).as_(alias))
    return spelled_out_stars(select, outputs) if updating else select


def plan_select(
    select: exp.Select, derived: dict[str, Operator]
) -> (
    Stateless
    | WindowAggregate
    | Windowed
    | StreamJoin
    | TopN
    | TemporalJoin
    | TemporalStar
    | TimeSort
    | Recompute
    | OverAggregate
):
    """The node ``select`` runs as (the query itself, or a union's, join's or ranking's input);
    the nested queries it reads are planned into ``derived`` first, by name."""
    if select.args.get("limit") is not None:
        raise sql_error("LIMIT has no meaning in a continuous query", select.args["limit"])
    if any(is_lateral_join(j) for j in select.args.get("joins") or []):
        inside = _lateral_inside_window(select)
        if inside is not None:
            return plan_select(inside, derived)
        return _plan_lateral(select, derived)
    select = distinct_as_group_by(select)
    if select.args.get("joins"):
        select = window_rows_in_join(select, derived, plan_select)
    joins = select.args.get("joins") or []
    over_union = window_over_union(select, derived, plan_select)
    if over_union is not None:
        return over_union
    select = window_inputs(select, derived, plan_select)
    sides = [select.args.get("from_")] + list(joins)
    if joins and any(isinstance(s.this, exp.Subquery) for s in sides if s is not None):
        windowed_inputs = take_out_windows(select)[1]
        if not windowed_inputs or any(
            not isinstance(s.this, exp.Subquery) for s in sides if s is not None
        ):
            if len(joins) > 1:  # three or more inputs: a chain of joins of two
                return plan_select(nested_joins(select), derived)
            rewritten = _derive(select, derived)
            return plan_join(rewritten, rewritten.args["joins"], derived)
    rewritten, windowed = take_out_windows(select)
    tables = source_tables(rewritten)
    plain = [t for t in tables if t.name not in windowed]
    if windowed and not joins_window_rows(select):
        if plain:
            raise sql_error(
                "a continuous query cannot yet mix windowed and unwindowed streams", plain[0]
            )
        spec, rest = find_window(select)
        source = rest.args.get("from_")
        table = source.this if source is not None else None
        simple = (
            spec is not None
            and not rest.args.get("joins")
            and isinstance(table, exp.Table)
            and not isinstance(table.this, exp.Func)
            and not any(True for _ in rest.find_all(exp.Window))
        )
        if simple:
            try:
                name = table.name  # type: ignore[union-attr]
                positions = getattr(derived[name], "identity", ()) if name in derived else True
                return plan_window(rest, spec, table, positions)  # type: ignore[arg-type]
            except SqlError:
                if spec.kind == WindowKind.SESSION:  # type: ignore[union-attr]
                    raise
                log.info("falling back to per-window evaluation")
        specs = {w for _, w in windowed.values()}
        if any(w.kind == WindowKind.SESSION for w in specs):
            inputs = session_aggregates_as_inputs(select, derived, plan_select)
            if inputs is None:
                raise sql_error(SESSION_ROWS, select)
            return plan_select(inputs, derived)
        if len(specs) > 1:
            raise sql_error(
                "every input of a windowed continuous query needs the same window", select
            )
        return Windowed(to_datafusion(rewritten), windowed)
    if len(joins) > 1 and plan_temporal_join(select) is None:
        if plan_temporal_star(select) is not None:  # several versioned tables: one operator
            return plan_join(select, joins, derived)
        return plan_select(nested_joins(select), derived)
    if joins:
        return plan_join(select, select.args.get("joins"), derived)
    source = select.args.get("from_")
    table = source.this if source is not None else None
    if isinstance(table, exp.Subquery) and _lateral(table.this):
        reading = select.copy()
        sub = reading.args["from_"].this
        if _stateful_part(table.this) is None:
            # a view or subquery of UNNEST (or LATERAL) rows: an input of its own, appends
            name = f"__derived_{len(derived)}"
            derived[name] = plan_select(table.this, derived)
            sub.replace(exp.to_table(name).as_(table.alias_or_name))
        else:  # the subquery (a ranking, say) reads the expansion, as the planners expect
            sub.this.replace(_read_expansion(table.this, derived))
        return plan_select(reading, derived)
    if isinstance(table, exp.Subquery):
        over = plan_over_union(select, derived, plan_select)
        if over is not None:
            return over
        top_n = plan_top_n(select, derived, plan_select)
        if top_n is not None:
            return top_n
        recompute = (
            plan_recompute(select, table, derived, plan_select)
            or top_n_over_changes(select, derived, plan_select)
            or top_n_over_updates(select, derived, plan_select)
            or filter_over_changes(select, table, derived, plan_select)
        )
        if recompute is not None:
            return recompute
        if _append_only_input(table.this, derived):  # (a view enriching a stream, say)
            reading = select.copy()
            name = f"__derived_{len(derived)}"
            derived[name] = plan_select(table.this, derived)
            reading.args["from_"].this.replace(exp.to_table(name).as_(table.alias_or_name))
            return plan_select(reading, derived)
        raise sql_error("subqueries in continuous queries are not supported yet", table)
    if not isinstance(table, exp.Table) or isinstance(table.this, exp.Func):
        raise sql_error("a continuous query must read a stream, view or topic", table or select)
    if any(True for _ in select.find_all(exp.Subquery)):
        raise sql_error("subqueries in continuous queries are not supported yet", select)
    if select.find(exp.Window) is not None:  # a Top-N is a subquery, planned above
        return plan_over(select, table)
    if select.args.get("group") is not None or any(True for _ in select.find_all(exp.AggFunc)):
        return plan_window(select, None, table)  # an updating aggregate: upserts per key
    if select.args.get("order") is not None:
        return plan_time_sort(select, table)
    sql, names_sql = stateless_sql(select)
    return Stateless(table.name, sql, names_sql=names_sql)


def _append_only_input(query: exp.Expr, derived: dict[str, Operator]) -> bool:
    """Whether ``query`` is a join or an OVER aggregation whose rows are final once out (a
    temporal join, an inner interval or regular join of streams; LAG, a running SUM): its
    rows are an input of their own to the query over it."""
    if not isinstance(query, exp.Select):
        return False
    try:
        op = plan_select(query.copy(), dict(derived))
    except SqlError:
        return False
    kinds = StreamJoin | TemporalJoin | TemporalStar | OverAggregate
    return isinstance(op, kinds) and not op.updating


def _stateful_part(select: exp.Select) -> exp.Expr | None:
    """The first part of ``select`` (a SELECT with lateral joins) that keeps state: a join
    after them, a GROUP BY or aggregate, a window, an ORDER BY, a subquery, DISTINCT."""
    joins = select.args.get("joins") or []
    others = [j for j in joins if not is_lateral_join(j)]
    if others:
        return others[0]
    rest = select.copy()
    rest.set("joins", None)  # a LATERAL subquery is a lateral join, not a subquery to keep
    return (
        rest.args.get("group")
        or rest.find(exp.AggFunc)
        or rest.find(exp.Window)
        or rest.args.get("order")
        or rest.find(exp.Subquery)
        or rest.args.get("distinct")
    )


def _lateral(query: exp.Expr) -> bool:
    """Whether ``query`` is a SELECT with lateral joins (UNNEST, LATERAL subqueries)."""
    joins = query.args.get("joins") if isinstance(query, exp.Select) else None
    return any(is_lateral_join(j) for j in joins or [])


def _plan_lateral(select: exp.Select, derived: dict[str, Operator]) -> Operator:
    """A query over one stream and its lateral joins (UNNEST, LATERAL subqueries; see
    :mod:`streamhouse.sql.unnest`). One that filters and projects is one stateless operator
    (the row's time attribute passed through); any other reads the expansion as a derived
    input, each row identified by its source row's position and its element's number, and is
    planned over it as over a stream (an aggregate, a window, OVER, a join)."""
    if _stateful_part(select) is None:
        return Stateless(_lateral_source(select).name, to_datafusion(select))
    spec, _ = find_window(select)
    if spec is not None and spec.time_column in lateral_columns(select):
        group = select.args.get("group") or select
        columns = (c for c in group.find_all(exp.Column) if c.name == spec.time_column)
        where = next(columns, select)
        raise sql_error(computed_time(spec.time_column, "a lateral join (UNNEST, LATERAL)"), where)
    return plan_select(_read_expansion(select, derived), derived)


def _lateral_inside_window(select: exp.Select) -> exp.Select | None:
    """``FROM TABLE(TUMBLE(TABLE s, ..)) CROSS JOIN UNNEST(a) AS t (x)`` as ``FROM
    TABLE(TUMBLE(TABLE (SELECT * FROM s CROSS JOIN UNNEST(a) AS t (x)), ..))``: a row's
    windows do not depend on its elements, so the window TVF reads the expansion (a derived
    input passing the stream's time attribute). None when the FROM is no window TVF over a
    table or the joins are not all lateral."""
    joins = select.args.get("joins") or []
    source = select.args.get("from_")
    tvf = source.this.this if source is not None and isinstance(source.this, exp.Table) else None
    call = tvf.expressions[0] if isinstance(tvf, exp.Anonymous) and tvf.expressions else None
    if (
        not isinstance(tvf, exp.Anonymous)
        or tvf.name.upper() != "TABLE"
        or not isinstance(call, exp.Anonymous)
        or not call.expressions
        or not isinstance(call.expressions[0], TableArgument)
        or not isinstance(call.expressions[0].this, exp.Table)
        or not all(is_lateral_join(j) for j in joins)
    ):
        return None
    table = call.expressions[0].this
    expansion = exp.Select(expressions=[exp.Star()]).from_(table.copy())
    expansion.set("joins", [j.copy() for j in joins])
    rewritten = select.copy()
    rewritten.set("joins", None)
    argument = rewritten.args["from_"].this.this.expressions[0].expressions[0]
    argument.replace(TableArgument(this=expansion.subquery()))
    lateral = {j.this.args["alias"].name for j in joins if j.this.args.get("alias")}
    for column in rewritten.find_all(exp.Column):
        if column.table in lateral:  # the expansion's columns, unqualified
            column.set("table", None)
    return rewritten


def _lateral_source(select: exp.Select) -> exp.Table:
    """The stream ``select``'s lateral joins expand the rows of."""
    source = select.args.get("from_")
    table = source.this if source is not None else None
    if not isinstance(table, exp.Table) or isinstance(table.this, exp.Func):
        raise sql_error("a continuous CROSS JOIN UNNEST must read a stream, view or topic", table)
    return table


def _read_expansion(select: exp.Select, derived: dict[str, Operator]) -> exp.Select:
    """``select`` reading its FROM and lateral joins as a derived input, each row identified
    by its source row's position and its element's number (:func:`lateral_input`)."""
    table = _lateral_source(select)
    expansion, outer = lateral_input(select)
    name = f"__derived_{len(derived)}"
    # every source column passes, its time attribute among them (as it is: a window or a join
    # over the expansion keeps the stream's)
    identity = ("_partition", "_offset", *lateral_elements(expansion))
    derived[name] = Stateless(
        table.name, to_datafusion(expansion), True, time_column=PASSED, identity=identity
    )
    for reference in outer.find_all(exp.Table):
        if reference.name == EXPANSION:
            reference.set("this", exp.to_identifier(name))
    return outer


def source_tables(query: exp.Expr) -> list[exp.Table]:
    """Table references in ``query`` that are not its own CTEs."""
    ctes = {cte.alias_or_name for cte in query.find_all(exp.CTE)}
    return [
        t
        for t in query.find_all(exp.Table)
        if t.name and t.name not in ctes and not isinstance(t.this, exp.Func)
    ]
