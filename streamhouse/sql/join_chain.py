"""Three or more inputs in one FROM as a chain of two-input joins.

``FROM x JOIN y ON c1 JOIN z ON c2`` is ``(x JOIN y ON c1) JOIN z ON c2`` in SQL (joins nest to
the left, outer ones too), so the query is rewritten that way: the first joins become a
subquery that passes on every column of theirs the rest of the query names, as
``<alias>__<column>``, under the alias :data:`CHAIN`; the planner then plans each join of two
inputs as it would any other (a :class:`~streamhouse.sql.changelog_join.ChangelogJoin` when an
input updates, as Flink chains its joins). The query's WHERE stays over the whole chain.

>>> from streamhouse.sql.parse import parse_one
>>> nested_joins(parse_one(
...     "SELECT x.k, z.n FROM x JOIN y ON x.k = y.k LEFT JOIN z ON y.k = z.k WHERE x.v > 1")).sql()
'SELECT __chain.x__k AS k, z.n FROM (SELECT x.k AS x__k, y.k AS y__k, x.v AS x__v FROM x JOIN y ON x.k = y.k) AS __chain LEFT JOIN z ON __chain.y__k = z.k WHERE __chain.x__v > 1'
"""

from __future__ import annotations

from sqlglot import exp

from streamhouse.sql.parse import sql_error

CHAIN = "__chain"
"""The alias of the nested join of all inputs but the last."""

_OUTER_PARTS = ("where", "group", "having", "order", "qualify")


def nested_joins(select: exp.Select) -> exp.Select:
    """``select`` (two or more joins) as its first joins nested in a subquery, joined to the
    last input; raises for what cannot be nested by name (a ``*``, an unqualified column)."""
    joins = select.args["joins"]
    inner_inputs = [select.args["from_"].this, *(j.this for j in joins[:-1])]
    aliases = {t.alias_or_name for t in inner_inputs}
    last = joins[-1]
    if last.args.get("using") or last.args.get("method"):
        raise sql_error("a join of three or more inputs takes ON conditions", last)
    for projection in select.expressions:
        if isinstance(projection, exp.Star) or (
            isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
        ):
            raise sql_error(
                "SELECT * over three or more joined inputs: name the columns it outputs"
                " (alias.column)",
                projection,
            )
    named: dict[tuple[str, str], str] = {}
    parts = [*select.expressions, last.args.get("on")]
    parts += [select.args.get(key) for key in _OUTER_PARTS]
    for part in parts:
        for column in part.find_all(exp.Column) if part is not None else []:
            if not column.table:
                raise sql_error(
                    f"a join of three or more inputs needs each column qualified by its input's"
                    f" alias ({column.name} is not)",
                    column,
                )
            if column.table in aliases:
                named.setdefault((column.table, column.name), f"{column.table}__{column.name}")
    inner = exp.Select(
        expressions=[exp.column(c, table=t).as_(n) for (t, c), n in named.items()]
        or [exp.Literal.number(1).as_("__row")]
    )
    inner.set("from_", select.args["from_"].copy())
    inner.set("joins", [j.copy() for j in joins[:-1]])

    def rename(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and (node.table, node.name) in named:
            return exp.column(named[(node.table, node.name)], table=CHAIN)
        return node

    outer = select.copy()
    projections = []
    for projection in outer.expressions:
        renamed = projection.transform(rename)
        if isinstance(projection, exp.Column) and renamed.name != projection.name:
            renamed = renamed.as_(projection.name)
        projections.append(renamed)
    outer.set("expressions", projections)
    outer.set("from_", exp.From(this=inner.subquery(CHAIN)))
    outer_join = last.copy()
    on = outer_join.args.get("on")
    if on is not None:
        outer_join.set("on", on.transform(rename))
    outer.set("joins", [outer_join])
    for key in _OUTER_PARTS:
        part = outer.args.get(key)
        if part is not None:
            outer.set(key, part.transform(rename))
    return outer
