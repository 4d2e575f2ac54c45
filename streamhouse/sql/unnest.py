"""``CROSS JOIN UNNEST`` and ``LEFT JOIN UNNEST ... ON TRUE`` as DataFusion's vectorised unnest.

Flink writes the expansion of an array column as a lateral join with ``UNNEST``; DataFusion
unnests in the select list. Each such join is folded into the input it reads:

>>> from streamhouse.sql.parse import parse_one
>>> unnest_joins(parse_one(
...     "SELECT id, t.tag FROM s CROSS JOIN UNNEST(s.tags) AS t (tag) WHERE t.tag <> 'x'")).sql()
"SELECT id, s.tag FROM (SELECT s.*, UNNEST(s.tags) AS tag FROM s) AS s WHERE s.tag <> 'x'"

Semantics are Flink's: ``CROSS JOIN UNNEST`` (or ``, UNNEST``) drops a row whose array is empty
or NULL, ``LEFT JOIN UNNEST(...) ON TRUE`` keeps it once with NULLs; ``WITH ORDINALITY AS t
(x, n)`` numbers the elements from 1; NULL elements are kept; ``LATERAL TABLE(UNNEST(a))`` is
the same join. Several unnest joins in a row give their cross product. Per row the join is
stateless, so a continuous query over one stream runs it as a stateless operator and the row's
time attribute passes through.

A ``LATERAL`` subquery without a FROM (``, LATERAL (SELECT v + 1 AS y [WHERE ...]) AS l``) is
folded the same way: its expressions join the row's columns, its WHERE drops the row (a ``LEFT
JOIN LATERAL ... ON TRUE`` keeps it with NULLs).

A continuous query that does more than filter and project the rows (an aggregate, a window, an
OVER, a join) reads the expansion as an input of its own (:func:`lateral_input`): each expanded
row is then identified by its source row's position and its element's ordinality
(:data:`ELEMENT`), so a window's late rows are traced back to the very rows that were late.

An array column whose elements are ROWs (``ARRAY<ROW<name STRING, qty INT>>``) is expanded
into the ROW's fields, as Flink does (:func:`expand_row_elements`, once the column's type is
known): ``CROSS JOIN UNNEST(items) AS t (name, qty)``, or the ROW's own field names when the
alias lists none.

Refused, each by name at its position: an unnest after another join, an ``ON`` condition other
than ``TRUE``, ``LATERAL`` subqueries over a table (a correlated join) and ``LATERAL TABLE``
over any other function (Flink's user-defined table functions).
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
from sqlglot import exp

from streamhouse.sql.parse import sql_error

__all__ = [
    "ELEMENT",
    "EXPANSION",
    "is_lateral_join",
    "lateral_columns",
    "lateral_elements",
    "lateral_input",
    "expand_row_elements",
    "unnest_joins",
]

ELEMENT = "__element"
"""The column numbering the rows one source row expands into (from 1, per UNNEST), which with
the source row's ``_partition`` and ``_offset`` identifies each row of :func:`lateral_input`."""


def _unnest_of(join: exp.Join) -> tuple[exp.Unnest | None, exp.TableAlias | None]:
    """The UNNEST a join reads and its alias (``LATERAL TABLE(UNNEST(a)) AS t (x)`` too)."""
    this = join.this
    if isinstance(this, exp.Unnest):
        return this, this.args.get("alias")
    if isinstance(this, exp.Lateral):
        call = this.this
        if isinstance(call, exp.Anonymous) and call.name.upper() == "TABLE":
            inner = call.expressions[0] if len(call.expressions) == 1 else None
            if isinstance(inner, exp.Explode):  # sqlglot reads UNNEST here as EXPLODE
                inner = exp.Unnest(expressions=[inner.this])
            if isinstance(inner, exp.Unnest):
                return inner, this.args.get("alias")
            name = inner.sql() if inner is not None else "TABLE()"
            raise sql_error(
                f"LATERAL TABLE over {name} is not supported: only built-in table functions"
                " (UNNEST) run; user-defined table functions are not supported",
                this,
            )
        if _subquery_of(join) is None:
            raise sql_error(
                "LATERAL subqueries over a table are not supported: write a join, or CROSS JOIN"
                " UNNEST(array) AS t (x)",
                this,
            )
    return None, None


def _subquery_of(join: exp.Join) -> exp.Select | None:
    """The query of ``LATERAL (SELECT ...)`` when it computes from the row alone: no FROM, no
    aggregate, window or grouping (one output row per input row, at most)."""
    this = join.this
    if not isinstance(this, exp.Lateral) or not isinstance(this.this, exp.Subquery):
        return None
    query = this.this.this
    if not isinstance(query, exp.Select) or set(k for k, v in query.args.items() if v) - {
        "expressions",
        "where",
    }:
        return None
    if any(True for _ in query.find_all(exp.AggFunc, exp.Window, exp.Subquery)):
        return None
    return query


def is_lateral_join(join: exp.Join) -> bool:
    """Whether ``join`` is a lateral ``UNNEST`` or a ``LATERAL`` subquery over the row alone
    (refusing any other lateral join)."""
    return _unnest_of(join)[0] is not None or _subquery_of(join) is not None


ROW_ELEMENT = "__row_"
"""The prefix of the column an ARRAY<ROW> element is unnested into before its fields are."""


def expand_row_elements(query: exp.Expr, columns: Mapping[str, pa.DataType]) -> exp.Expr:
    """``query`` with each UNNEST of an array column whose elements are ROWs (``columns``:
    name -> Arrow type) expanded into the fields of each ROW, as Flink does: ``CROSS JOIN
    UNNEST(items) AS t (name, qty)`` names the fields in order (the ROW's own names when the
    alias lists none; one more name with ``WITH ORDINALITY``). The element is unnested into
    one column, then a ``LATERAL`` subquery reads its fields; a name count that is not the
    ROW's is refused at the alias. ``query`` itself when no UNNEST reads such a column.

    >>> from streamhouse.sql.parse import parse_one
    >>> items = pa.list_(pa.struct([("name", pa.string()), ("qty", pa.int32())]))
    >>> expand_row_elements(parse_one(
    ...     "SELECT id, t.n FROM s CROSS JOIN UNNEST(items) AS t (n, q)"), {"items": items}).sql()
    "SELECT id, t.n FROM s CROSS JOIN UNNEST(items) AS t(__row_t), LATERAL (SELECT GET_FIELD(t.__row_t, 'name') AS n, GET_FIELD(t.__row_t, 'qty') AS q) AS t"
    """
    found = [
        (select, join, fields)
        for select in query.find_all(exp.Select)
        for join in select.args.get("joins") or []
        if (fields := _row_fields(join, columns)) is not None
    ]
    if not found:
        return query
    query = query.copy()
    for select in query.find_all(exp.Select):
        joins = list(select.args.get("joins") or [])
        expanded: list[exp.Join] = []
        for join in joins:
            expanded.append(join)
            fields = _row_fields(join, columns)
            if fields is not None:
                expanded.append(_fields_of(join, fields))
        if len(expanded) != len(joins):
            select.set("joins", expanded)
    return query


def _row_fields(join: exp.Join, columns: Mapping[str, pa.DataType]) -> list[str] | None:
    """The field names of the ROWs ``join`` unnests, None when it unnests no ARRAY<ROW>
    column (or was expanded already)."""
    unnest, alias = _unnest_of(join)
    array = unnest.expressions[0] if unnest is not None and len(unnest.expressions) == 1 else None
    if not isinstance(array, exp.Column):
        return None
    kind = columns.get(array.name)
    if kind is None or not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return None
    element = kind.value_type
    if not pa.types.is_struct(element):
        return None
    names = [c.name for c in (alias.columns if alias else [])]
    if names and names[0].startswith(ROW_ELEMENT):
        return None
    return [element.field(i).name for i in range(element.num_fields)]


def _fields_of(join: exp.Join, fields: list[str]) -> exp.Join:
    """Rewrites ``join`` (an UNNEST of ROWs) to unnest each ROW into one column, and returns
    the ``LATERAL`` join that reads the ROW's fields under the names its alias gives."""
    unnest, alias = _unnest_of(join)
    assert unnest is not None
    offset = unnest.args.get("offset")
    ordinality = bool(offset) or bool(
        isinstance(join.this, exp.Lateral) and join.this.args.get("ordinality")
    )
    named = [c.name for c in (alias.columns if alias else [])]
    table = alias.name if alias is not None and alias.name else "__unnest"
    numbered = ordinality and not isinstance(offset, exp.Identifier)  # named in the alias
    names = named[: len(named) - numbered] if named else list(fields)
    if len(names) != len(fields) or (numbered and not named):
        raise sql_error(
            f"UNNEST of an ARRAY<ROW<{', '.join(fields)}>> gives {len(fields)} columns, one"
            f" per field{' and one for its ordinality' if numbered else ''}: AS {table}"
            f" ({', '.join(fields)}{', n' if numbered else ''})",
            alias or unnest,
        )
    row = f"{ROW_ELEMENT}{table}"
    renamed = [exp.to_identifier(row), *(exp.to_identifier(n) for n in named[len(names) :])]
    target = alias if alias is not None else exp.TableAlias(this=exp.to_identifier(table))
    target.set("columns", renamed)
    if alias is None:
        unnest.set("alias", target)
    values = [
        exp.alias_(
            exp.Anonymous(
                this="get_field",
                expressions=[exp.column(row, table=table), exp.Literal.string(field)],
            ),
            name,
        )
        for field, name in zip(fields, names, strict=True)
    ]
    lateral = exp.Lateral(
        this=exp.Select(expressions=values).subquery(),
        alias=exp.TableAlias(this=exp.to_identifier(table)),
    )
    outer = (join.side or "").upper() == "LEFT"
    return exp.Join(this=lateral, side="LEFT" if outer else None, on=exp.true() if outer else None)


def _outer(join: exp.Join) -> bool:
    """True for ``LEFT JOIN UNNEST ... ON TRUE``, False for a cross join; refuses the rest."""
    side = (join.side or "").upper()
    on = join.args.get("on")
    if side == "LEFT":
        if not (isinstance(on, exp.Boolean) and on.this is True):
            raise sql_error("LEFT JOIN UNNEST takes ON TRUE only", on or join)
        return True
    if side or join.args.get("using") or (on is not None and on != exp.true()):
        raise sql_error(
            f"{side or 'INNER'} JOIN UNNEST with a condition is not supported: write CROSS JOIN UNNEST"
            " or LEFT JOIN UNNEST ... ON TRUE",
            join,
        )
    return False


def _padded(values: exp.Expr, array: exp.Expr, outer: bool) -> exp.Expr:
    """``values``, or for an outer join one NULL where ``array`` is empty or NULL."""
    if not outer:
        return values
    nonempty = exp.GT(this=exp.func("cardinality", array.copy()), expression=exp.Literal.number(0))
    null = exp.Array(expressions=[exp.null()])
    return exp.Case(ifs=[exp.If(this=nonempty, true=values)], default=null)


def _fold(select: exp.Select, join: exp.Join, element: str | None = None) -> exp.Select:
    """``select`` with its first join, an UNNEST or a LATERAL subquery, folded into its FROM as
    a derived table; ``element``: the column numbering each row's elements (from 1), if any."""
    query = _subquery_of(join)
    if query is not None:
        return _fold_subquery(select, join, query)
    unnest, alias = _unnest_of(join)
    assert unnest is not None
    if len(unnest.expressions) != 1:
        raise sql_error("UNNEST of several arrays is not supported: join one UNNEST each", unnest)
    array = unnest.expressions[0]
    outer = _outer(join)
    columns = [c.name for c in (alias.columns if alias else [])]
    offset = unnest.args.get("offset")
    ordinality = bool(offset) or bool(
        isinstance(join.this, exp.Lateral) and join.this.args.get("ordinality")
    )
    if isinstance(offset, exp.Identifier):
        columns.append(offset.name)
    if len(columns) != 1 + ordinality:
        raise sql_error(
            "UNNEST needs one column name per element"
            + (" and one for its ordinality" if ordinality else "")
            + ": AS t (x); an ARRAY<ROW> gives one per field of the ROW (its column type"
            " must be declared), a MAP is not supported",
            alias or unnest,
        )
    items = [exp.alias_(exp.Unnest(expressions=[_padded(array, array, outer)]), columns[0])]
    numbers = exp.func(
        "generate_series", exp.Literal.number(1), exp.func("cardinality", array.copy())
    )
    for name in [*columns[1:], *([element] if element else [])]:
        items.append(exp.alias_(exp.Unnest(expressions=[_padded(numbers, array, outer)]), name))
    return _folded(select, items, None, alias.name if alias else "")


def _fold_subquery(select: exp.Select, join: exp.Join, query: exp.Select) -> exp.Select:
    """``select`` with ``LATERAL (SELECT e AS y [WHERE c]) AS l [(names)]`` folded into its
    FROM: ``e`` joins the row's columns; ``c`` drops the row, or for ``LEFT JOIN LATERAL ... ON
    TRUE`` pads it with NULLs."""
    outer = _outer(join)
    alias = join.this.args.get("alias")
    names = [c.name for c in (alias.columns if alias else [])]
    if names and len(names) != len(query.expressions):
        raise sql_error(
            f"the LATERAL subquery has {len(query.expressions)} columns, its alias names"
            f" {len(names)}",
            alias,
        )
    where = query.args.get("where")
    items = []
    for position, projection in enumerate(query.expressions):
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Star) or isinstance(body.this, exp.Star):
            raise sql_error("a LATERAL subquery names its columns (not *)", projection)
        value = body.copy()
        if outer and where is not None:
            value = exp.Case(ifs=[exp.If(this=where.this.copy(), true=value)])
        name = names[position] if names else projection.alias_or_name
        items.append(exp.alias_(value, name, quoted=True))
    condition = where.this.copy() if where is not None and not outer else None
    # an ARRAY<ROW> element's column, once its fields are read, is no column of the rows
    hidden = sorted(
        {
            c.name
            for item in items
            for c in item.find_all(exp.Column)
            if c.name.startswith(ROW_ELEMENT)
        }
    )
    return _folded(select, items, condition, alias.name if alias else "", hidden)


def _folded(
    select: exp.Select,
    items: list[exp.Expr],
    where: exp.Expr | None,
    table: str,
    hidden: list[str] | None = None,
) -> exp.Select:
    """``select`` reading its FROM with ``items`` added (and only the rows ``where`` keeps) as a
    derived table under the FROM's name, in place of its first join (named ``table``), without
    the FROM's ``hidden`` columns."""
    source = select.args["from_"].this
    name = source.alias_or_name
    star = exp.Star(except_=[exp.column(c) for c in hidden]) if hidden else exp.Star()
    star = star if not name else exp.Column(this=star, table=exp.to_identifier(name))
    inner = exp.Select(expressions=[star, *items]).from_(source.copy())
    if where is not None:
        inner = inner.where(where)
    folded = select.copy()
    folded.set("from_", exp.From(this=inner.subquery(name)))
    folded.set("joins", folded.args["joins"][1:] or None)
    for column in list(folded.find_all(exp.Column)):
        if table and column.table == table:
            if isinstance(column.this, exp.Star):
                column.replace(exp.Column(this=exp.Star(), table=exp.to_identifier(name)))
            else:
                column.set("table", exp.to_identifier(name))
    return folded


def _check_order(select: exp.Select) -> None:
    """Refuse a lateral join after another join, at its position."""
    joins = select.args.get("joins") or []
    lateral = [is_lateral_join(join) for join in joins]
    for position, join in enumerate(joins):
        if lateral[position] and not all(lateral[:position]):
            raise sql_error(
                "UNNEST after another JOIN is not supported: UNNEST first, then join", join
            )


def unnest_joins(query: exp.Expr) -> exp.Expr:
    """``query`` with every SELECT's leading lateral joins folded into its FROM."""

    def fold(node: exp.Expr) -> exp.Expr:
        if not isinstance(node, exp.Select):
            return node
        _check_order(node)
        while node.args.get("joins") and is_lateral_join(node.args["joins"][0]):
            node = _fold(node, node.args["joins"][0])
        return node

    return query.transform(fold)


def lateral_input(select: exp.Select) -> tuple[exp.Select, exp.Select]:
    """``select``'s FROM and its leading lateral joins as a query of their own (the expansion:
    the source's columns, the joins' columns, an :data:`ELEMENT` column per UNNEST and the
    source row's ``_partition`` and ``_offset``), and ``select`` without those joins, reading
    the expansion under the FROM's name.

    >>> from streamhouse.sql.parse import parse_one
    >>> expansion, outer = lateral_input(parse_one(
    ...     "SELECT u.x, COUNT(*) AS n FROM a CROSS JOIN UNNEST(xs) AS u (x) GROUP BY u.x"))
    >>> expansion.sql()
    'SELECT a.*, UNNEST(xs) AS x, UNNEST(GENERATE_SERIES(1, CARDINALITY(xs))) AS __element0, a._partition, a._offset FROM a'
    >>> outer.sql()
    'SELECT a.x, COUNT(*) AS n FROM __expansion AS a GROUP BY a.x'
    """
    _check_order(select)
    folded, count = select, 0
    while folded.args.get("joins") and is_lateral_join(folded.args["joins"][0]):
        join = folded.args["joins"][0]
        element = f"{ELEMENT}{count}" if _subquery_of(join) is None else None
        count += element is not None
        folded = _fold(folded, join, element)
    sub = folded.args["from_"].this
    expansion = sub.this
    innermost = expansion
    while isinstance(innermost.args["from_"].this, exp.Subquery):
        innermost = innermost.args["from_"].this.this
    table = innermost.args["from_"].this
    name = table.alias_or_name
    innermost.set(
        "expressions",
        [*innermost.expressions, *(exp.column(c, table=name) for c in ("_partition", "_offset"))],
    )
    sub.replace(exp.to_table(EXPANSION).as_(sub.alias_or_name))
    return expansion, folded


EXPANSION = "__expansion"
"""The name :func:`lateral_input`'s outer query reads the expansion under (the caller's to
replace by the derived input's)."""


def lateral_elements(expansion: exp.Select) -> list[str]:
    """The :data:`ELEMENT` columns of :func:`lateral_input`'s expansion, outermost first."""
    return [
        p.alias_or_name
        for select in expansion.find_all(exp.Select)
        for p in select.expressions
        if p.alias_or_name.startswith(ELEMENT)
    ]


def lateral_columns(select: exp.Select) -> set[str]:
    """The names ``select``'s lateral joins add to its rows (elements, ordinalities, a LATERAL
    subquery's columns): computed per row, none is a time attribute.

    >>> from streamhouse.sql.parse import parse_one
    >>> sorted(lateral_columns(parse_one(
    ...     "SELECT * FROM a CROSS JOIN UNNEST(xs) WITH ORDINALITY AS u (x, n),"
    ...     " LATERAL (SELECT t + INTERVAL '1' SECOND AS later) AS l")))
    ['later', 'n', 'x']
    """
    names: set[str] = set()
    for join in select.args.get("joins") or []:
        if not is_lateral_join(join):
            continue
        query = _subquery_of(join)
        alias = join.this.args.get("alias")
        names |= {c.name for c in (alias.columns if alias else [])}
        if query is not None:
            names |= {p.alias_or_name for p in query.expressions}
        else:
            offset = _unnest_of(join)[0].args.get("offset")  # type: ignore[union-attr]
            if isinstance(offset, exp.Identifier):
                names.add(offset.name)
    return names
