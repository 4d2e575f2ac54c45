"""Inline views and CTEs, and merge filtering/projecting subqueries into the query over them.

A continuous query may read a (non-materialized) view, a CTE or a subquery that only filters
and projects one stream: ``SELECT ... FROM (SELECT k, ts, v * 2 AS w FROM s WHERE ...)``. Such an
input is merged into the query that reads it — its WHERE is ANDed in first, each column the
outer query names is replaced by the expression the input computes it as — so the planner sees
the stream itself and every operator (windows of either syntax, TVFs, joins) applies unchanged.

Time attributes flow through: a column the input passes on (``ts`` or ``ts AS event_time``)
keeps the stream's event time and watermark; a window on a column the input computes
(``ts + INTERVAL ...``, a CAST) is refused at that column.

>>> from streamhouse.sql.parse import parse_one
>>> q = parse_one(
...     "WITH c AS (SELECT k, t AS at FROM s WHERE v > 1) "
...     "SELECT k, COUNT(*) AS n FROM c GROUP BY k, TUMBLING(at, INTERVAL '1' MINUTE)")
>>> inline(q).sql()
"SELECT k, COUNT(*) AS n FROM s AS c WHERE v > 1 GROUP BY k, TUMBLING(t, INTERVAL '1' MINUTE)"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.dialect import TableArgument
from streamhouse.sql.parse import parse, sql_error
from streamhouse.sql.window_spec import KINDS, WINDOW_COLUMNS, tvf_call

ViewQuery = Callable[[str], exp.Query | None]
"""The query a (non-materialized) view stands for, by name; None for anything else."""


class _Entry(Protocol):
    sql: str


def catalog_views(resolve: Callable[[str], tuple[str, _Entry | str] | None]) -> ViewQuery:
    """The queries of the catalog's plain views (``resolve`` is the engine's name lookup);
    a materialized view is a topic of its own, not inlined."""

    def view(name: str) -> exp.Query | None:
        resolved = resolve(name)
        if resolved is None or resolved[0] != "view" or isinstance(resolved[1], str):
            return None
        statement = parse(resolved[1].sql)[0]
        properties = statement.args.get("properties")
        if properties is not None and any(
            isinstance(p, exp.MaterializedProperty) for p in properties.expressions
        ):
            return None
        query = statement.expression
        return query if isinstance(query, exp.Query) else None

    return view


_PLAIN = {"expressions", "from_", "where"}  # the parts of a select that only filters/projects


def inline(query: exp.Expr, views: ViewQuery | None = None) -> exp.Expr:
    """``query`` with views and CTEs inlined as subqueries, and every subquery that only filters
    and projects one stream merged into the SELECT reading it."""
    query = query.copy()
    if views is not None:
        _inline_views(query, views, set())
    for select in list(query.find_all(exp.Select, exp.Union)):
        _inline_ctes(select)
    for call in list(query.find_all(exp.Anonymous)):  # TABLE (q1 UNION ALL q2 / SELECT ...)
        inner = call.expressions[0] if len(call.expressions) == 1 else None
        if call.name.upper() == "TABLE" and isinstance(inner, exp.Union | exp.Select):
            call.replace(TableArgument(this=inner.subquery()))
    body = query.expression if isinstance(query, exp.Insert | exp.Create) else query
    for select in _branches(body):
        merged = _merge(select)
        if merged is not select:
            select.replace(merged)
            query = merged if select is query else query
    return query


def _branches(body: exp.Expr | None) -> list[exp.Select]:
    """The SELECTs of ``body``: itself, or each input of a UNION ALL."""
    if isinstance(body, exp.Subquery):
        return _branches(body.this)
    if isinstance(body, exp.Union):
        return _branches(body.this) + _branches(body.expression)
    return [body] if isinstance(body, exp.Select) else []


def _inline_views(query: exp.Expr, views: ViewQuery, seen: set[str]) -> None:
    ctes = {cte.alias_or_name for cte in query.find_all(exp.CTE)}
    for table in list(query.find_all(exp.Table)):
        if not table.name or table.name in ctes or isinstance(table.this, exp.Func):
            continue
        view = views(table.name)
        if view is None:
            continue
        if table.name in seen:
            raise sql_error(f"view {table.name!r} reads itself", table)
        view = view.copy()
        _inline_views(view, views, seen | {table.name})
        _replace_table(table, view)


def _inline_ctes(select: exp.Select | exp.Union) -> None:
    """Replace references to ``select``'s CTEs (in order, so one may read an earlier one)."""
    with_ = select.args.get("with_")
    if with_ is None:
        return
    for cte in with_.expressions:
        name = cte.alias_or_name
        for table in list(select.find_all(exp.Table)):
            if (
                table.name == name
                and not table.args.get("db")
                and table.find_ancestor(exp.CTE)
                in (
                    None,
                    *[c for c in with_.expressions if c is not cte],
                )
            ):
                _replace_table(table, cte.this.copy())
    select.set("with_", None)


def _replace_table(table: exp.Table, query: exp.Query) -> None:
    """Put ``query`` where ``table`` is, as a subquery under the table's alias (or name)."""
    if table.args.get("version") is not None:  # as a subquery, the join would lose its AS OF
        raise sql_error(
            f"the versioned table of a temporal join is a stream or table with a PRIMARY KEY"
            f" and a WATERMARK; {table.name!r} is a view or CTE (a versioned view is not"
            " supported yet): join the stream it reads, FOR SYSTEM_TIME AS OF, on its key",
            table,
        )
    alias = table.alias or table.name
    table.replace(query.subquery(alias))


def _simple(select: exp.Expr) -> bool:
    """Whether ``select`` only filters and projects one stream."""
    if not isinstance(select, exp.Select):
        return False
    if {k for k, v in select.args.items() if v} - _PLAIN:
        return False
    source = select.args["from_"].this
    if not isinstance(source, exp.Table) or isinstance(source.this, exp.Func):
        return False
    return not any(True for _ in select.find_all(exp.AggFunc, exp.Window, exp.Subquery))


def _merge(select: exp.Select) -> exp.Select:
    """``select`` with its one input merged in, when that input only filters and projects."""
    for sub in list(select.find_all(exp.Select)):
        if sub is not select and sub.parent is not None:
            merged = _merge_one(sub)
            if merged is not sub:
                sub.replace(merged)
    return _merge_one(select)


def _merge_one(select: exp.Select) -> exp.Select:
    if select.args.get("joins") or select.args.get("from_") is None:
        return select
    source = select.args["from_"].this
    tvf = _tvf_input(source)
    if tvf is not None:
        argument, inner = tvf
        if not _simple(inner):
            return select
        return _merge_into(select, inner, source.alias, argument)
    if isinstance(source, exp.Subquery) and _simple(source.this):
        return _merge_into(select, source.this, source.alias, None)
    return select


def _tvf_input(source: exp.Expr) -> tuple[exp.Expr, exp.Select] | None:
    """(the data argument, its query) of a window TVF over a subquery: ``TABLE(TUMBLE(TABLE
    (SELECT ...), ...))``."""
    call = tvf_call(source)
    if call is None:
        return None
    data = call.expressions[0] if call.expressions else None
    inner = None
    if isinstance(data, exp.Anonymous) and data.name.upper() == "TABLE":
        inner = data.expressions[0] if len(data.expressions) == 1 else None
    elif isinstance(data, TableArgument):  # TABLE v [PARTITION BY ...], v a view or CTE
        inner = data.this
    if isinstance(inner, exp.Subquery):
        inner = inner.this
    return (data, inner) if isinstance(inner, exp.Select) else None


def _merge_into(
    outer: exp.Select, inner: exp.Select, alias: str, argument: exp.Expr | None
) -> exp.Select:
    """``outer`` reading ``inner``'s stream directly (``argument``: the TVF's data argument)."""
    table = inner.args["from_"].this
    name = alias or table.alias or table.name
    computed: dict[str, exp.Expr] = {}
    star = False
    for projection in inner.expressions:
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Star) or (
            isinstance(body, exp.Column) and isinstance(body.this, exp.Star)
        ):
            star = True
            continue
        computed[projection.alias_or_name] = _unqualified(body)
    what = repr(alias) if alias else "the subquery"
    outer_aliases = {p.alias for p in outer.expressions if isinstance(p, exp.Alias)}
    times = _time_arguments(outer)

    def substitute(node: exp.Expr) -> exp.Expr:
        if not isinstance(node, exp.Column) or isinstance(node.this, exp.Star):
            return node
        if node.table and node.table != name:
            return node
        if node.name in WINDOW_COLUMNS and node.name not in computed:
            return node  # a column of the outer query's window
        if node.name in outer_aliases and node.name not in computed:
            return node
        value = computed.get(node.name)
        if value is None:
            if star:
                return exp.column(node.name, table=node.table or None)
            raise sql_error(f"column {node.name!r} is not among the columns of {what}", node)
        if id(node) in times and not isinstance(value, exp.Column):
            raise sql_error(
                f"{node.name!r} is computed ({value.sql(dialect='postgres')}) in {what}, so it"
                " is not a time attribute: window on the stream's time column (its WATERMARK"
                " column), passed on as it is",
                node,
            )
        return value.copy()

    projections: list[exp.Expr] = []
    for projection in outer.expressions:
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Star) or (
            isinstance(body, exp.Column) and isinstance(body.this, exp.Star)
        ):
            for item in inner.expressions:
                item = _unqualified(item)
                if argument is not None:  # the stream's columns only: the window's come last
                    item = _except_window_columns(item)
                projections.append(item)
            if argument is not None:  # as in Flink, after every column of the TVF's input
                projections.extend(exp.column(c) for c in WINDOW_COLUMNS)
            continue
        output = projection.alias_or_name
        rewritten = projection.transform(substitute, copy=False)
        if not isinstance(projection, exp.Alias) and (
            not isinstance(rewritten, exp.Column) or rewritten.name != output
        ):
            rewritten = exp.alias_(rewritten, output, quoted=True)
        projections.append(rewritten)
    outer.set("expressions", projections)
    for key in ("where", "group", "having", "order", "qualify"):
        part = outer.args.get(key)
        if part is not None:
            outer.set(key, part.transform(substitute, copy=False))
    if argument is not None:
        call = outer.args["from_"].this.this.expressions[0]
        partition = [
            p.transform(substitute, copy=False) for p in argument.args.get("partition_by") or []
        ]
        argument.replace(TableArgument(this=exp.to_table(table.name), partition_by=partition))
        for item in call.expressions[1:]:  # DESCRIPTOR(ts), sizes: calls, changed in place
            item.transform(substitute, copy=False)
    else:
        outer.set("from_", exp.From(this=exp.to_table(table.name).as_(name)))
    where = inner.args.get("where")
    if where is not None:
        condition = _unqualified(where.this)
        current = outer.args.get("where")
        outer.set(
            "where",
            exp.Where(this=exp.and_(condition, current.this) if current is not None else condition),
        )
    return outer


def _except_window_columns(item: exp.Expr) -> exp.Expr:
    """``item``, if it is ``*`` or ``x.*`` of the one stream under a window TVF, as ``*``
    without the window's columns."""
    if isinstance(item, exp.Star) or (
        isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
    ):
        return exp.Star(except_=[exp.column(c) for c in WINDOW_COLUMNS])
    return item


def _unqualified(node: exp.Expr) -> exp.Expr:
    """``node`` with its columns' table qualifiers dropped (it reads one stream)."""

    def strip(n: exp.Expr) -> exp.Expr:
        if isinstance(n, exp.Column) and n.table and not isinstance(n.this, exp.Star):
            return exp.column(n.name, quoted=n.this.quoted)
        return n

    return node.copy().transform(strip)


def _time_arguments(select: exp.Select) -> set[int]:
    """ids of the columns ``select`` windows on (TUMBLING(ts, ...), DESCRIPTOR(ts))."""
    found: set[int] = set()
    for call in select.find_all(exp.Anonymous):
        name = call.name.upper()
        if name == "DESCRIPTOR" or (name in KINDS and isinstance(call.parent, exp.Group)):
            first = call.expressions[0] if call.expressions else None
            if isinstance(first, exp.Column):
                found.add(id(first))
    return found


def inline_window_inputs(query: exp.Expr) -> exp.Expr:
    """``query`` with each window TVF that reads a subquery or a CTE (``TABLE(TUMBLE(TABLE
    (SELECT * FROM s WHERE ...), ...))``, ``WITH f AS (...) ... TABLE f``) reading the stream
    itself, the input's filter and projections merged into the SELECT over the TVF, as a
    continuous query reads them. A bounded query's window needs a stream, view or topic; an
    input doing more than filter and project one stream stays as it is (refused later). CTEs
    left unread are dropped, so their streams are not read."""
    if not any(_window_input(call) is not None for call in query.find_all(exp.Anonymous)):
        return query
    query = query.copy()
    for _ in range(16):  # a CTE reading a CTE: one level a round
        calls = [c for c in query.find_all(exp.Anonymous) if _window_input(c) is not None]
        if not calls:
            break
        changed = False
        for call in calls:
            data = call.expressions[0]
            if isinstance(data, exp.Anonymous):  # TABLE (SELECT ...) as sqlglot reads it
                data = data.replace(TableArgument(this=data.expressions[0].subquery()))
            cte = _cte_named(data.this) if isinstance(data.this, exp.Table) else None
            if cte is not None:
                data.set("this", cte.this.copy().subquery())
                changed = True
            select = call.find_ancestor(exp.Select)
            if select is None or KINDS[call.name.upper()] == "session":
                continue  # a session's rows must be filtered before they are merged: named
            try:  # merged in a copy: a refused merge leaves the input to be named
                merged = _merge_one(select.copy())
            except SqlError:  # e.g. a time column the input computes
                continue
            if merged != select:
                select.replace(merged)
                query = merged if select is query else query
                changed = True
        if not changed:
            break
    _drop_unread_ctes(query)
    return query


def name_window_inputs(query: exp.Expr) -> tuple[exp.Expr, dict[str, exp.Query]]:
    """``query`` with each window TVF's subquery input (one :func:`inline_window_inputs` did
    not merge: a session's, or one that joins, aggregates, ...) replaced by a name, and the
    query of each name: a bounded query reads its rows and windows them as a view's."""
    if not any(_window_input(call) is not None for call in query.find_all(exp.Anonymous)):
        return query, {}
    query = query.copy()
    inputs: dict[str, exp.Query] = {}
    for call in list(query.find_all(exp.Anonymous)):
        data = _window_input(call)
        if data is None:
            continue
        if isinstance(data, exp.Anonymous):
            data = data.replace(TableArgument(this=data.expressions[0].subquery()))
        if not isinstance(data.this, exp.Subquery):
            continue
        name = f"__input_{len(inputs)}"
        inputs[name] = _with_ctes_in_scope(data.this.this, data)
        data.set("this", exp.to_table(name))
    _drop_unread_ctes(query)
    return query, inputs


def _with_ctes_in_scope(input_: exp.Query, where: exp.Expr) -> exp.Query:
    """``input_`` (a copy) with the CTEs in scope at ``where`` that it reads, so that it can
    run on its own."""
    scopes: list[exp.With] = []
    node: exp.Expr | None = where
    while node is not None:
        with_ = node.args.get("with_") if isinstance(node, exp.Query) else None
        if with_ is not None:
            scopes.append(with_)
        node = node.parent
    ctes = [cte.copy() for with_ in reversed(scopes) for cte in with_.expressions]
    input_ = input_.copy()
    if not ctes:
        return input_
    own = input_.args.get("with_")
    input_.set("with_", exp.With(expressions=ctes + (own.expressions if own else [])))
    _drop_unread_ctes(input_)
    return input_


def _window_input(call: exp.Anonymous) -> exp.Expr | None:
    """The data argument of window TVF ``call`` when it is a subquery or names a CTE."""
    parent = call.parent
    if (
        not isinstance(parent, exp.Anonymous)
        or parent.name.upper() != "TABLE"
        or call.name.upper() not in KINDS
        or not call.expressions
    ):
        return None
    data = call.expressions[0]
    if isinstance(data, exp.Anonymous) and data.name.upper() == "TABLE":
        inner = data.expressions[0] if len(data.expressions) == 1 else None
        return data if isinstance(inner, exp.Select | exp.Union) else None
    if not isinstance(data, TableArgument):
        return None
    if isinstance(data.this, exp.Subquery):
        return data
    if isinstance(data.this, exp.Table) and _cte_named(data.this) is not None:
        return data
    return None


def _cte_named(table: exp.Table) -> exp.CTE | None:
    """The CTE in scope that unqualified ``table`` names, if any."""
    if table.args.get("db"):
        return None
    scope: exp.Expr | None = table
    while scope is not None:
        with_ = scope.args.get("with_") if isinstance(scope, exp.Query) else None
        for cte in with_.expressions if with_ is not None else []:
            if cte.alias_or_name == table.name and table.find_ancestor(exp.CTE) is not cte:
                return cte
        scope = scope.parent
    return None


def _drop_unread_ctes(query: exp.Expr) -> None:
    for with_ in list(query.find_all(exp.With)):
        for cte in list(with_.expressions):
            name = cte.alias_or_name
            if not any(
                t.name == name and not t.args.get("db") and _cte_named(t) is cte
                for t in query.find_all(exp.Table)
            ):
                cte.pop()
        if not with_.expressions:
            with_.pop()
