"""Parse StreamHouse SQL into sqlglot trees; every failure is a :class:`SqlError` with a position.

>>> parse_one("SELECT 1").sql(dialect=StreamHouse)
'SELECT 1'
>>> try:
...     parse_one("SELEC 1")
... except SqlError as error:
...     (error.line, error.column)
(1, 1)

Text that is not UTF-8 (lone surrogates, as Python decodes undecodable bytes of ``argv``)
and statements nested deeper than the parser's or DataFusion's stack can take are errors
too, never a RecursionError or a crash:

>>> try:
...     parse_one("SELECT " + "(" * 100 + "1" + ")" * 100)
... except SqlError as error:
...     (error.message, error.line)
('SQL nested too deeply to parse', 1)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from streamhouse.errors import SqlError
from streamhouse.sql.dialect import StreamHouse

__all__ = ["StreamHouse", "line_column", "nesting_guard", "node_position", "parse", "parse_one"]

logger = logging.getLogger(__name__)

DIALECT = StreamHouse()

MAX_SQL_DEPTH = 1000
"""The deepest syntax tree handed on. DataFusion 55 plans a left-deep chain of 5,000
``+`` or 3,000 ``UNION ALL`` and overflows its stack (a segmentation fault) at 10,000 and
6,000; the parser itself recurses, so parentheses, function calls and CASE stop it at a few
dozen levels (a RecursionError, turned into a :class:`SqlError`)."""


def line_column(sql: str, offset: int) -> tuple[int, int]:
    """The 1-based (line, column) of character ``offset`` in ``sql``."""
    offset = max(0, min(offset, len(sql)))
    line = sql.count("\n", 0, offset) + 1
    column = offset - (sql.rfind("\n", 0, offset) + 1) + 1
    return line, column


def node_position(node: exp.Expr | None) -> tuple[int | None, int | None]:
    """The 1-based (line, column) where ``node`` (or its first positioned descendant) starts."""
    if node is None:
        return None, None
    for child in node.walk():
        meta = child._meta if isinstance(child, exp.Expression) else None
        if meta and "line" in meta and "col" in meta:
            width = meta["end"] - meta["start"] + 1 if "start" in meta and "end" in meta else 1
            # A token's ``col`` is the column of its last character.
            return meta["line"], max(1, meta["col"] - width + 1)
    return None, None


def sql_error(message: str, node: exp.Expr | None) -> SqlError:
    """A :class:`SqlError` located at ``node``."""
    line, column = node_position(node)
    return SqlError(message, line, column)


@contextmanager
def nesting_guard(node: exp.Expr) -> Iterator[None]:
    """A RecursionError in the block (sqlglot walking a deep tree it recurses over, such as
    900 nested unary minuses) becomes a SqlError located at ``node``."""
    try:
        yield
    except RecursionError:
        raise sql_error("SQL nested too deeply to plan", node) from None


def _from_parse_error(sql: str, error: ParseError) -> SqlError:
    detail: dict[str, Any] = error.errors[0] if error.errors else {}
    message = detail.get("description") or str(error).split(". Line ")[0]
    if detail.get("start") is not None:
        line, column = line_column(sql, detail["start"])
    else:
        line, column = detail.get("line"), detail.get("col")
    return SqlError(message, line, column)


_TOKEN_AT = re.compile(r"^(.*) from \d+:(\d+)$")


def _from_token_error(sql: str, error: TokenError) -> SqlError:
    message = str(error).splitlines()[0]
    # The tokenizer wraps the real error ("Missing ' from LINE:OFFSET") in a context snippet.
    cause = str(error.__cause__ or "")
    if match := _TOKEN_AT.match(cause):
        line, column = line_column(sql, int(match.group(2)))
        return SqlError(f"{match.group(1)} (unterminated quote or comment)", line, column)
    if error.start is not None:
        line, column = line_column(sql, error.start)
        return SqlError(message, line, column)
    return SqlError(message)


def _check_text(sql: str) -> None:
    """SqlError at the first character that is not Unicode text (a lone surrogate)."""
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as error:
        raise SqlError("SQL text is not valid UTF-8", *line_column(sql, error.start)) from None


def _check_depth(statement: exp.Expr) -> None:
    """SqlError at the first node nested deeper than :data:`MAX_SQL_DEPTH` (walked without
    recursion)."""
    stack = [(statement, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SQL_DEPTH:
            raise sql_error(f"SQL nested more than {MAX_SQL_DEPTH} levels deep", node)
        stack.extend((child, depth + 1) for child in node.iter_expressions())


def parse(sql: str) -> list[exp.Expr]:
    """Every statement in ``sql`` (separated by ``;``), parsed with the StreamHouse dialect."""
    _check_text(sql)
    parser = DIALECT.parser()
    try:
        statements = parser.parse(DIALECT.tokenize(sql), sql)
    except ParseError as error:
        raise _from_parse_error(sql, error) from error
    except TokenError as error:
        raise _from_token_error(sql, error) from error
    except RecursionError:
        token = parser._curr or parser._prev  # where the parser was when the stack ran out
        if token is None:
            raise SqlError("SQL nested too deeply to parse") from None
        # A token's ``col`` is the column of its last character.
        column = max(1, token.col - len(token.text) + 1)
        raise SqlError("SQL nested too deeply to parse", token.line, column) from None
    result = [s for s in statements if s is not None]
    for statement in result:
        _check_depth(statement)
    logger.debug("parsed %d statement(s)", len(result))
    return result


def parse_one(sql: str) -> exp.Expr:
    """The one statement in ``sql``; SqlError if there is none or more than one."""
    statements = parse(sql)
    if len(statements) != 1:
        line, column = node_position(statements[1]) if statements else (1, 1)
        raise SqlError(f"expected one SQL statement, found {len(statements)}", line, column)
    return statements[0]
