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

Refused, each by name at its position: an unnest after another join, an ``ON`` condition other
than ``TRUE``, the expansion of ``ARRAY<ROW>`` elements into several columns, ``LATERAL``
subqueries and ``LATERAL TABLE`` over any other function (Flink's user-defined table functions).
An array column whose elements are ROWs is refused whatever the alias list
(:func:`refuse_row_elements`, once the column's type is known): Flink expands each element's
fields into columns, and one struct column in their place would be a wrong-typed answer.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
from sqlglot import exp

from streamhouse.sql.parse import sql_error

__all__ = ["is_unnest_join", "refuse_row_elements", "unnest_joins"]


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
        raise sql_error(
            "LATERAL subqueries are not supported: write CROSS JOIN UNNEST(array) AS t (x)"
            " or a join",
            this,
        )
    return None, None


def is_unnest_join(join: exp.Join) -> bool:
    """Whether ``join`` is a lateral ``UNNEST`` (refusing any other lateral join)."""
    return _unnest_of(join)[0] is not None


def refuse_row_elements(query: exp.Expr, columns: Mapping[str, pa.DataType]) -> None:
    """Refuse, at its position, an UNNEST of an array column (``columns``: name -> Arrow type)
    whose elements are ROWs.

    >>> from streamhouse.sql.parse import parse_one
    >>> items = pa.list_(pa.struct([("name", pa.string())]))
    >>> query = parse_one("SELECT n FROM s CROSS JOIN UNNEST(items) AS t (n)")
    >>> refuse_row_elements(query, {"items": items})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamhouse.errors.SqlError: UNNEST of 'items', an ARRAY<ROW<name>>, is not supported: ...
    """
    for select in query.find_all(exp.Select):
        for join in select.args.get("joins") or []:
            unnest = _unnest_of(join)[0]
            array = unnest.expressions[0] if unnest is not None and unnest.expressions else None
            if not isinstance(array, exp.Column):
                continue
            kind = columns.get(array.name)
            if kind is None or not pa.types.is_list(kind) and not pa.types.is_large_list(kind):
                continue
            element = kind.value_type
            if pa.types.is_struct(element):
                fields = ", ".join(element.field(i).name for i in range(element.num_fields))
                raise sql_error(
                    f"UNNEST of {array.name!r}, an ARRAY<ROW<{fields}>>, is not supported: Flink"
                    f" expands the fields of each ROW into columns (AS t ({fields})); StreamHouse"
                    " unnests arrays of scalars only",
                    unnest,
                )


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


def _fold(select: exp.Select, join: exp.Join) -> exp.Select:
    """``select`` with its first join, an UNNEST, folded into its FROM as a derived table."""
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
            + ": AS t (x); expanding ARRAY<ROW> or MAP elements into several columns is not"
            " supported",
            alias or unnest,
        )
    source = select.args["from_"].this
    name = source.alias_or_name
    items: list[exp.Expr] = [
        exp.Star() if not name else exp.Column(this=exp.Star(), table=exp.to_identifier(name))
    ]
    items.append(exp.alias_(exp.Unnest(expressions=[_padded(array, array, outer)]), columns[0]))
    if ordinality:
        numbers = exp.func(
            "generate_series", exp.Literal.number(1), exp.func("cardinality", array.copy())
        )
        items.append(
            exp.alias_(exp.Unnest(expressions=[_padded(numbers, array, outer)]), columns[1])
        )
    inner = exp.Select(expressions=items).from_(source.copy())
    folded = select.copy()
    folded.set("from_", exp.From(this=inner.subquery(name)))
    folded.set("joins", folded.args["joins"][1:] or None)
    table = alias.name if alias else ""
    for column in list(folded.find_all(exp.Column)):
        if table and column.table == table:
            if isinstance(column.this, exp.Star):
                column.replace(exp.Column(this=exp.Star(), table=exp.to_identifier(name)))
            else:
                column.set("table", exp.to_identifier(name))
    return folded


def unnest_joins(query: exp.Expr) -> exp.Expr:
    """``query`` with every SELECT's leading lateral UNNEST joins folded into its FROM."""

    def fold(node: exp.Expr) -> exp.Expr:
        if not isinstance(node, exp.Select):
            return node
        joins = node.args.get("joins") or []
        lateral = [is_unnest_join(join) for join in joins]
        for position, join in enumerate(joins):
            if lateral[position] and not all(lateral[:position]):
                raise sql_error(
                    "UNNEST after another JOIN is not supported: UNNEST first, then join", join
                )
        while node.args.get("joins") and is_unnest_join(node.args["joins"][0]):
            node = _fold(node, node.args["joins"][0])
        return node

    return query.transform(fold)
