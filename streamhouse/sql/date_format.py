"""Flink's ``DATE_FORMAT(ts, pattern)`` as a DataFusion expression.

Flink formats with Java's ``DateTimeFormatter.ofPattern(pattern)`` in the JVM's default locale
(``en_US`` on the hosts Flink usually runs on): English month and day names, and weeks that
start on Sunday with week 1 the week holding January 1 (``WeekFields.of(Locale.US)``). Each
run of pattern letters becomes a chrono ``to_char`` specifier where chrono has the same field,
or an integer expression where it does not (week-based year ``Y``, week of year ``w``, week of
month ``W``, day-of-week number ``e``, quarter ``Q``, ``k``/``K`` hours, era ``G``).

Pattern letters that need a time zone (``z``, ``V``, ``O``, ``X``, ``x``, ``Z``: Flink formats a
zone-less ``LocalDateTime``, where Java fails on them) and those not translated (``A``, ``n``,
``N``, ``F``, ``p``, ``B``) are refused by name, as are counts Java refuses.

A pattern of fields ``pyarrow.compute.strftime`` prints as chrono does (``yyyy-MM-dd``,
``HH:mm``: no unpadded numbers, fractions or computed fields) takes a cheaper path for
timestamps from 1970 to 2261 (:func:`format_distinct`): each timestamp floored to the
pattern's finest unit, each distinct value formatted once, and the texts taken back to the rows
(a micro-batch of events spans a few minutes, so a few distinct values). Other timestamps, and
other patterns, go through ``to_char`` as above. A SELECT with an unaliased computed output
keeps ``to_char``: DataFusion names the column after the expression's text, and the cheap path
would rename it (:func:`streamhouse.sql.functions.to_datafusion` marks it).

>>> from sqlglot import exp
>>> date_format_sql(exp.column("ts"), "yyyy-MM-dd HH:mm:ss.SSS").sql("postgres")
"TO_CHAR(ts, '%Y-%m-%d %H:%M:%S.%3f')"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

__all__ = [
    "FORMAT_DISTINCT",
    "NAMES_OUTPUT",
    "DateFormatError",
    "date_format_sql",
    "format_distinct",
]


class DateFormatError(ValueError):
    """A pattern DATE_FORMAT cannot honour; the message names the letter."""


@dataclass(frozen=True)
class _Part:
    """One piece of the output: chrono ``to_char`` text, a literal, or a SQL expression."""

    chrono: str | None = None
    literal: str | None = None
    sql: str | None = None  # over the placeholder column ``__ts``


# Day number since the epoch, day of week (0 = Sunday) and the week's Saturday (its year is the
# week-based year: with weeks of at least one day in the year, the week holding January 1 of
# the next year is that year's week 1).
_DAYS = "CAST(arrow_cast(arrow_cast(__ts, 'Date32'), 'Int32') AS BIGINT)"
_DOW = f"((({_DAYS} + 4) % 7 + 7) % 7)"
_SATURDAY = f"arrow_cast(CAST({_DAYS} + 6 - {_DOW} AS INT), 'Date32')"
_WEEK_YEAR = f"CAST(date_part('year', {_SATURDAY}) AS BIGINT)"
_WEEK = f"((CAST(date_part('doy', {_SATURDAY}) AS BIGINT) - 1) / 7 + 1)"
_DAY = "CAST(date_part('day', __ts) AS BIGINT)"
_FIRST_OF_MONTH_DOW = f"(((({_DAYS} - {_DAY} + 1) + 4) % 7 + 7) % 7)"
_WEEK_OF_MONTH = f"(({_DAY} + {_FIRST_OF_MONTH_DOW} - 1) / 7 + 1)"
_YEAR = "CAST(date_part('year', __ts) AS BIGINT)"
_HOUR = "CAST(date_part('hour', __ts) AS BIGINT)"
_QUARTER = "CAST(date_part('quarter', __ts) AS BIGINT)"

_NAMES = {
    "G": "era",
    "u": "year",
    "y": "year of era",
    "Y": "week-based year",
    "D": "day of year",
    "M": "month",
    "L": "month",
    "d": "day of month",
    "Q": "quarter",
    "q": "quarter",
    "w": "week of week-based year",
    "W": "week of month",
    "E": "day of week",
    "e": "localized day of week",
    "c": "localized day of week",
    "F": "aligned week of month",
    "a": "am-pm",
    "h": "clock hour of am-pm (1-12)",
    "K": "hour of am-pm (0-11)",
    "k": "clock hour of day (1-24)",
    "H": "hour of day (0-23)",
    "m": "minute",
    "s": "second",
    "S": "fraction of second",
    "A": "milli of day",
    "n": "nano of second",
    "N": "nano of day",
    "B": "day period",
    "V": "time-zone id",
    "v": "generic time-zone name",
    "z": "time-zone name",
    "O": "localized zone offset",
    "X": "zone offset ('Z' for zero)",
    "x": "zone offset",
    "Z": "zone offset",
    "p": "pad modifier",
}
_ZONE_LETTERS = set("VvzOXxZ")

_RUN = re.compile(r"([A-Za-z])\1*|'(?:[^']|'')*'?|.", re.DOTALL)
_QUOTED = re.compile(r"'(?:[^']|'')*'")


def _pad(text: str, count: int) -> str:
    """Text zero-padded to at least ``count`` characters (``lpad`` alone would cut it)."""
    if count == 1:
        return text
    return f"CASE WHEN length({text}) >= {count} THEN {text} ELSE lpad({text}, {count}, '0') END"


def _number(sql: str, count: int) -> _Part:
    """An integer expression as text, zero-padded to ``count`` digits (Java's padding)."""
    return _Part(sql=_pad(f"CAST({sql} AS VARCHAR)", count))


def _year(sql: str, count: int) -> _Part:
    if count == 2:  # the last two digits
        return _Part(sql=f"lpad(CAST(({sql}) % 100 AS VARCHAR), 2, '0')")
    return _number(sql, count if count >= 4 else 1)


def _text(chrono: str, count: int, short: int, full: int, narrow: int) -> _Part | None:
    """Month or day names: ``short`` letters or fewer give the short name, ``full`` the full
    one, ``narrow`` its first letter."""
    if count == narrow:
        return _Part(sql=f"substr(chrono_format(__ts, '{chrono.upper()}'), 1, 1)")
    if count == full:
        return _Part(chrono=chrono.upper())
    if count <= short:
        return _Part(chrono=chrono)
    return None


def _quarter(count: int) -> _Part | None:
    if count <= 2:
        return _number(_QUARTER, count)
    if count == 3:
        return _Part(sql=f"concat('Q', CAST({_QUARTER} AS VARCHAR))")
    if count == 4:
        return _Part(
            sql=f"concat(CAST({_QUARTER} AS VARCHAR), CASE {_QUARTER} WHEN 1 THEN 'st' "
            "WHEN 2 THEN 'nd' WHEN 3 THEN 'rd' ELSE 'th' END, ' quarter')"
        )
    return None


def _padded(count: int, bare: str, padded: str) -> _Part | None:
    """A two-digit field: one letter unpadded, two letters zero-padded."""
    return _Part(chrono=bare) if count == 1 else _Part(chrono=padded) if count == 2 else None


def _field(letter: str, count: int) -> _Part | None:
    """The output of ``count`` repetitions of pattern ``letter``; None if Java refuses it."""
    if letter in "yu":
        return _Part(chrono="%Y") if count == 4 else _year(_YEAR, count)
    if letter == "Y":
        return _year(_WEEK_YEAR, count)
    if letter in "ML":
        if count <= 2:
            return _padded(count, "%-m", "%m")
        return _text("%b", count, 3, 4, 5)
    if letter == "d":
        return _padded(count, "%-d", "%d")
    if letter == "D":
        if count == 2:
            return _Part(sql=_pad("chrono_format(__ts, '%-j')", 2))
        return {1: _Part(chrono="%-j"), 3: _Part(chrono="%j")}.get(count)
    if letter == "H":
        return _padded(count, "%-H", "%H")
    if letter == "h":
        return _padded(count, "%-I", "%I")
    if letter == "m":
        return _padded(count, "%-M", "%M")
    if letter == "s":
        return _padded(count, "%-S", "%S")
    if letter == "k" and count <= 2:
        return _number(f"CASE WHEN {_HOUR} = 0 THEN 24 ELSE {_HOUR} END", count)
    if letter == "K" and count <= 2:
        return _number(f"({_HOUR} % 12)", count)
    if letter == "S" and count <= 9:
        if count in (3, 6, 9):
            return _Part(chrono=f"%{count}f")
        return _Part(sql=f"substr(chrono_format(__ts, '%9f'), 1, {count})")  # truncated, as Java
    if letter == "E":
        return _text("%a", count, 3, 4, 5)
    if letter in "ec":
        if count == 1 or (letter == "e" and count == 2):
            return _number(f"({_DOW} + 1)", count)
        return _text("%a", count, 0, 4, 5) if count != 3 else _Part(chrono="%a")
    if letter == "a" and count == 1:
        return _Part(chrono="%p")
    if letter == "w" and count <= 2:
        return _number(_WEEK, count)
    if letter == "W" and count == 1:
        return _number(_WEEK_OF_MONTH, 1)
    if letter in "Qq":
        return _quarter(count)
    if letter == "G" and count <= 5:
        ad, bc = {4: ("Anno Domini", "Before Christ"), 5: ("A", "B")}.get(count, ("AD", "BC"))
        return _Part(sql=f"CASE WHEN {_YEAR} > 0 THEN '{ad}' ELSE '{bc}' END")
    return None


def _parts(pattern: str) -> list[_Part]:
    parts: list[_Part] = []
    for match in _RUN.finditer(pattern):
        token = match.group(0)
        if token.startswith("'"):
            if not _QUOTED.fullmatch(token):
                raise DateFormatError(f"DATE_FORMAT pattern {pattern!r} has an unclosed quote")
            parts.append(_Part(literal="'" if token == "''" else token[1:-1].replace("''", "'")))
        elif token.isalpha():
            letter, count = token[0], len(token)
            if letter in _ZONE_LETTERS:
                raise DateFormatError(
                    f"DATE_FORMAT pattern letter {letter!r} ({_NAMES[letter]}) needs a time "
                    "zone, and Flink formats a timestamp without one"
                )
            part = _field(letter, count)
            if part is None:
                what = f" ({_NAMES[letter]})" if letter in _NAMES else ""
                times = f" repeated {count} times" if count > 1 else ""
                raise DateFormatError(
                    f"DATE_FORMAT pattern letter {letter!r}{what}{times} is not supported"
                )
            parts.append(part)
        elif token in "#{}":
            raise DateFormatError(f"DATE_FORMAT pattern character {token!r} is reserved")
        elif token not in "[]":  # optional sections: every field is there, so they print
            parts.append(_Part(literal=token))
    return parts


def _merged(parts: list[_Part]) -> list[_Part]:
    """Adjacent chrono specifiers and literals joined into one ``to_char`` format."""
    out: list[_Part] = []
    for part in parts:
        chrono = part.chrono
        if part.literal is not None:
            chrono = part.literal.replace("%", "%%")
        if chrono is not None and out and out[-1].chrono is not None:
            out[-1] = _Part(chrono=out[-1].chrono + chrono)
        elif chrono is not None:
            out.append(_Part(chrono=chrono))
        else:
            out.append(part)
    return out


def _with_ts(sql: str, ts: exp.Expr) -> exp.Expr:
    """``sql`` with ``ts`` for ``__ts``; ``chrono_format`` is ``to_char`` (a name sqlglot would
    read as Postgres' TO_CHAR, whose format it rewrites)."""

    def substitute(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.name == "__ts":
            return ts.copy()
        if isinstance(node, exp.Anonymous) and node.name == "chrono_format":
            node.set("this", "to_char")
        return node

    return sqlglot.parse_one(sql, read="postgres").transform(substitute, copy=False)


# chrono specifiers strftime prints alike (C locale), by the unit (ms) each needs the time in
_DISTINCT_UNITS = {
    **dict.fromkeys("YmdjbBaA", 86_400_000),
    **dict.fromkeys("HIp", 3_600_000),
    "M": 60_000,
    "S": 1_000,
}
_SPECIFIER = re.compile(r"%(.)")
# The rows the cheap path takes: floored division and strftime agree with chrono there.
_DISTINCT_FROM = "1970-01-01 00:00:00"
_DISTINCT_TO = "2262-01-01 00:00:00"  # TIMESTAMP literals are nanoseconds
FORMAT_DISTINCT = "__streamhouse_format_distinct"
# sqlglot meta key: the node is part of an unaliased projection, whose text names the column
NAMES_OUTPUT = "streamhouse_names_output"


def _distinct_unit(chrono: str) -> int | None:
    """The finest unit (ms) of a chrono format strftime prints alike; None if it has another."""
    units = [_DISTINCT_UNITS.get(s) for s in _SPECIFIER.findall(chrono) if s != "%"]
    if not units or None in units:
        return None
    return min(u for u in units if u is not None)


def format_distinct(ts: pa.Array, how: pa.Array) -> pa.Array:
    """``strftime`` of each of ``ts`` (Timestamp(ms), 1970 to 2261) by ``how``'s first value,
    ``'<unit ms>|<format>'``: every timestamp floored to the unit and each distinct one
    formatted once (DataFusion passes the literal ``how`` as an array as long as ``ts``)."""
    if len(ts) == 0:
        return pa.array([], pa.string())
    unit_text, chrono = how[0].as_py().split("|", 1)
    unit = int(unit_text)
    floored = pc.divide(ts.cast(pa.int64()), unit)  # >= 0 here, so division floors
    encoded = pc.dictionary_encode(floored)
    seconds = pc.multiply(encoded.dictionary, unit // 1000).cast(pa.timestamp("s"))
    return pc.take(pc.strftime(seconds, format=chrono), encoded.indices)


def _cheap(ts: exp.Expr, chrono: str, formatted: exp.Expr) -> exp.Expr:
    """``formatted`` (``to_char``) through :func:`format_distinct` where that prints alike."""
    unit = _distinct_unit(chrono)
    if unit is None:
        return formatted
    within = _with_ts(
        f"__ts >= TIMESTAMP '{_DISTINCT_FROM}' AND __ts < TIMESTAMP '{_DISTINCT_TO}'", ts
    )
    how = exp.Literal.string(f"{unit}|{chrono}")
    millis = exp.Anonymous(
        this="arrow_cast",
        expressions=[ts.copy(), exp.Literal.string("Timestamp(Millisecond, None)")],
    )
    cheap = exp.Anonymous(this=FORMAT_DISTINCT, expressions=[millis, how])
    return exp.Case(ifs=[exp.If(this=within, true=cheap)], default=formatted)


def date_format_sql(ts: exp.Expr, pattern: str, *, distinct: bool = True) -> exp.Expr:
    """``DATE_FORMAT(ts, pattern)`` as an expression DataFusion runs (NULL for a NULL ``ts``);
    :class:`DateFormatError` for a pattern it cannot honour. ``distinct=False``: ``to_char``
    alone, never :func:`format_distinct`."""
    parts = _merged(_parts(pattern))
    if distinct and len(parts) == 1 and parts[0].chrono is not None:
        chrono = parts[0].chrono
        plain = exp.Anonymous(this="to_char", expressions=[ts.copy(), exp.Literal.string(chrono)])
        return _cheap(ts, chrono, plain)
    pieces = [
        exp.Anonymous(this="to_char", expressions=[ts.copy(), exp.Literal.string(p.chrono)])
        if p.chrono is not None
        else _with_ts(p.sql or "", ts)
        for p in parts
    ]
    if len(pieces) == 1 and parts[0].chrono is not None:
        return pieces[0]
    if not pieces:
        pieces = [exp.Literal.string("")]
    joined = exp.Anonymous(this="concat", expressions=pieces)
    return exp.Case(
        ifs=[exp.If(this=exp.Is(this=ts.copy(), expression=exp.Null()), true=exp.Null())],
        default=joined,
    )
