"""Derived tables a bounded query repeats, computed once.

A query may aggregate the same rows the same way twice in one statement: Nexmark q5 joins each
window's bid count per auction to the largest of those same counts, written as two subqueries
over two windowed copies of ``bid`` whose select lists differ. DataFusion inlines every derived
table, so it would scan, window and count the bids twice. :func:`share_subqueries` finds the
derived tables (in a FROM or a JOIN) that aggregate the same source the same way (one FROM,
WHERE, GROUP BY and HAVING; ``same`` says which sources are one, such as two windowed copies of
one stream by one window) and replaces each by a projection of one shared SELECT that computes
every column any of them gives. The engine computes that SELECT once, into memory (an
aggregate's rows), and each projection reads it.

Left as written: a SELECT with DISTINCT, LIMIT or OFFSET (its rows depend on its select list
or on ties), a ``*``, an unnamed expression, a LATERAL or correlated one, one reading a CTE of
the query, or one calling a function whose every call differs (``RAND()``, ``UUID()``).

>>> from streamhouse.sql.parse import parse_one
>>> query = parse_one(
...     "SELECT a.k, a.n FROM (SELECT k, count(*) AS n, w FROM b0 GROUP BY k, w) AS a"
...     " JOIN (SELECT max(c.n) AS m, c.w FROM (SELECT count(*) AS n, w FROM b1 GROUP BY k, w)"
...     " AS c GROUP BY c.w) AS x ON a.w = x.w AND a.n >= x.m")
>>> rewritten, shared = share_subqueries(query, lambda name: name[0])
>>> [(s.name, s.select.sql()) for s in shared]
[('__shared_0', 'SELECT k AS "__shared_0_0", COUNT(*) AS "__shared_0_1", w AS "__shared_0_2" FROM b0 GROUP BY k, w')]
>>> print(rewritten.sql())  # doctest: +NORMALIZE_WHITESPACE
SELECT a.k, a.n FROM (SELECT "__shared_0_0" AS "k", "__shared_0_1" AS "n", "__shared_0_2" AS "w"
FROM __shared_0) AS a JOIN (SELECT MAX(c.n) AS m, c.w FROM (SELECT "__shared_0_1" AS "n",
"__shared_0_2" AS "w" FROM __shared_0) AS c GROUP BY c.w) AS x ON a.w = x.w AND a.n >= x.m
>>> share_subqueries(query, lambda name: name)[1]  # b0 and b1 differ: nothing shared
[]
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from sqlglot import exp

__all__ = ["SharedSubquery", "computed_first", "share_subqueries"]

_VOLATILE = (exp.Rand, exp.Uuid)


@dataclass(frozen=True)
class SharedSubquery:
    """A SELECT several derived tables of a query read: ``name``, the table they read it as."""

    name: str
    select: exp.Select


def share_subqueries(
    query: exp.Query, same: Callable[[str], Hashable]
) -> tuple[exp.Query, list[SharedSubquery]]:
    """``query`` with the derived tables that aggregate one source the same way (see the
    module) each read from a shared SELECT, and those SELECTs; ``same(name)`` is source
    ``name``'s identity (two names of one identity hold the same rows). ``query`` itself is
    not changed."""
    query = query.copy()
    identities: dict[Hashable, str] = {}
    groups: dict[str, list[exp.Subquery]] = {}
    for subquery in query.find_all(exp.Subquery):
        if _reads_cte(subquery):
            continue
        shape = _shape(subquery, same, identities)
        if shape is not None:
            groups.setdefault(shape, []).append(subquery)
    shared: list[SharedSubquery] = []
    for members in groups.values():
        # a member inside another shared one was replaced with it (only its copy is read)
        members = [m for m in members if m.root() is query]
        if len(members) < 2:
            continue
        name = f"__shared_{len(shared)}"
        outputs: dict[str, str] = {}  # an expression's SQL -> its output in the shared SELECT
        projections: list[exp.Expr] = []
        readers: list[exp.Select] = []
        for member in members:
            select = member.this
            columns = []
            for projection in select.expressions:
                body = projection.this if isinstance(projection, exp.Alias) else projection
                output = outputs.get(body.sql())
                if output is None:
                    output = outputs[body.sql()] = f"{name}_{len(outputs)}"
                    projections.append(exp.alias_(body.copy(), output, quoted=True))
                columns.append(
                    exp.alias_(
                        exp.column(output, quoted=True), projection.alias_or_name, quoted=True
                    )
                )
            readers.append(exp.select(*columns).from_(name))
        body = members[0].this.copy()
        body.set("expressions", projections)
        for member, reader in zip(members, readers, strict=True):
            member.this.replace(reader)
        shared.append(SharedSubquery(name, body))
    return query, shared


def computed_first(subquery: exp.Subquery, name: str) -> SharedSubquery | None:
    """``subquery``'s SELECT, to be computed before the query as table ``name``, and
    ``subquery`` reading that table in its place (None, nothing changed: a ``*`` or an
    unnamed column, or a function whose every call differs).

    The engine does this for the aggregate an inner join builds its hash table from
    (:func:`~streamhouse.sql.join_order.aggregate_first`): a memory table's size is known, so
    DataFusion sends its few rows to every partition of the other side (no repartitioning of
    that side by the join key) and filters that side's scan by them.

    >>> from streamhouse.sql.parse import parse_one
    >>> query = parse_one("SELECT b.p FROM (SELECT max(p) AS m FROM w GROUP BY s) AS x JOIN b ON b.p = x.m")
    >>> first = computed_first(query.find(exp.Subquery), "__first_0")
    >>> first.select.sql(), query.sql()
    ('SELECT MAX(p) AS m FROM w GROUP BY s', 'SELECT b.p FROM (SELECT "m" FROM __first_0) AS x JOIN b ON b.p = x.m')
    """
    select = subquery.this
    if not isinstance(select, exp.Select) or not _named(select):
        return None
    if any(True for _ in select.find_all(*_VOLATILE)) or _reads_cte(subquery):
        return None
    names = [exp.column(p.alias_or_name, quoted=True) for p in select.expressions]
    subquery.set("this", exp.select(*names).from_(name))
    return SharedSubquery(name, select)


def _reads_cte(subquery: exp.Subquery) -> bool:
    """Whether ``subquery`` names a CTE of its query (not known where it is run alone)."""
    ctes = {cte.alias_or_name for cte in subquery.root().find_all(exp.CTE)}
    return any(t.name in ctes for t in subquery.find_all(exp.Table))


def _named(select: exp.Select) -> bool:
    """Whether each column of ``select`` has a name (no ``*``, no unnamed expression)."""
    for projection in select.expressions:
        if isinstance(projection, exp.Star) or not projection.alias_or_name:
            return False
        if isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
            return False
    return True


def _shape(
    subquery: exp.Subquery, same: Callable[[str], Hashable], identities: dict[Hashable, str]
) -> str | None:
    """What ``subquery`` computes but for its select list (its sources by identity), or None
    when it cannot be shared (see the module)."""
    select = subquery.this
    if (
        not isinstance(select, exp.Select)
        or not isinstance(subquery.parent, (exp.From, exp.Join))
        or select.args.get("group") is None
        or any(select.args.get(arg) is not None for arg in ("distinct", "limit", "offset"))
        or any(True for _ in select.find_all(*_VOLATILE))
    ):
        return None
    if not _named(select):
        return None
    shape = select.copy()
    shape.set("expressions", [exp.Star()])
    own = {t.alias_or_name for t in select.find_all(exp.Table, exp.Subquery)}
    for table in shape.find_all(exp.Table):
        identity = same(table.name)
        token = identities.setdefault(identity, f"__source_{len(identities)}")
        table.set("this", exp.to_identifier(token))
    # a column naming a table this SELECT does not hold is an outer one's (correlated)
    for column in select.find_all(exp.Column):
        if column.table and column.table not in own:
            return None
    return shape.sql()
