"""Planning continuous joins: stream joins (regular and interval), their outer variants,
temporal joins and aggregates over joins (a window TVF joined to streams is
:mod:`streamhouse.sql.window_rows`)."""

from __future__ import annotations

from sqlglot import exp

from streamhouse.sql.bounds import candidate_bounds, conjuncts
from streamhouse.sql.changelog_join import ChangelogJoin, plan_changelog_join
from streamhouse.sql.functions import to_datafusion
from streamhouse.sql.nodes import (
    ALL_ROWS,
    ROW,
    Operator,
    OuterJoin,
    Recompute,
    StreamJoin,
    TemporalJoin,
    TemporalStar,
    WindowAggregate,
)
from streamhouse.sql.parse import sql_error
from streamhouse.sql.plan_checks import refuse_retractions
from streamhouse.sql.recompute import recompute_over_retractions
from streamhouse.sql.window_aggregate import plan_window


def plan_temporal_join(select: exp.Select) -> TemporalJoin | None:
    """The temporal join of ``select`` (``JOIN t FOR SYSTEM_TIME AS OF x.ts``), if it has one."""
    joins = select.args.get("joins") or []
    if len(joins) != 1 or not isinstance(joins[0].this, exp.Table):
        return None
    join, right = joins[0], joins[0].this
    version = right.args.get("version")
    if version is None:
        return None
    left = select.args["from_"].this
    if not isinstance(left, exp.Table) or isinstance(left.this, exp.Func):
        raise sql_error("a temporal join probes a stream directly", left)
    if join.side and join.side.upper() != "LEFT":
        raise sql_error("a temporal join is INNER or LEFT", join)
    left_alias, right_alias = left.alias_or_name, right.alias_or_name
    at = version.expression
    if not isinstance(at, exp.Column) or (at.table and at.table != left_alias):
        raise sql_error("FOR SYSTEM_TIME AS OF takes a time column of the probe side", at)
    probe_keys, version_keys = [], []
    for item in conjuncts(join.args.get("on")):
        if isinstance(item, exp.EQ) and all(
            isinstance(x, exp.Column) for x in (item.this, item.expression)
        ):
            a, b = item.this, item.expression
            if a.table == right_alias and b.table == left_alias:
                a, b = b, a
            if a.table == left_alias and b.table == right_alias:
                probe_keys.append(a.name)
                version_keys.append(b.name)
    if not probe_keys:
        raise sql_error("a temporal join needs an equality on the versioned table's key", join)
    rewritten = select.copy()
    rewritten.args["from_"].this.replace(exp.to_table("__left").as_(left_alias))
    new_join = rewritten.args["joins"][0]
    new_join.this.replace(exp.to_table("__right").as_(right_alias))
    row = exp.EQ(
        this=exp.column(ROW, table=left_alias), expression=exp.column(ROW, table=right_alias)
    )
    on = new_join.args.get("on")
    new_join.set("on", exp.and_(row, on) if on is not None else row)
    _hide_row(rewritten, left_alias, right_alias)
    return TemporalJoin(
        left.name, right.name, to_datafusion(rewritten), at.name, probe_keys, version_keys
    )


def plan_temporal_star(select: exp.Select) -> TemporalStar | None:
    """The :class:`TemporalStar` of ``select`` when it joins two or more versioned tables
    (``FOR SYSTEM_TIME AS OF``) and nothing else; each joins on keys of the probe stream
    (a key of another versioned table is refused at its join)."""
    joins = select.args.get("joins") or []
    versioned = [j for j in joins if isinstance(j.this, exp.Table) and j.this.args.get("version")]
    if len(joins) < 2 or len(versioned) != len(joins):
        return None
    left_alias = select.args["from_"].this.alias_or_name
    singles = []
    for join in joins:
        on = join.args.get("on")
        others = {c.table for c in on.find_all(exp.Column)} if on is not None else set()
        others -= {left_alias, join.this.alias_or_name}
        if others:
            raise sql_error(
                "a temporal join of several versioned tables joins each on keys of the probe"
                f" stream {left_alias!r} (a star schema), not of another table"
                f" ({', '.join(sorted(others))})",
                join,
            )
        one = select.copy()
        one.set("joins", [join.copy()])
        one.set("where", None)
        single = plan_temporal_join(one)
        assert single is not None
        singles.append(single)
    rewritten = select.copy()
    rewritten.args["from_"].this.replace(exp.to_table("__left").as_(left_alias))
    aliases = [left_alias]
    for index, join in enumerate(rewritten.args["joins"]):
        alias = join.this.alias_or_name
        aliases.append(alias)
        join.this.replace(exp.to_table(f"__right{index}").as_(alias))
        row = exp.EQ(
            this=exp.column(ROW, table=left_alias), expression=exp.column(ROW, table=alias)
        )
        on = join.args.get("on")
        join.set("on", exp.and_(row, on) if on is not None else row)
    _hide_row(rewritten, *aliases)
    return TemporalStar(tuple(singles), to_datafusion(rewritten))


def name_temporal_joins(query: exp.Expr) -> tuple[exp.Expr, dict[str, exp.Select]]:
    """``query`` with each nested SELECT that is a temporal join (a subquery's, a CTE's) read
    from a name (``SELECT * FROM __temporal_0``), and the SELECT of each name: a bounded query
    computes those rows first, as it reads a view's.

    >>> from streamhouse.sql.parse import parse_one
    >>> query, nested = name_temporal_joins(parse_one(
    ...     "WITH j AS (SELECT a.k, b.w FROM a JOIN b FOR SYSTEM_TIME AS OF a.t ON a.k = b.k)"
    ...     " SELECT w, COUNT(*) AS n FROM j GROUP BY w"))
    >>> query.sql(), sorted(nested)
    ('WITH j AS (SELECT * FROM __temporal_0) SELECT w, COUNT(*) AS n FROM j GROUP BY w', ['__temporal_0'])
    """
    nested: dict[str, exp.Select] = {}
    selects = [s for s in query.find_all(exp.Select) if s is not query]
    if not any(j.this.args.get("version") for s in selects for j in s.args.get("joins") or []):
        return query, nested
    query = query.copy()
    for select in [s for s in query.find_all(exp.Select) if s is not query]:
        joins = select.args.get("joins") or []
        if any(isinstance(j.this, exp.Table) and j.this.args.get("version") for j in joins):
            name = f"__temporal_{len(nested)}"
            nested[name] = select.copy()
            select.replace(exp.select("*").from_(name))
    return query, nested


def _hide_row(select: exp.Select, *aliases: str) -> None:
    """``*`` and ``x.*`` in ``select`` without the ``ROW`` column the join matches on: as in
    Flink, ``*`` is the declared columns of every side."""
    items: list[exp.Expr] = []
    for item in select.expressions:
        if isinstance(item, exp.Star):
            items += [exp.Column(this=exp.Star(), table=exp.to_identifier(a)) for a in aliases]
        else:
            items.append(item)
    for item in items:
        if isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
            item.this.set("except_", [exp.column(ROW)])
    select.set("expressions", items)


def plan_join(
    select: exp.Select, joins: list[exp.Join], derived: dict[str, Operator] | None = None
) -> StreamJoin | TemporalJoin | TemporalStar | WindowAggregate | Recompute | ChangelogJoin:
    window = select.find(exp.Window)
    if window is not None:  # it would rank or sum each micro-batch's joined rows alone
        raise sql_error(
            f"{window.this.sql(dialect='postgres')} OVER (...) in a continuous join's SELECT is"
            " not supported (it runs bounded): rank in a subquery over the join instead, a Top-N"
            " or deduplication (SELECT ... FROM (SELECT ..., ROW_NUMBER() OVER (...) AS rn FROM"
            " x JOIN y ...) WHERE rn <= N)",
            window,
        )
    aggregates = select.args.get("group") is not None or any(
        a.find_ancestor(exp.Window) is None for a in select.find_all(exp.AggFunc)
    )
    temporal = plan_temporal_join(select) or plan_temporal_star(select)
    if temporal is not None:
        if aggregates:  # over every joined row, not each micro-batch's: an updating aggregate
            return _aggregate_over_join(select, derived)
        return temporal
    if len(joins) != 1:
        raise sql_error(
            "a continuous query joins two inputs at a time: join the first two in a subquery"
            " (SELECT ... FROM (SELECT x.c, y.d FROM x JOIN y ON ...) AS j JOIN z ON ...)",
            joins[1],
        )
    join = joins[0]
    if (join.kind or "").upper() in ("SEMI", "ANTI"):
        raise sql_error(
            f"{join.kind.upper()} JOIN of unwindowed streams is not supported; use a window join",
            join,
        )
    left = select.args["from_"].this
    right = join.this
    for side in (left, right):
        if not isinstance(side, exp.Table) or isinstance(side.this, exp.Func):
            raise sql_error("a continuous join reads two streams directly", side)
    if select.args.get("group") is not None or any(True for _ in select.find_all(exp.AggFunc)):
        return _aggregate_over_join(select, derived)
    left_alias, right_alias = left.alias_or_name, right.alias_or_name
    if left_alias == right_alias:
        raise sql_error("a self-join needs an alias on each side", right)
    where = select.args.get("where")
    parts = [c for c in (join.args.get("on"), where.this if where is not None else None) if c]
    condition = exp.and_(*parts) if parts else None
    candidates = tuple(candidate_bounds(condition, left_alias, right_alias))
    rewritten = select.copy()
    rewritten.args["from_"].this.replace(exp.to_table("__left").as_(left_alias))
    rewritten.args["joins"][0].this.replace(exp.to_table("__right").as_(right_alias))
    outer = None
    side = (join.side or "").upper()
    keys = (_upsert_key(left, derived), _upsert_key(right, derived))
    if any(k is not None for k in keys):  # an input's rows change: the join's rows with them
        variants = _outer_variants(rewritten, left_alias, right_alias, side or "INNER")
        return plan_changelog_join(select, join, keys, variants, left_alias, right_alias)
    if side in ("LEFT", "RIGHT", "FULL"):
        outer = _outer_variants(rewritten, left_alias, right_alias, side)
    # the bound is the candidate between the inputs' time attributes, known where the
    # streams are (ContinuousPlan.join_bound)
    return StreamJoin(left.name, right.name, to_datafusion(rewritten), None, candidates, outer)


def _updating(side: exp.Table, derived: dict[str, Operator] | None) -> bool:
    """Whether join input ``side`` is a derived input whose rows update."""
    node = (derived or {}).get(side.name)
    return node is not None and node.updating


def _upsert_key(side: exp.Table, derived: dict[str, Operator] | None) -> list[str] | None:
    """The columns keying the rows of join input ``side`` when it updates ([] when they are
    not all known, e.g. a Top-N that does not select its rank); None when it is append-only."""
    node = (derived or {}).get(side.name)
    if node is None or not node.updating:
        return None
    if isinstance(node, WindowAggregate) and None not in node.key_outputs and node.key_outputs:
        return node.key_columns
    if isinstance(node, Recompute) and not node.ranks and None not in node.key_outputs:
        return node.key_columns
    return []


def _outer_variants(select: exp.Select, left: str, right: str, side: str) -> OuterJoin:
    """The INNER, LEFT and RIGHT forms of an outer join, each projecting the row ids."""

    def variant(kind: str | None) -> str:
        form = select.copy()
        form.set(
            "expressions",
            [
                *form.expressions,
                exp.column("__lid", table=left).as_("__lid"),
                exp.column("__rid", table=right).as_("__rid"),
            ],
        )
        form.args["joins"][0].set("side", kind)
        return to_datafusion(form)

    return OuterJoin(
        inner_sql=variant(None),
        left_sql=variant("LEFT"),
        right_sql=variant("RIGHT"),
        keep_left=side in ("LEFT", "FULL"),
        keep_right=side in ("RIGHT", "FULL"),
    )


def _aggregate_over_join(
    select: exp.Select, derived: dict[str, Operator] | None
) -> WindowAggregate | Recompute:
    """A GROUP BY over a join: the join becomes a derived input (its rows carry the columns the
    aggregate needs, as ``<alias>__<column>``), the aggregate an updating one over it."""
    if derived is None:
        raise sql_error("aggregates over a continuous join are not supported here", select)
    used: dict[tuple[str, str], str] = {}
    for key in ("expressions", "group", "having"):
        node = select.args.get(key)
        for part in node if isinstance(node, list) else [node] if node is not None else []:
            for column in part.find_all(exp.Column):
                if column.table and not isinstance(column.this, exp.Star):
                    used[(column.table, column.name)] = f"{column.table}__{column.name}"
    join_select = select.copy()
    join_select.set("expressions", [exp.column(c, table=t).as_(n) for (t, c), n in used.items()])
    for key in ("group", "having", "order"):
        join_select.set(key, None)
    sides = [select.args["from_"].this, *(j.this for j in select.args["joins"])]
    updates = any(_updating(t, derived) for t in sides if isinstance(t, exp.Table))
    one_group = select.args.get("group") is None and (_outer(select) or updates)
    if one_group:  # one group, keyed by a constant column, recomputed as retractions come
        join_select.select(exp.alias_(exp.Literal.number(0), ALL_ROWS), copy=False)
    op = plan_join(join_select, join_select.args["joins"], derived)
    retracting = op.updating
    if retracting and select.args.get("group") is None and not one_group:
        refuse_retractions(op, "an aggregate without GROUP BY", select)
    if retracting and not one_group and _outer(select):
        _refuse_padded_key(select)
    name = f"__derived_{len(derived)}"
    derived[name] = op

    def rename(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and (node.table, node.name) in used:
            return exp.column(used[(node.table, node.name)])
        return node

    aggregate = select.copy()
    aggregate.set(
        "expressions",
        [
            e.as_(e.name) if isinstance(e, exp.Column) and e.table else e
            for e in aggregate.expressions
        ],
    )
    aggregate.set("joins", None)
    aggregate.set("where", None)
    aggregate.set("from_", exp.From(this=exp.to_table(name)))
    for key in ("expressions", "group", "having"):
        node = aggregate.args.get(key)
        if isinstance(node, list):
            aggregate.set(key, [part.transform(rename) for part in node])
        elif node is not None:
            aggregate.set(key, node.transform(rename))
    if one_group:
        aggregate.set("group", exp.Group(expressions=[exp.column(ALL_ROWS)]))
    if retracting:  # the join retracts padded rows: recompute the groups they leave
        return recompute_over_retractions(aggregate, name, one_group)
    return plan_window(aggregate, None, exp.to_table(name))


def _outer(select: exp.Select) -> bool:
    """Whether a join of ``select`` is LEFT, RIGHT or FULL."""
    return any(j.side for j in select.args.get("joins") or [])


def _refuse_padded_key(select: exp.Select) -> None:
    """Refuse ``GROUP BY x`` over an outer join when ``x`` alone is a column of a side the join
    pads with NULLs: the group of padded rows would be keyed by NULL, and an upsert topic can
    neither key nor tombstone it."""
    keys = select.args["group"].expressions
    join = select.args["joins"][0]
    side = (join.side or "").upper()
    left, right = select.args["from_"].this.alias_or_name, join.this.alias_or_name
    padded = {"LEFT": {right}, "RIGHT": {left}, "FULL": {left, right}}.get(side, set())
    if len(keys) == 1 and isinstance(keys[0], exp.Column) and keys[0].table in padded:
        key = keys[0]
        raise sql_error(
            f"GROUP BY {key.sql(dialect='postgres')} over a {side} JOIN: rows padded with NULLs"
            " would be grouped under a NULL key, which an upsert topic cannot key or retract;"
            " group by a column of the side the join keeps, or add a second GROUP BY column",
            key,
        )
