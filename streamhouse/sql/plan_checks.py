"""Checks of a planned continuous query: every node takes its inputs' changelog, an ORDER BY
the query can keep, upsert keys that are selected, no retractions into append-only operators,
and columns its source has."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.nodes import (
    Operator,
    Recompute,
    StreamJoin,
    TimeSort,
    TopN,
    WindowAggregate,
    Windowed,
)
from streamhouse.sql.parse import sql_error
from streamhouse.sql.unnest import expand_row_elements
from streamhouse.sql.window_spec import KINDS, WINDOW_COLUMNS, WindowKind

if TYPE_CHECKING:
    from streamhouse.sql.plan import ContinuousPlan


def check_changelogs(operator: Operator, derived: dict[str, Operator], query: exp.Expr) -> None:
    """Every node takes the changelog its derived inputs emit (:attr:`PlanNode.accepts`): a plan
    where one would drop another's updates or retractions is refused, never run."""
    for node in [operator, *derived.values()]:
        for name in node.sources:
            child = derived.get(name)
            if child is not None and child.mode not in node.accepts:
                takes = " or ".join(sorted(node.accepts))
                raise sql_error(
                    f"{type(node).__name__} takes {takes} input, and its input"
                    f" ({type(child).__name__}) is {child.changelog.removeprefix('changelog: ')}:"
                    " not supported continuously yet",
                    query,
                )


_WINDOW_ORDER = ("window_start", "window_end", "window_time")


def check_order(operator: Operator, select: exp.Select) -> None:
    """Refuse an ORDER BY a continuous query cannot keep: as in Flink, the first key must be a
    time attribute, ascending (a TimeSort checks its own); windows of a TUMBLE, HOP or
    CUMULATE aggregate come out by end, so ``window_start``/``window_end``/``window_time``
    ascending holds too."""
    order = select.args.get("order")
    if order is None or isinstance(operator, TimeSort):
        return
    first = order.expressions[0]
    window = getattr(operator, "window", None)
    if isinstance(operator, Windowed):
        kinds = {spec.kind for _, spec in operator.inputs.values()}
        window = next(iter(operator.inputs.values()))[1] if kinds != {WindowKind.SESSION} else None
    if (
        window is not None
        and window.kind != WindowKind.SESSION
        and isinstance(first.this, exp.Column)
        and first.this.name in _WINDOW_ORDER
        and not first.args.get("desc")
    ):
        return
    raise order_error(first)


def order_error(first: exp.Ordered) -> SqlError:
    return sql_error(
        "ORDER BY in a continuous query must start with the time attribute, ascending "
        "(a stream's WATERMARK column; window_start/window_end of a window aggregate): "
        f"ORDER BY {first.sql(dialect='postgres')} is not supported; order by the time"
        " attribute first, or keep the first N rows with ROW_NUMBER() OVER (ORDER BY ...) <= N"
        " in a subquery (a Top-N)",
        first,
    )


def check_upsert_key(operator: Operator, select: exp.Select) -> None:
    """An updating query's rows are upserts keyed by output columns (the group keys; the Top-N
    keys and, for N > 1, the rank): refuse one that does not select them, whose keys would
    collide."""
    if (
        isinstance(operator, WindowAggregate | Recompute)
        and getattr(operator, "window", None) is None
    ):
        keys = operator.key_outputs
        if None in keys:
            raise sql_error(
                "an updating GROUP BY writes one row per group: select every GROUP BY key"
                " (the keys of its upserts)",
                select,
            )
    elif isinstance(operator, TopN):
        outputs = set()
        for projection in select.expressions:
            if isinstance(projection, exp.Star) or (
                isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
            ):
                return
            outputs.add(projection.alias_or_name)
        rank = [operator.rank_column] if operator.limit > 1 else []
        missing = [k for k in [*operator.partition_by, *rank] if k not in outputs]
        if missing:
            raise sql_error(
                f"a Top-N writes one row per key and rank: select {', '.join(missing)}"
                " (the keys of its upserts)",
                select,
            )


def refuse_retractions(op: Operator, what: str, node: exp.Expr) -> None:
    """Refuse an outer join as the input of a stateful operator: the join retracts a row padded
    with NULLs when its first match arrives, and the operators over it take appends only."""
    if isinstance(op, StreamJoin) and op.outer is not None:
        join = next((j for j in node.find_all(exp.Join) if j.side), None)
        side = join.side.upper() if join is not None else "OUTER"
        raise sql_error(
            f"{what} over a {side} JOIN is not supported continuously yet: the join retracts "
            "a row padded with NULLs when its match arrives, and this operator takes appends only",
            join.this if join is not None else node,
        )


def check_columns(
    plan: ContinuousPlan, statement: exp.Expr, columns: dict[str, pa.DataType]
) -> None:
    """Raise a located :class:`SqlError` if ``statement`` names a column its source lacks, or
    windows on a column that is not a TIMESTAMP. ``columns``: every column of the source (name
    -> Arrow type, ``pa.null()`` when not known yet), metadata columns included.
    """
    query = statement.expression if isinstance(statement, exp.Insert | exp.Create) else statement
    if query is None or len(plan.sources) > 1:  # joins: each side is checked by its operator
        return
    query = expand_row_elements(query, columns)  # refuses a ROW's fields misnamed
    aliases = {e.alias for e in query.find_all(exp.Alias) if e.alias}
    aliases |= {
        c.name for a in query.find_all(exp.TableAlias) for c in a.columns
    }  # UNNEST AS t (x)
    aliases |= {u.args["offset"].name for u in query.find_all(exp.Unnest) if u.args.get("offset")}
    known = set(columns) | set(WINDOW_COLUMNS) | aliases
    for column in query.find_all(exp.Column):
        if column.name not in known:
            raise sql_error(
                f"unknown column {column.name!r} in {plan.source!r} "
                f"(its columns: {', '.join(c for c in columns if not c.startswith('_'))})",
                column,
            )
    window = getattr(plan.operator, "window", None)
    if window is None:
        return
    kind = columns.get(window.time_column)
    if kind is None or pa.types.is_null(kind) or pa.types.is_timestamp(kind):
        return
    located: exp.Expr = query
    for column in query.find_all(exp.Column):
        call = column.find_ancestor(exp.Anonymous)
        if (
            column.name == window.time_column
            and call is not None
            and (call.name.upper() in KINDS or call.name.upper() == "DESCRIPTOR")
        ):
            located = column
            break
    raise sql_error(
        f"{window.kind.upper()} window on column {window.time_column!r} of type {kind}: "
        "the time column must be a TIMESTAMP (declare it as TIMESTAMP(3) in CREATE STREAM)",
        located,
    )
