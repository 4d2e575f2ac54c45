"""Statement sets: ``EXECUTE STATEMENT SET BEGIN INSERT ...; INSERT ...; END;`` and
``BEGIN STATEMENT SET; INSERT ...; END;`` (Flink's two spellings).

sqlglot reads neither, so :func:`parse_with_sets` blanks the wrapping keywords out of the text
(spaces of the same length: every other line and column stays where it was), parses the rest
and groups the INSERTs between them into one :class:`StatementSet`.

>>> [type(s).__name__ for s in parse_with_sets(
...     "EXECUTE STATEMENT SET BEGIN INSERT INTO a SELECT 1; INSERT INTO b SELECT 2; END;")]
['StatementSet']
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.tokens import TokenType

from streamhouse.errors import SqlError
from streamhouse.sql.parse import DIALECT, line_column, node_position, parse, sql_error

__all__ = ["StatementSet", "parse_with_sets"]


@dataclass(frozen=True)
class StatementSet:
    """The INSERTs of one statement set, in the order written; ``line``/``column`` where the
    set begins."""

    inserts: tuple[exp.Insert, ...]
    line: int
    column: int

    def sql(self, dialect: object = DIALECT) -> str:
        """The set as one text (a continuous query's definition)."""
        inner = "; ".join(insert.sql(dialect=dialect) for insert in self.inserts)
        return f"EXECUTE STATEMENT SET BEGIN {inner}; END"


_EXECUTE = re.compile(r"EXECUTE\s+STATEMENT\s+SET\s+BEGIN\b", re.IGNORECASE)
_BEGIN = re.compile(r"BEGIN\s+STATEMENT\s+SET\s*;", re.IGNORECASE)
_END = re.compile(r"END\b\s*;?", re.IGNORECASE)
_OPENING = re.compile(r"\b(?:EXECUTE|BEGIN)\b", re.IGNORECASE)  # a set can begin only here


def _next_marker(text: str, opened: bool) -> tuple[str, int, int] | None:
    """The first wrapping keyword run at the start of a statement: (``begin`` | ``end``,
    first char, one past its last), or None. Tokens, so that nothing inside a string literal
    or a comment counts (EXECUTE makes the rest of its statement one token: a regex there)."""
    try:
        tokens = DIALECT.tokenize(text)
    except Exception:  # the parse that follows reports the error with its position
        return None
    for i, token in enumerate(tokens):
        if i and tokens[i - 1].token_type != TokenType.SEMICOLON:
            continue
        pattern = _END if opened else (_EXECUTE if token.text.upper() == "EXECUTE" else _BEGIN)
        match = pattern.match(text, token.start)
        if match:
            return ("end" if opened else "begin", match.start(), match.end())
    return None


def _markers(text: str) -> tuple[str, list[tuple[str, int, int]]]:
    """``text`` with every wrapping keyword run blanked, and where each was."""
    found: list[tuple[str, int, int]] = []
    if _OPENING.search(text) is None:  # no set: spare tokenizing the text (every query start)
        return text, found
    while (marker := _next_marker(text, bool(found) and found[-1][0] == "begin")) is not None:
        found.append(marker)
        _, start, end = marker
        text = text[:start] + "".join(c if c == "\n" else " " for c in text[start:end]) + text[end:]
    return text, found


def parse_with_sets(text: str) -> list[exp.Expr | StatementSet]:
    """The statements of ``text``, each statement set as one :class:`StatementSet`."""
    text, markers = _markers(text)
    if not markers:
        return list(parse(text))
    statements = parse(text)
    offsets = [_offset(text, s) for s in statements]
    out: list[exp.Expr | StatementSet] = []
    index = 0
    for pos, (kind, start, _) in enumerate(markers):
        if kind != "begin":
            continue
        closing = markers[pos + 1][1] if pos + 1 < len(markers) else None
        while index < len(statements) and offsets[index] < start:
            out.append(statements[index])
            index += 1
        line, column = line_column(text, start)
        if closing is None:
            raise SqlError("a statement set has no END", line, column)
        members: list[exp.Insert] = []
        while index < len(statements) and offsets[index] < closing:
            member = statements[index]
            if not isinstance(member, exp.Insert):
                raise sql_error(
                    f"a statement set holds INSERT statements only, not {member.key.upper()}",
                    member,
                )
            members.append(member)
            index += 1
        if not members:
            raise SqlError("a statement set holds no INSERT", line, column)
        out.append(StatementSet(tuple(members), line, column))
    out.extend(statements[index:])
    return out


def _offset(text: str, statement: exp.Expr) -> int:
    """The character offset where ``statement`` starts (its first positioned node)."""
    line, column = node_position(statement)
    if line is None or column is None:
        return len(text)
    starts = [0]
    for i, c in enumerate(text):
        if c == "\n":
            starts.append(i + 1)
    return starts[line - 1] + column - 1
