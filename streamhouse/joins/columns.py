"""Which input columns a query's SQL can read, so operators buffer only those.

A join or windowed query keeps its inputs' rows in state until they can no longer match; a
column the SQL never names need not be kept. :func:`referenced_names` over-approximates the
columns read by the identifiers in the SQL text (a name that is also a table or an alias only
keeps a column of that name); :func:`kept_columns` applies it to a table.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import sqlglot
from sqlglot import exp


def referenced_names(sql: str) -> frozenset[str] | None:
    """Every identifier ``sql`` names, lower-cased: a superset of the input columns it reads.

    None when it may read columns it does not name (a ``*`` that passes columns on by position,
    NATURAL JOIN) or cannot be parsed: then every column is kept. A ``*`` that only passes
    columns on by name is fine: ``COUNT(*)``, ``EXISTS (SELECT * ...)`` and a derived table
    ``(SELECT * FROM t) AS x`` (its columns are then read as ``x.c``, by name).

    >>> sorted(referenced_names('SELECT "k", COUNT(*) FROM "t" GROUP BY "k", "window_end"'))
    ['k', 't', 'window_end']
    >>> sorted(referenced_names('SELECT x.k FROM (SELECT * FROM t) AS x'))
    ['k', 't', 'x']
    >>> referenced_names('SELECT * FROM (SELECT * FROM t) AS x') is None
    True
    """
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except sqlglot.errors.SqlglotError:
        return None
    if not all(_by_name(star) for star in tree.find_all(exp.Star)):
        return None
    if any(join.args.get("method") for join in tree.find_all(exp.Join)):
        return None
    return frozenset(i.name.lower() for i in tree.find_all(exp.Identifier))


def _by_name(star: exp.Star) -> bool:
    """Whether whatever reads what ``star`` selects names the columns it reads."""
    if isinstance(star.parent, exp.Count):
        return True
    select = star.parent
    if not isinstance(select, exp.Select) or star not in select.expressions:
        return False
    if isinstance(select.parent, exp.Exists):
        return True
    alias = select.parent.args.get("alias") if isinstance(select.parent, exp.Subquery) else None
    return (
        isinstance(select.parent, exp.Subquery)
        and isinstance(select.parent.parent, exp.From | exp.Join)
        and not (alias is not None and alias.columns)
        and not any(select.args.get(a) for a in ("distinct", "group", "order", "having"))
    )


def kept_columns(
    names: Iterable[str], referenced: frozenset[str] | None, always: Iterable[str | None] = ()
) -> list[str]:
    """The ``names`` the SQL may read (all if ``referenced`` is None), and ``always``."""
    keep = {a for a in always if a is not None}
    return [n for n in names if referenced is None or n.lower() in referenced or n in keep]


def pruned(
    table: pa.Table, referenced: frozenset[str] | None, always: Iterable[str | None] = ()
) -> pa.Table:
    """``table`` with only the columns the SQL may read, and ``always``."""
    names = kept_columns(table.column_names, referenced, always)
    return table if len(names) == table.num_columns else table.select(names)
