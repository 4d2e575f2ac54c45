"""Flink SQL hints: ``s /*+ OPTIONS('key'='value', ...) */`` on a source, refused otherwise.

The same options in ``CREATE STREAM ... WITH (...)`` apply to every query of the stream; a
hint overrides them for one query. A hint is a ``/*+ ... */`` comment; sqlglot keeps it as a comment (starting with ``+``) on the
node it follows. StreamHouse applies the dynamic table options below when they follow a
stream or topic a query reads; every other hint (``BROADCAST``, ``LOOKUP``, ``STATE_TTL``, ...),
a hint anywhere else, and any other option are refused by name — never read and ignored.

============================  ==========================================================
option                        meaning
============================  ==========================================================
``topic``                     read this topic instead of the stream's own
``format``, ``value.format``  ``json`` only (the format StreamHouse reads)
``json.ignore-parse-errors``  ``true``: rows that do not parse are left out (counted and,
                              continuously, sent to the dead-letter topic), the default;
                              ``false``: such a row fails the query, as in Flink
``scan.startup.mode``         ``earliest-offset`` or ``latest-offset``: where a new
                              continuous query starts reading this source (a bounded
                              query reads from the earliest offset and takes only that)
============================  ==========================================================

>>> from streamhouse.sql.parse import parse_one
>>> source_options(parse_one("SELECT * FROM s /*+ OPTIONS('topic'='s2') */"))
{'s': {'topic': 's2'}}
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from streamhouse.errors import SqlError
from streamhouse.sql.parse import sql_error

__all__ = ["OPTIONS", "SourceOptions", "check_hints", "source_options"]

OPTIONS = ("topic", "format", "value.format", "json.ignore-parse-errors", "scan.startup.mode")
_BOOLEANS = {"true": True, "false": False}
_STARTUP = ("earliest-offset", "latest-offset")


@dataclass(frozen=True)
class SourceOptions:
    """How a query reads one source: its declared options (``CREATE STREAM ... WITH``) with
    its OPTIONS hint applied over them."""

    topic: str | None = None
    ignore_parse_errors: bool = True
    startup: str | None = None

    @classmethod
    def of(cls, declared: dict[str, str], hinted: dict[str, str] | None = None) -> SourceOptions:
        """``declared`` options with ``hinted`` ones over them; SqlError for a bad value."""
        options = {**declared, **(hinted or {})}
        _check_values(options, None)
        startup = options.get("scan.startup.mode")
        return cls(
            topic=options.get("topic"),
            ignore_parse_errors=_BOOLEANS[options.get("json.ignore-parse-errors", "true").lower()],
            startup=startup.lower() if startup is not None else None,
        )


def _hint_texts(node: exp.Expr) -> list[str]:
    return [c[1:] for c in node.comments or [] if c.startswith("+")]


def _hints(text: str, node: exp.Expr) -> list[tuple[str, list[exp.Expr]]]:
    """(name, arguments) of each hint in one ``/*+ ... */`` comment."""
    try:
        select = sqlglot.parse_one(f"SELECT {text}", read="postgres")
    except SqlglotError:
        raise sql_error(f"cannot read the hint /*+{text}*/", node) from None
    hints = []
    for item in select.expressions:
        if isinstance(item, exp.Anonymous):
            hints.append((item.name.upper(), list(item.expressions)))
        elif isinstance(item, exp.Func):
            hints.append((item.sql_name(), []))
        else:
            hints.append((item.sql("postgres").upper(), []))
    return hints


def _options(arguments: list[exp.Expr], node: exp.Expr) -> dict[str, str]:
    options: dict[str, str] = {}
    for argument in arguments:
        if not (
            isinstance(argument, exp.EQ)
            and isinstance(argument.this, exp.Literal)
            and isinstance(argument.expression, exp.Literal)
        ):
            raise sql_error("OPTIONS takes 'key'='value' pairs", node)
        options[argument.this.name.lower()] = argument.expression.name
    return options


def _check_values(options: dict[str, str], table: exp.Table | None) -> None:
    for key in ("format", "value.format"):
        if key in options and options[key].lower() != "json":
            raise sql_error(
                f"{key} {options[key]!r} is not supported (StreamHouse reads json)", table
            )
    ignore = options.get("json.ignore-parse-errors", "true").lower()
    if ignore not in _BOOLEANS:
        raise sql_error(f"json.ignore-parse-errors is true or false, not {ignore!r}", table)
    startup = options.get("scan.startup.mode")
    if startup is not None and startup.lower() not in _STARTUP:
        raise sql_error(
            f"scan.startup.mode is earliest-offset or latest-offset, not {startup!r}", table
        )


def _hint_options(options: dict[str, str], table: exp.Table) -> dict[str, str]:
    for key in options:
        if key not in OPTIONS:
            raise sql_error(
                f"OPTIONS hint: option {key!r} is not supported (supported: {', '.join(OPTIONS)})",
                table,
            )
    try:
        _check_values(options, table)
    except SqlError as error:
        raise SqlError(f"OPTIONS hint: {error.message}", error.line, error.column) from None
    return options


def _sources(statement: exp.Expr) -> set[int]:
    """ids of the table nodes ``statement`` reads (not an INSERT target, not a CTE name)."""
    target = statement.this if isinstance(statement, exp.Insert | exp.Create) else None
    if isinstance(target, exp.Schema):
        target = target.this
    ctes = {cte.alias_or_name for cte in statement.find_all(exp.CTE)}
    return {
        id(t)
        for t in statement.find_all(exp.Table)
        if t is not target and t.name not in ctes and not isinstance(t.this, exp.Func)
    }


def source_options(statement: exp.Expr) -> dict[str, dict[str, str]]:
    """The options of the OPTIONS hint of each source ``statement`` reads, by source name; a
    located :class:`SqlError` for a hint StreamHouse does not apply."""
    sources = _sources(statement)
    found: dict[str, dict[str, str]] = {}
    for node in statement.walk():
        for text in _hint_texts(node):
            for name, arguments in _hints(text, node):
                if name != "OPTIONS":
                    raise sql_error(f"hint {name} is not supported", node)
                if not isinstance(node, exp.Table) or id(node) not in sources:
                    raise sql_error(
                        "an OPTIONS hint applies to a stream or topic a query reads "
                        "(written right after its name)",
                        node,
                    )
                options = _hint_options(_options(arguments, node), node)
                if found.get(node.name, options) != options:
                    raise sql_error(
                        f"two references of {node.name!r} have different OPTIONS hints", node
                    )
                found[node.name] = options
    return found


def check_hints(statement: exp.Expr) -> None:
    """Raise a located :class:`SqlError` for any hint StreamHouse does not apply."""
    source_options(statement)
