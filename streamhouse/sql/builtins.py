"""Flink's built-in scalar functions that DataFusion lacks or spells differently.

Each Flink function becomes a DataFusion expression (a rewrite of the call), or a call of a
vectorized function evaluated by DuckDB over the whole Arrow array (JSON paths, time zones,
``strptime`` patterns, SHA-1, BIN): no per-row Python. Functions StreamHouse cannot honour are
refused by name (:data:`REFUSED`) with the call's line and column. ``docs/functions.md``
(made by :mod:`streamhouse.sql.function_table`) lists what works and what is refused.

>>> from streamhouse.sql.functions import to_datafusion
>>> from streamhouse.sql.parse import parse_one
>>> to_datafusion(parse_one("SELECT LOG(x) FROM t"))
'SELECT LN("x") FROM "t"'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.date_format import NAMES_OUTPUT, DateFormatError, date_format_sql
from streamhouse.sql.json_values import _cursor
from streamhouse.sql.parse import sql_error

__all__ = ["REFUSED", "WATERMARK_MARKER", "flink_function", "register_duckdb_functions"]

WATERMARK_MARKER = "NULLIF(-5839208157, -5839208157)"
"""What ``CURRENT_WATERMARK(ts)`` becomes, inside a cast to TIMESTAMP(3): NULL (a bounded query
has no watermark) until a continuous query's micro-batch puts its watermark in its place
(:func:`streamhouse.sql.execute.current_watermark`)."""

Deep = Callable[[exp.Expr], exp.Expr]

REFUSED: dict[str, str] = {
    "TYPEOF": "Flink's type names are not tracked",
    "GROUP_ID": "",
    "COLLECT": "there is no MULTISET type",
}
"""Flink functions refused by name (with the reason, when there is one to give)."""


@lru_cache(maxsize=256)
def _parsed(template: str) -> exp.Expr:
    return sqlglot.parse_one(template, read="postgres")


def _sql(template: str, *args: exp.Expr) -> exp.Expr:
    """``template`` (Postgres SQL) with ``__0``, ``__1``, ... replaced by ``args``."""

    def place(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and re.fullmatch(r"__\d+", node.name):
            return exp.Paren(this=args[int(node.name[2:])].copy())
        return node

    return _parsed(template).copy().transform(place)


def _call(name: str, *args: exp.Expr) -> exp.Anonymous:
    return exp.Anonymous(this=name, expressions=[a.copy() for a in args])


def _string(node: exp.Expr | None) -> str | None:
    """The text of a string literal, else None."""
    return node.name if isinstance(node, exp.Literal) and node.is_string else None


def _text_literal(text: str) -> exp.Literal:
    return exp.Literal.string(text)


# -- time ----------------------------------------------------------------------------------------

_UNITS = {
    "SECOND": 1_000,
    "MINUTE": 60_000,
    "HOUR": 3_600_000,
    "DAY": 86_400_000,
    "WEEK": 7 * 86_400_000,
}
_MONTH_UNITS = {"MONTH": 1, "QUARTER": 3, "YEAR": 12}
_EPOCH_MS = "CAST(date_part('epoch', __{i}) * 1000 AS BIGINT)"


def _unit(node: exp.Expr, function: str) -> str:
    unit = node.name.upper().rstrip("S") if isinstance(node, exp.Column | exp.Var) else ""
    if unit not in _UNITS and unit not in _MONTH_UNITS:
        raise sql_error(
            f"{function} takes a unit (SECOND, MINUTE, HOUR, DAY, WEEK, MONTH, QUARTER, YEAR) "
            f"first, not {node.sql()}",
            node,
        )
    return unit


def _timestampadd(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """``TIMESTAMPADD(unit, n, ts)``: ``ts`` moved by ``n`` units (months end-of-month clamped)."""
    if len(args) != 3:
        raise sql_error("TIMESTAMPADD takes a unit, a count and a timestamp", node)
    unit = _unit(args[0], "TIMESTAMPADD")
    count, ts = deep(args[1]), deep(args[2])
    if unit in _MONTH_UNITS:
        factor, name = _MONTH_UNITS[unit], "months"
    else:
        factor, name = _UNITS[unit], "milliseconds"
    # DataFusion cannot multiply an interval: the interval's text is built per row.
    return _sql(
        f"__1 + CAST(CAST(CAST(__0 AS BIGINT) * {factor} AS VARCHAR) || ' {name}' AS INTERVAL)",
        count,
        ts,
    )


def _timestampdiff(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """``TIMESTAMPDIFF(unit, t1, t2)``: whole units from ``t1`` to ``t2``, truncated toward zero;
    MONTH, QUARTER and YEAR from Flink's month count (:func:`_months_sql`)."""
    if len(args) != 3:
        raise sql_error("TIMESTAMPDIFF takes a unit and two timestamps", node)
    unit = _unit(args[0], "TIMESTAMPDIFF")
    first, second = deep(args[1]), deep(args[2])
    if unit in _UNITS:
        return _sql(
            f"CAST(({_EPOCH_MS.format(i=1)} - {_EPOCH_MS.format(i=0)}) / {_UNITS[unit]} AS INT)",
            first,
            second,
        )
    return _sql(f"CAST(({_MONTHS_BETWEEN}) / {_MONTH_UNITS[unit]} AS INT)", first, second)


def _months_sql() -> str:
    """Flink's (Calcite's) ``subtractMonths(t1 -> t0)`` over ``__0`` (t1) and ``__1`` (t0): on
    days, the most months ``m`` with ``addMonths(d1, m) <= d0`` (month ends clamped; negated
    when ``d0 < d1``); one less when that lands on ``d0`` at an earlier time of day."""
    d0, d1 = "CAST(__1 AS DATE)", "CAST(__0 AS DATE)"

    def month_number(date: str) -> str:
        return (
            f"(CAST(date_part('year', {date}) AS BIGINT) * 12 "
            f"+ CAST(date_part('month', {date}) AS BIGINT))"
        )

    def add_months(date: str, months: str) -> str:
        return f"({date} + CAST(CAST({months} AS VARCHAR) || ' months' AS INTERVAL))"

    def fitting(later: str, earlier: str) -> str:
        raw = f"({month_number(later)} - {month_number(earlier)})"
        return f"(CASE WHEN {add_months(earlier, raw)} <= {later} THEN {raw} ELSE {raw} - 1 END)"

    def time_of_day(ts: str) -> str:
        return (
            f"(CAST(date_part('epoch', {ts}) * 1000 AS BIGINT) "
            f"- CAST(date_part('epoch', date_trunc('day', {ts})) * 1000 AS BIGINT))"
        )

    days = f"(CASE WHEN {d0} >= {d1} THEN {fitting(d0, d1)} ELSE -{fitting(d1, d0)} END)"
    return (
        f"CASE WHEN {add_months(d1, days)} = {d0} AND {time_of_day('__1')} < {time_of_day('__0')} "
        f"THEN {days} - 1 ELSE {days} END"
    )


_MONTHS_BETWEEN = _months_sql()


def _floor_ceil(node: exp.Floor | exp.Ceil, deep: Deep) -> exp.Expr | None:
    """``FLOOR(ts TO unit)`` / ``CEIL(ts TO unit)``."""
    unit = node.args.get("to")
    if unit is None:
        return None
    name = unit.name.lower()
    ts = deep(node.this)
    if isinstance(node, exp.Floor):
        return _sql(f"date_trunc('{name}', __0)", ts)
    return _sql(
        f"CASE WHEN date_trunc('{name}', __0) = __0 THEN date_trunc('{name}', __0) "
        f"ELSE date_trunc('{name}', __0) + INTERVAL '1 {name}' END",
        ts,
    )


# Java DateTimeFormatter letters StreamHouse parses, as DuckDB strptime specifiers.
_PARSE_LETTERS = {
    "yyyy": "%Y",
    "yy": "%y",
    "MM": "%m",
    "M": "%-m",
    "MMM": "%b",
    "dd": "%d",
    "d": "%-d",
    "HH": "%H",
    "H": "%-H",
    "hh": "%I",
    "mm": "%M",
    "ss": "%S",
    "SSS": "%g",
    "SSSSSS": "%f",
    "a": "%p",
    "EEE": "%a",
    "X": "%z",
    "XX": "%z",
    "XXX": "%z",
    "Z": "%z",
}
_RUN = re.compile(r"([A-Za-z])\1*|'(?:[^']|'')*'|.", re.DOTALL)
DEFAULT_TIMESTAMP_PATTERN = "yyyy-MM-dd HH:mm:ss"


def strptime_pattern(pattern: str, node: exp.Expr | None = None) -> str:
    """DuckDB's ``strptime`` pattern for a Java one; letters it cannot read are refused.

    >>> strptime_pattern("yyyy-MM-dd HH:mm:ss.SSS")
    '%Y-%m-%d %H:%M:%S.%g'
    """
    out = []
    for match in _RUN.finditer(pattern):
        run = match.group(0)
        if run[0].isalpha():
            if run not in _PARSE_LETTERS:
                raise sql_error(f"date pattern letters {run!r} are not supported", node)
            out.append(_PARSE_LETTERS[run])
        elif run.startswith("'"):
            out.append(run[1:-1].replace("''", "'").replace("%", "%%"))
        else:
            out.append(run.replace("%", "%%"))
    return "".join(out)


def _pattern_arg(name: str, args: list[exp.Expr], index: int, default: str) -> str:
    if len(args) <= index:
        return default
    pattern = _string(args[index])
    if pattern is None:
        raise sql_error(f"{name} takes its pattern as a string literal", args[index])
    return pattern


def _parse_time(
    name: str, node: exp.Expr, args: list[exp.Expr], deep: Deep, default: str
) -> exp.Expr:
    """``strptime`` of ``args[0]`` with the Java pattern ``args[1]``: a timestamp, NULL if the
    text does not parse (as Flink's TO_TIMESTAMP)."""
    if not 1 <= len(args) <= 2:
        raise sql_error(f"{name} takes a string and an optional pattern", node)
    pattern = strptime_pattern(_pattern_arg(name, args, 1, default), args[-1])
    return _call("flink_strptime", deep(args[0]), _text_literal(pattern))


def _to_timestamp(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    if len(args) == 1:  # Flink's default: yyyy-MM-dd[ HH:mm:ss[.fraction]]
        return _call("flink_strptime_default", deep(args[0]))
    return _parse_time("TO_TIMESTAMP", node, args, deep, DEFAULT_TIMESTAMP_PATTERN)


def _to_date(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    parsed = _parse_time("TO_DATE", node, args, deep, "yyyy-MM-dd")
    return _sql("CAST(__0 AS DATE)", parsed)


def _unix_timestamp(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """``UNIX_TIMESTAMP()``: now in epoch seconds; ``UNIX_TIMESTAMP(s[, pattern])``: the text's
    epoch seconds (UTC, the session zone), Long.MIN_VALUE if it does not parse (as Flink)."""
    if not args:
        return _sql("CAST(floor(date_part('epoch', now())) AS BIGINT)")
    parsed = _parse_time("UNIX_TIMESTAMP", node, args, deep, DEFAULT_TIMESTAMP_PATTERN)
    return _sql(
        "CASE WHEN __1 IS NULL THEN NULL "
        "ELSE coalesce(CAST(floor(date_part('epoch', __0)) AS BIGINT), -9223372036854775808) END",
        parsed,
        deep(args[0]),
    )


def _from_unixtime(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """``FROM_UNIXTIME(seconds[, pattern])``: text in the session zone (UTC)."""
    if not 1 <= len(args) <= 2:
        raise sql_error("FROM_UNIXTIME takes epoch seconds and an optional pattern", node)
    pattern = _pattern_arg("FROM_UNIXTIME", args, 1, DEFAULT_TIMESTAMP_PATTERN)
    ts = _sql("to_timestamp_seconds(CAST(__0 AS BIGINT))", deep(args[0]))
    try:
        return date_format_sql(ts, pattern, distinct=not node.meta.get(NAMES_OUTPUT))
    except DateFormatError as error:
        raise sql_error(str(error), args[1]) from None


def _to_timestamp_ltz(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """``TO_TIMESTAMP_LTZ(n, 0)`` epoch seconds, ``(n, 3)`` epoch milliseconds (default 3)."""
    precision = args[1].name if len(args) == 2 else "3"
    if len(args) not in (1, 2) or precision not in ("0", "3"):
        raise sql_error("TO_TIMESTAMP_LTZ takes epoch seconds and 0, or milliseconds and 3", node)
    function = "to_timestamp_seconds" if precision == "0" else "to_timestamp_millis"
    return _sql(f"{function}(CAST(__0 AS BIGINT))", deep(args[0]))


def _convert_tz(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    if len(args) != 3:
        raise sql_error("CONVERT_TZ takes a datetime string and two time zones", node)
    return _call("flink_convert_tz", *(deep(a) for a in args))


_RANGE_FIELDS = ["YEAR", "MONTH", "DAY", "HOUR", "MINUTE", "SECOND"]
_RANGE_TEXT = re.compile(r"^\s*([+-])?(\d+)(?:[- :](\d+))?(?::(\d+))?(?::(\d+(?:\.\d*)?))?\s*$")


def _interval_range(node: exp.Interval) -> exp.Expr | None:
    """``INTERVAL '2-10' YEAR TO MONTH``, ``INTERVAL '10 00:00:00.004' DAY TO SECOND``, ...:
    the text's fields, from the first unit to the last, as DataFusion's interval text."""
    span = node.args.get("unit")
    if not isinstance(span, exp.IntervalSpan):
        return None
    first, last = span.this.name.upper(), span.expression.name.upper()
    text = _string(node.this)
    match = _RANGE_TEXT.match(text or "")
    if first not in _RANGE_FIELDS or last not in _RANGE_FIELDS or match is None:
        raise sql_error(f"INTERVAL {text!r} {first} TO {last} is not supported", node)
    fields = _RANGE_FIELDS[_RANGE_FIELDS.index(first) : _RANGE_FIELDS.index(last) + 1]
    numbers = [n for n in match.groups()[1:] if n is not None]
    if len(numbers) != len(fields):
        raise sql_error(f"INTERVAL {text!r} does not have the fields {first} TO {last}", node)
    sign = "-" if match.group(1) == "-" else ""
    words = " ".join(f"{sign}{n} {f.lower()}s" for n, f in zip(numbers, fields, strict=True))
    return exp.Interval(this=_text_literal(words))


# -- strings -------------------------------------------------------------------------------------


def _concat(node: exp.Concat, deep: Deep) -> exp.Expr:
    """Flink's CONCAT is NULL when any argument is NULL (DataFusion's skips NULLs)."""
    args = [deep(a) for a in node.expressions]
    result: exp.Expr = args[0]
    for arg in args[1:]:
        result = exp.DPipe(this=result, expression=arg, safe=False)
    return result


_BACKSLASH_DIGIT = re.compile(r"\\[0-9]")


def _regexp_replace(node: exp.RegexpReplace, deep: Deep) -> exp.Expr:
    """Every match replaced by the replacement as written (Flink quotes it: ``$1`` is text).
    DataFusion replaces the first match unless given 'g', and reads ``$`` and a backslash
    before a digit as group references: ``$`` is doubled; a backslash before a digit is
    refused (a literal at planning, other values when the row is read)."""
    replacement = node.args["replacement"]
    text = _string(replacement)
    if text is not None and _BACKSLASH_DIGIT.search(text):
        raise sql_error(
            "REGEXP_REPLACE with a backslash before a digit in the replacement is not supported",
            replacement,
        )
    return _sql(
        "CASE WHEN __2 ~ '\\\\[0-9]' THEN flink_fail('REGEXP_REPLACE with a backslash "
        "before a digit in the replacement is not supported') "
        "ELSE regexp_replace(__0, __1, replace(__2, '$', '$$'), 'g') END",
        deep(node.this),
        deep(node.expression),
        deep(replacement),
    )


def _split_index(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """``SPLIT_INDEX(s, sep, i)``: token ``i`` (from 0) of ``s`` split at every ``sep``, empty
    tokens kept; NULL for a negative ``i``, past the last token, or an empty ``s``."""
    if len(args) != 3:
        raise sql_error("SPLIT_INDEX takes a string, a separator and an index", node)
    tokens = "(character_length(__0) - character_length(replace(__0, __1, ''))) / character_length(__1) + 1"
    return _sql(
        f"CASE WHEN __2 < 0 OR __0 = '' OR __1 = '' OR __2 >= {tokens} THEN NULL "
        "ELSE split_part(__0, __1, __2 + 1) END",
        *(deep(a) for a in args),
    )


def _substring(node: exp.Substring, deep: Deep) -> exp.Expr:
    """Flink's SUBSTRING / SUBSTR: a start below 0 counts from the end, 0 is 1; a negative
    length gives NULL."""
    text = deep(node.this)
    start = deep(node.args.get("start") or exp.Literal.number(1))
    length = node.args.get("length")
    first = (
        "CASE WHEN __1 > 0 THEN __1 WHEN __1 < 0 THEN character_length(__0) + __1 + 1 ELSE 1 END"
    )
    before_start = "__1 < 0 AND character_length(__0) + __1 < 0"
    if length is None:
        return _sql(f"CASE WHEN {before_start} THEN '' ELSE substr(__0, {first}) END", text, start)
    return _sql(
        f"CASE WHEN __2 < 0 THEN NULL WHEN {before_start} THEN '' "
        f"ELSE substr(__0, {first}, __2) END",
        text,
        start,
        deep(length),
    )


def _overlay(node: exp.Overlay, deep: Deep) -> exp.Expr:
    """Flink's OVERLAY: the string unchanged for a start outside it; the rest after the
    replaced characters kept only when it starts inside the string and the count is positive."""
    text, placing, start = deep(node.this), deep(node.expression), deep(node.args["from_"])
    count = node.args.get("for_")
    length = deep(count) if count is not None else _call("character_length", placing)
    return _sql(
        "CASE WHEN __2 <= 0 OR __2 > character_length(__0) THEN __0 "
        "ELSE substr(__0, 1, __2 - 1) || __1 || "
        "CASE WHEN __2 + __3 <= character_length(__0) AND __3 > 0 THEN substr(__0, __2 + __3) "
        "ELSE '' END END",
        text,
        placing,
        start,
        length,
    )


def _locate(node: exp.StrPosition, deep: Deep) -> exp.Expr | None:
    """``LOCATE(needle, s, from)``: searched from ``from`` (below 1 as 1); 0 if absent."""
    position = node.args.get("position")
    if position is None:
        return None
    return _sql(
        "CASE WHEN __2 IS NULL THEN NULL "
        "WHEN strpos(substr(__0, greatest(__2, 1)), __1) = 0 THEN 0 "
        "ELSE strpos(substr(__0, greatest(__2, 1)), __1) + greatest(__2, 1) - 1 END",
        deep(node.this),
        deep(node.args["substr"]),
        deep(position),
    )


def _similar_to(node: exp.SimilarTo, deep: Deep) -> exp.Expr:
    """SQL regular expressions: ``%`` and ``_`` wildcards, ``.`` a plain dot, the whole string."""
    pattern = _string(node.expression)
    if pattern is None:
        raise sql_error("SIMILAR TO takes its pattern as a string literal", node.expression)
    regex = "".join(
        {"%": ".*", "_": ".", ".": r"\.", "^": r"\^", "$": r"\$"}.get(c, c) for c in pattern
    )
    return exp.RegexpLike(this=deep(node.this), expression=_text_literal(f"^(?:{regex})$"))


def _parse_url(node: exp.ParseUrl, deep: Deep) -> exp.Expr:
    """``PARSE_URL(url, part[, key])`` by RFC 3986's regular expression."""
    part = _string(node.args.get("part_to_extract"))
    groups = {"PROTOCOL": 2, "AUTHORITY": 4, "PATH": 5, "QUERY": 7, "REF": 9}  # 1-based
    url = deep(node.this)
    # the scheme is required: Java's URL refuses text without one (Flink gives NULL)
    match = "regexp_match(__0, '^(([^:/?#]+):)(//([^/?#]*))?([^?#]*)(\\?([^#]*))?(#(.*))?')"
    key = node.args.get("key")
    if part == "QUERY" and key is not None:
        name = _string(key)
        if name is None:
            raise sql_error("PARSE_URL takes the query key as a string literal", key)
        return _sql(f"regexp_match(({match})[7], '(^|&){re.escape(name)}=([^&]*)')[2]", url)
    if part in groups:
        return _sql(f"({match})[{groups[part]}]", url)
    if part == "HOST":
        return _sql(f"regexp_replace(({match})[4], '^([^@]*@)?([^:]*)(:.*)?$', '${{2}}')", url)
    if part == "USERINFO":
        return _sql(f"(regexp_match(({match})[4], '^([^@]*)@'))[1]", url)
    if part == "FILE":
        return _sql(
            f"concat(({match})[5], ({match})[6])",
            url,
        )
    raise sql_error(
        "PARSE_URL takes a part: HOST, PATH, QUERY, REF, PROTOCOL, AUTHORITY, FILE or USERINFO",
        node,
    )


def _hex(node: exp.Hex, deep: Deep) -> exp.Expr:
    """HEX of an integer (two's complement) or of a string's UTF-8 bytes, upper case."""
    value = deep(node.this)
    as_integer = _call("to_hex", _sql("TRY_CAST(__0 AS BIGINT)", value))
    return _sql(
        "CASE WHEN arrow_typeof(__0) LIKE '%Utf8%' "
        "THEN upper(encode(TRY_CAST(__0 AS VARCHAR), 'hex')) ELSE upper(__1) END",
        value,
        as_integer,
    )


def _charset(node: exp.Expr, function: str) -> None:
    charset = _string(node.args.get("charset"))
    if charset is None or charset.upper().replace("_", "-") not in ("UTF-8", "UTF8"):
        raise sql_error(f"{function} supports the character set 'UTF-8' only", node)


def _left_right(node: exp.Left | exp.Right, deep: Deep) -> exp.Expr:
    """LEFT / RIGHT: '' for a negative count (DataFusion's drop characters instead)."""
    function = "left" if isinstance(node, exp.Left) else "right"
    return _sql(
        f"CASE WHEN __1 < 0 THEN '' ELSE {function}(__0, __1) END",
        deep(node.this),
        deep(node.expression),
    )


def _pad(node: exp.Pad, deep: Deep) -> exp.Expr:
    """LPAD / RPAD: NULL for a negative length or an empty pad (as Flink)."""
    function = "lpad" if node.args.get("is_left") else "rpad"
    text, length = deep(node.this), deep(node.expression)
    fill = node.args.get("fill_pattern")
    if fill is None:
        raise sql_error(f"{function.upper()} takes a string, a length and a pad string", node)
    return _sql(
        f"CASE WHEN __1 < 0 OR __2 = '' THEN NULL ELSE {function}(__0, __1, __2) END",
        text,
        length,
        deep(fill),
    )


def _chr(node: exp.Chr, deep: Deep) -> exp.Expr:
    """CHR(n): the character of ``n``'s low byte; '' for a negative ``n`` (as Flink)."""
    if len(node.expressions) != 1:
        raise sql_error("CHR takes one integer", node)
    return _sql(
        "CASE WHEN __0 < 0 THEN '' ELSE chr(CAST(__0 AS BIGINT) % 256) END",
        deep(node.expressions[0]),
    )


def _encode(node: exp.Encode, deep: Deep) -> exp.Expr:
    _charset(node, "ENCODE")
    return _sql("CAST(__0 AS BYTEA)", deep(node.this))


def _decode(node: exp.Decode, deep: Deep) -> exp.Expr:
    _charset(node, "DECODE")
    return _sql("CAST(__0 AS VARCHAR)", deep(node.this))


def _str_to_map(node: exp.StrToMap, deep: Deep) -> exp.Expr:
    pair = node.args.get("pair_delim") or _text_literal(",")
    key_value = node.args.get("key_value_delim") or _text_literal("=")
    return _call("flink_str_to_map", deep(node.this), deep(pair), deep(key_value))


# -- conditional and numeric ---------------------------------------------------------------------


def _null_if_any(function: str, args: list[exp.Expr]) -> exp.Expr:
    """``function(args)``, NULL when any argument is NULL (Flink's GREATEST and LEAST)."""
    placeholders = [f"__{i}" for i in range(len(args))]
    nulls = " OR ".join(f"{p} IS NULL" for p in placeholders)
    return _sql(
        f"CASE WHEN {nulls} THEN NULL ELSE {function}({', '.join(placeholders)}) END", *args
    )


def _rand_integer(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """``RAND_INTEGER(n)``: uniform in [0, n); with a seed (two arguments) it is refused."""
    if len(args) != 1:
        raise sql_error("function RAND_INTEGER with a seed is not supported", node)
    return _sql("CAST(floor(random() * __0) AS INT)", deep(args[0]))


def _overlaps(node: exp.Overlaps, deep: Deep) -> exp.Expr:
    """``(s0, e0) OVERLAPS (s1, e1)``, as Calcite: an interval end is start + interval, each
    pair is put in order, and the periods overlap unless one ends before the other starts."""
    pairs = []
    for side in (node.this, node.expression):
        points = side.expressions if isinstance(side, exp.Tuple) else []
        if len(points) != 2:
            raise sql_error("OVERLAPS takes (start, end or interval) on each side", side)
        start, end = deep(points[0]), deep(points[1])
        if isinstance(points[1], exp.Interval):
            end = _sql("__0 + __1", start, end)
        pairs += [start, end]
    low = "CASE WHEN {a} <= {b} THEN {a} ELSE {b} END"
    high = "CASE WHEN {a} <= {b} THEN {b} ELSE {a} END"
    s0, e0 = low.format(a="__0", b="__1"), high.format(a="__0", b="__1")
    s1, e1 = low.format(a="__2", b="__3"), high.format(a="__2", b="__3")
    return _sql(f"NOT (({e0}) < ({s1}) OR ({e1}) < ({s0}))", *pairs)


def _ignore_nulls(node: exp.FirstValue | exp.LastValue, deep: Deep) -> exp.Expr | None:
    """Flink's FIRST_VALUE and LAST_VALUE skip NULL values (aggregates and OVER windows)."""
    if isinstance(node.parent, exp.IgnoreNulls | exp.RespectNulls):
        return None
    return exp.IgnoreNulls(this=type(node)(this=deep(node.this)))


def _all_args(node: exp.Expr) -> list[exp.Expr]:
    return [node.this, *node.expressions]


def _between(node: exp.Between, deep: Deep) -> exp.Expr | None:
    if not node.args.get("symmetric"):
        return None
    value, low, high = deep(node.this), deep(node.args["low"]), deep(node.args["high"])
    return _sql("(__0 BETWEEN __1 AND __2) OR (__0 BETWEEN __2 AND __1)", value, low, high)


def _sign(node: exp.Sign, deep: Deep) -> exp.Expr:
    return _sql(
        "CASE WHEN __0 > 0 THEN 1 WHEN __0 < 0 THEN -1 WHEN __0 = 0 THEN 0 END", deep(node.this)
    )


def _log(node: exp.Log, deep: Deep) -> exp.Expr:
    """``LOG(x)`` is the natural logarithm in Flink (DataFusion's is base 10)."""
    if node.args.get("expression") is None:
        return _call("ln", deep(node.this))
    return _call("log", deep(node.this), deep(node.expression))


# -- collections ---------------------------------------------------------------------------------


def _array_contains(node: exp.ArrayContains, deep: Deep) -> exp.Expr:
    return _sql(
        "CASE WHEN __0 IS NULL THEN NULL ELSE array_has(__0, __1) END",
        deep(node.this),
        deep(node.expression),
    )


def _array_position(node: exp.ArrayPosition, deep: Deep) -> exp.Expr:
    return _sql(
        "CASE WHEN __0 IS NULL OR __1 IS NULL THEN NULL "
        "ELSE coalesce(CAST(array_position(__0, __1) AS INT), 0) END",
        deep(node.this),
        deep(node.expression),
    )


def _element(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """``ELEMENT(array)``: its one element, NULL if empty; more than one fails the query,
    naming ELEMENT, as in Flink (the failing index keeps the element's type)."""
    if len(args) != 1:
        raise sql_error("ELEMENT takes one array", node)
    return _sql(
        "CASE WHEN cardinality(__0) <= 1 THEN __0[1] "
        "ELSE __0[flink_fail_index(concat('ELEMENT of an array of ', "
        "CAST(cardinality(__0) AS VARCHAR), ' elements'))] END",
        deep(args[0]),
    )


def _map_constructor(node: exp.Bracket, deep: Deep) -> exp.Expr | None:
    """``MAP[k1, v1, k2, v2, ...]``."""
    if not (isinstance(node.this, exp.Column) and node.this.name.upper() == "MAP"):
        return None
    args = [deep(a) for a in node.expressions]
    if not args or len(args) % 2:
        raise sql_error("MAP[...] takes keys and values in pairs", node)
    keys, values = args[0::2], args[1::2]
    return _call("map", _call("make_array", *keys), _call("make_array", *values))


def _field_access(node: exp.Column) -> exp.Expr | None:
    """``table.row_column.field``: a field of a ROW column (three parts; there are no schemas)."""
    if not node.args.get("db") or node.args.get("catalog") or isinstance(node.this, exp.Star):
        return None
    column = exp.Column(this=node.args["table"].copy(), table=node.args["db"].copy())
    return _call("get_field", column, _text_literal(node.name))


# -- JSON ----------------------------------------------------------------------------------------


def _json_path(node: exp.Expr | None, function: str) -> str:
    path = _string(node)
    if path is None:
        raise sql_error(f"{function} takes its path as a string literal", node)
    path = re.sub(r"^\s*(lax|strict)\s+", "", path, flags=re.IGNORECASE)
    # Flink's $.['a b'] / $.["a b"] / $['a b']: DuckDB spells a quoted member $."a b"
    path = re.sub(r"\.?\[\s*(['\"])(.*?)\1\s*\]", lambda m: '."' + m.group(2) + '"', path)
    if "*" in path:
        raise sql_error(f"{function} paths with wildcards are not supported", node)
    return path


def _json_value(node: exp.JSONValue, deep: Deep) -> exp.Expr:
    """``JSON_VALUE(json, path [RETURNING type])``: the scalar at ``path``; NULL when absent,
    not a scalar or not JSON (NULL ON EMPTY, NULL ON ERROR: the defaults)."""
    if isinstance(node.args.get("on_condition"), exp.Expr):
        raise sql_error("JSON_VALUE ... ON EMPTY / ON ERROR is not supported", node)
    path = _json_path(node.args.get("path"), "JSON_VALUE")
    value = _call("flink_json_value", deep(node.this), _text_literal(path))
    returning = node.args.get("returning")
    if not isinstance(returning, exp.DataType):
        return value
    return exp.TryCast(this=value, to=returning.copy())


def _json_query(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """``JSON_QUERY(json, path)``: the object or array at ``path`` as compact JSON text."""
    if len(args) != 2:
        raise sql_error("JSON_QUERY takes JSON text and a path (no wrapper clauses)", node)
    path = _json_path(args[1], "JSON_QUERY")
    return _call("flink_json_query", deep(args[0]), _text_literal(path))


def _json_exists(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    if len(args) != 2:
        raise sql_error("JSON_EXISTS takes JSON text and a path (no ON ERROR clause)", node)
    path = _json_path(args[1], "JSON_EXISTS")
    return _call("flink_json_exists", deep(args[0]), _text_literal(path))


def _is_json(node: exp.Is, deep: Deep) -> exp.Expr | None:
    """``s IS [NOT] JSON [VALUE|SCALAR|ARRAY|OBJECT]``: never NULL (NULL IS JSON is FALSE)."""
    kind = node.expression
    if not isinstance(kind, exp.JSON):
        return None
    what = (kind.name or "VALUE").upper()
    test = _call("flink_is_json", deep(node.this), _text_literal(what))
    return exp.Not(this=test) if node.args.get("negate") else test


_JSON_TEXT = (
    "CASE WHEN __0 IS NULL THEN NULL "
    "WHEN arrow_typeof(__0) LIKE '%Utf8%' THEN flink_json_quote(TRY_CAST(__0 AS VARCHAR)) "
    "WHEN arrow_typeof(__0) ~ '^(Boolean|U?Int|Float|Decimal)' THEN CAST(__0 AS VARCHAR) "
    "ELSE flink_fail(concat('JSON values of type ', arrow_typeof(__0), ' are not supported')) END"
)
"""JSON text of a scalar: strings quoted and escaped, numbers and booleans as they print."""


def _is_json_constructor(node: exp.Expr) -> bool:
    if isinstance(node, exp.JSONObject):
        return True
    return isinstance(node, exp.Anonymous) and node.name.upper() in ("JSON_ARRAY", "JSON_OBJECT")


def _json_item(value: exp.Expr, deep: Deep, absent_on_null: bool) -> exp.Expr:
    """One value's JSON text; NULL (left out by concat_ws) or 'null' for a NULL value."""
    text = deep(value) if _is_json_constructor(value) else _sql(_JSON_TEXT, deep(value))
    return text if absent_on_null else _sql("coalesce(__0, 'null')", text)


def _json_object(node: exp.JSONObject, deep: Deep) -> exp.Expr:
    absent = "ABSENT" in str(node.args.get("null_handling") or "").upper()
    pieces = []
    for pair in node.expressions:
        key = _string(pair.this)
        if key is None:
            raise sql_error("JSON_OBJECT keys must be string literals", pair)
        value = _json_item(pair.expression, deep, absent)
        pieces.append(_sql(f"{_quote(json.dumps(key) + ':')} || __0", value))
    return _wrapped("{", pieces, "}")


def _json_array(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """``JSON_ARRAY(v, ...)``: NULL values are left out (ABSENT ON NULL, the default)."""
    return _wrapped("[", [_json_item(a, deep, True) for a in args], "]")


def _json_string(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    if len(args) != 1:
        raise sql_error("JSON_STRING takes one value", node)
    return _sql(_JSON_TEXT, deep(args[0]))


def _json_arrayagg(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """``JSON_ARRAYAGG(v)``: the values' JSON in arrival order, NULLs left out (ABSENT ON
    NULL, the default); ``[]`` for no rows."""
    if len(args) != 1:
        raise sql_error("JSON_ARRAYAGG takes one value (ABSENT ON NULL, the default)", node)
    items = _call("string_agg", _json_item(args[0], deep, True), _text_literal(","))
    return _sql("'[' || coalesce(__0, '') || ']'", items)


def _json_objectagg(node: exp.JSONObjectAgg, deep: Deep) -> exp.Expr:
    """``JSON_OBJECTAGG(KEY k VALUE v)``: one member per row in arrival order; NULL ON NULL
    (the default) or ABSENT ON NULL; a key given twice fails the query, as in Flink."""
    if len(node.expressions) != 1:
        raise sql_error("JSON_OBJECTAGG takes one KEY ... VALUE ... pair", node)
    pair = node.expressions[0]
    absent = "ABSENT" in str(node.args.get("null_handling") or "").upper()
    key = deep(pair.this)
    member = _sql(
        "flink_json_quote(__0) || ':' || __1", key, _json_item(pair.expression, deep, absent)
    )
    return _sql(
        "CASE WHEN count(__0) <> count(DISTINCT __0) "
        "THEN flink_fail('JSON_OBJECTAGG with a key given twice') "
        "ELSE '{' || coalesce(string_agg(__1, ','), '') || '}' END",
        key,
        member,
    )


def _wrapped(opening: str, pieces: list[exp.Expr], closing: str) -> exp.Expr:
    if not pieces:
        return _text_literal(opening + closing)
    body = _call("concat_ws", _text_literal(","), *pieces)
    return _sql(f"{_quote(opening)} || __0 || {_quote(closing)}", body)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- dispatch ------------------------------------------------------------------------------------


def _current_watermark(node: exp.Expr, args: list[exp.Expr], deep: Deep) -> exp.Expr:
    """Flink's ``CURRENT_WATERMARK(rowtime)``: the watermark as a TIMESTAMP(3), NULL before
    the first one (and in a bounded query, which has none)."""
    if len(args) != 1 or not isinstance(args[0], exp.Column):
        raise sql_error("CURRENT_WATERMARK takes the time attribute of a stream (a column)", node)
    return _sql(f"arrow_cast(CAST({WATERMARK_MARKER} AS BIGINT), 'Timestamp(Millisecond, None)')")


_NAMED: dict[str, Callable[[exp.Expr, list[exp.Expr], Deep], exp.Expr]] = {
    "CURRENT_WATERMARK": _current_watermark,
    "SPLIT_INDEX": _split_index,
    "TIMESTAMPADD": _timestampadd,
    "TIMESTAMPDIFF": _timestampdiff,
    "TO_TIMESTAMP": _to_timestamp,
    "TO_DATE": _to_date,
    "UNIX_TIMESTAMP": _unix_timestamp,
    "FROM_UNIXTIME": _from_unixtime,
    "TO_TIMESTAMP_LTZ": _to_timestamp_ltz,
    "CONVERT_TZ": _convert_tz,
    "ELEMENT": _element,
    "JSON_QUERY": _json_query,
    "JSON_EXISTS": _json_exists,
    "JSON_ARRAY": _json_array,
    "JSON_STRING": _json_string,
    "JSON_ARRAYAGG": _json_arrayagg,
    "E": lambda node, args, deep: _sql("exp(1.0)"),
    "RAND_INTEGER": lambda node, args, deep: _rand_integer(node, args, deep),
    "CURRENT_ROW_TIMESTAMP": lambda node, args, deep: _sql("now()"),
    "IS_ALPHA": lambda node, args, deep: _sql("coalesce(__0 ~ '^\\p{L}+$', false)", deep(args[0])),
    "IS_DIGIT": lambda node, args, deep: _sql("coalesce(__0 ~ '^\\p{Nd}+$', false)", deep(args[0])),
    "IS_DECIMAL": lambda node, args, deep: _sql(
        # Java's Double.parseDouble: trimmed, NaN, Infinity, an f or d suffix (not hex floats)
        "coalesce(__0 ~ '^[\\x00-\\x20]*[+-]?(NaN|Infinity|([0-9]+(\\.[0-9]*)?|\\.[0-9]+)"
        "([eE][+-]?[0-9]+)?[fFdD]?)[\\x00-\\x20]*$', false)",
        deep(args[0]),
    ),
    "BIN": lambda node, args, deep: _call("flink_bin", _sql("CAST(__0 AS BIGINT)", deep(args[0]))),
    "SHA1": lambda node, args, deep: _call("flink_sha1", deep(args[0])),
    "SHA224": lambda node, args, deep: _sql("encode(sha224(__0), 'hex')", deep(args[0])),
    "LISTAGG": lambda node, args, deep: _call(
        "string_agg", deep(args[0]), deep(args[1]) if len(args) > 1 else _text_literal(",")
    ),
    "MAP_FROM_ARRAYS": lambda node, args, deep: _call("map", *(deep(a) for a in args)),
    "CARDINALITY": lambda node, args, deep: _sql("CAST(cardinality(__0) AS INT)", deep(args[0])),
}
"""Flink calls sqlglot reads as ``exp.Anonymous``, by name."""

_TYPED: dict[type, Callable[..., exp.Expr | None]] = {
    exp.Concat: _concat,
    exp.RegexpReplace: _regexp_replace,
    exp.SimilarTo: _similar_to,
    exp.RegexpLike: lambda node, deep: _sql(
        "CASE WHEN __1 = '' THEN false ELSE __0 ~ __1 END", deep(node.this), deep(node.expression)
    ),
    exp.ParseUrl: _parse_url,
    exp.Hex: _hex,
    exp.Encode: _encode,
    exp.Substring: _substring,
    exp.Overlay: _overlay,
    exp.StrPosition: _locate,
    exp.Left: _left_right,
    exp.Right: _left_right,
    exp.Pad: _pad,
    exp.Chr: _chr,
    exp.Decode: _decode,
    exp.StrToMap: _str_to_map,
    exp.Greatest: lambda node, deep: _null_if_any("greatest", [deep(a) for a in _all_args(node)]),
    exp.Least: lambda node, deep: _null_if_any("least", [deep(a) for a in _all_args(node)]),
    exp.Between: _between,
    exp.Sign: _sign,
    exp.Log: _log,
    exp.ArrayContains: _array_contains,
    exp.ArrayPosition: _array_position,
    exp.ArrayRemove: lambda node, deep: _call(
        "array_remove_all", deep(node.this), deep(node.expression)
    ),
    exp.Floor: _floor_ceil,
    exp.Ceil: _floor_ceil,
    exp.Bracket: _map_constructor,
    exp.JSONValue: _json_value,
    exp.JSONObject: _json_object,
    exp.JSONObjectAgg: _json_objectagg,
    exp.Is: _is_json,
    exp.Quarter: lambda node, deep: _sql("date_part('quarter', __0)", deep(node.this)),
    exp.Week: lambda node, deep: _sql("date_part('week', __0)", deep(node.this)),
    exp.DayOfWeek: lambda node, deep: _sql("date_part('dow', __0) + 1", deep(node.this)),
    exp.ToBase64: lambda node, deep: _call("encode", deep(node.this), _text_literal("base64pad")),
    exp.FromBase64: lambda node, deep: _sql(
        "CAST(decode(__0, 'base64pad') AS VARCHAR)", deep(node.this)
    ),
    exp.SHA: lambda node, deep: _call("flink_sha1", deep(node.this)),
    exp.SHA2Digest: lambda node, deep: _sql(
        f"encode(sha{node.args['length'].name}(__0), 'hex')", deep(node.this)
    ),
    exp.Uuid: lambda node, deep: _call("uuid"),
    exp.Localtimestamp: lambda node, deep: _call("now"),
    exp.Localtime: lambda node, deep: _call("current_time"),
    exp.Interval: lambda node, deep: _interval_range(node),
    exp.Overlaps: lambda node, deep: _overlaps(node, deep),
    exp.FirstValue: _ignore_nulls,
    exp.LastValue: _ignore_nulls,
    exp.GroupingId: lambda node, deep: exp.Grouping(
        expressions=[deep(a) for a in node.expressions]
    ),
    # Flink's session starts in database 'default_database'; StreamHouse has no other
    exp.CurrentDatabase: lambda node, deep: _text_literal("default_database"),
    exp.Column: lambda node, deep: _field_access(node),
}
"""Flink calls sqlglot reads as its own expression types."""

_REFUSED_TYPES: dict[type, str] = {
    exp.Typeof: "TYPEOF",
}
"""Refused Flink functions that sqlglot reads as its own expression types."""


def flink_function(node: exp.Expr, deep: Deep) -> exp.Expr | None:
    """DataFusion's expression for the Flink call ``node``, None if it needs no rewrite.

    ``deep`` rewrites an argument (the rewrite of a call does not descend into its result)."""
    if isinstance(node, exp.Anonymous):
        name = node.name.upper()
        if name in REFUSED:
            reason = REFUSED[name]
            raise sql_error(
                f"function {name} is not supported" + (f": {reason}" if reason else ""), node
            )
        named = _NAMED.get(name)
        return named(node, list(node.expressions), deep) if named else None
    if isinstance(node, exp.Rand) and node.this is not None:
        raise sql_error("function RAND with a seed is not supported", node)
    refused = _REFUSED_TYPES.get(type(node))
    if refused is not None:
        reason = REFUSED.get(refused)
        raise sql_error(
            f"function {refused} is not supported" + (f": {reason}" if reason else ""), node
        )
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Star):
        raise sql_error("composite.* (flattening a ROW into columns) is not supported", node)
    typed = _TYPED.get(type(node))
    return typed(node, deep) if typed else None


# -- functions evaluated by DuckDB over whole arrays ---------------------------------------------


def _duckdb(sql: str) -> Callable[..., pa.Array]:
    """A vectorized function: ``sql`` over columns ``a0``, ``a1``, ... of one DuckDB scan.
    Constant arguments (patterns, paths, zones) are read from the first row as ``$1``, ...."""

    def call(*arrays: pa.Array) -> pa.Array:
        table = pa.table({f"a{i}": array for i, array in enumerate(arrays)})
        cursor = _cursor()
        try:
            cursor.register("args", table)
            result = cursor.sql(f"SELECT {sql} AS r FROM args").to_arrow_table()
        finally:
            cursor.close()
        return result.column("r").combine_chunks()

    return call


def _constant(sql: str, index: int) -> Callable[..., pa.Array]:
    """Like :func:`_duckdb`, with argument ``index`` (a literal) spliced into ``sql`` as text,
    where DuckDB wants a constant (``{0}``)."""

    def call(*arrays: pa.Array) -> pa.Array:
        values = arrays[index].unique().drop_null().to_pylist()
        if len(values) > 1:
            raise ValueError("the pattern, path or zone must be a constant")
        text = _quote(values[0]) if values else "NULL"
        return _duckdb(sql.format(text))(*arrays)

    return call


def _str_to_map_arrays(strings: pa.Array, pairs: pa.Array, key_values: pa.Array) -> pa.Array:
    """Flink's STR_TO_MAP: split into pairs (Java's String.split: trailing empty pairs dropped),
    then each pair at its first key-value delimiter (both regular expressions); a pair without
    one maps its text to NULL; '' gives an empty map."""
    pair_pattern = pairs.unique().drop_null().to_pylist() or [","]
    key_pattern = key_values.unique().drop_null().to_pylist() or ["="]
    if len(pair_pattern) > 1 or len(key_pattern) > 1:
        raise ValueError("STR_TO_MAP delimiters must be constants")
    # Java's String.split drops trailing empty strings; Flink maps '' to an empty map
    trimmed = pc.replace_substring_regex(strings, f"(?:{pair_pattern[0]})+$", "")
    split = pc.split_pattern_regex(trimmed, pair_pattern[0])
    empty = pc.fill_null(pc.equal(trimmed, ""), False)
    split = pc.if_else(empty, pa.scalar([], split.type), split)
    items = pc.list_flatten(split)
    keys = pc.list_element(pc.split_pattern_regex(items, key_pattern[0], max_splits=1), 0)
    rest = pc.replace_substring_regex(items, f"^.*?(?:{key_pattern[0]})", "", max_replacements=1)
    values = pc.if_else(pc.match_substring_regex(items, key_pattern[0]), rest, None)
    lengths = pc.fill_null(pc.list_value_length(split), 0).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
    return pa.MapArray.from_arrays(offsets, keys, values, mask=pc.is_null(strings))


_JSON_VALUE = (
    "CASE WHEN json_valid(a0) AND json_type(json_extract(a0, {0})) NOT IN ('OBJECT', 'ARRAY') "
    "THEN json_extract_string(a0, {0}) END"
)
_JSON_QUERY = (
    "CASE WHEN json_valid(a0) AND json_type(json_extract(a0, {0})) IN ('OBJECT', 'ARRAY') "
    "THEN CAST(json_extract(a0, {0}) AS VARCHAR) END"
)
_IS_JSON = (
    "coalesce(json_valid(a0) AND CASE {0} WHEN 'VALUE' THEN true "
    "WHEN 'SCALAR' THEN json_type(a0) NOT IN ('OBJECT', 'ARRAY') "
    "ELSE json_type(a0) = {0} END, false)"
)
_CONVERT_TZ = (
    "strftime(timezone({1}, timezone({0}, try_strptime(a0, '%Y-%m-%d %H:%M:%S'))), "
    "'%Y-%m-%d %H:%M:%S')"
)


def _convert_tz_arrays(strings: pa.Array, zones_from: pa.Array, zones_to: pa.Array) -> pa.Array:
    zones = []
    for array in (zones_from, zones_to):
        values = array.unique().drop_null().to_pylist()
        if len(values) != 1:
            raise ValueError("CONVERT_TZ takes its time zones as constants")
        zones.append(_quote(values[0]))
    return _duckdb(_CONVERT_TZ.format(*zones))(strings, zones_from, zones_to)


def _fail(messages: pa.Array) -> pa.Array:
    """Fails the query with the message of the first row that reaches it (none: no rows)."""
    present = messages.drop_null()
    if len(present):
        raise SqlError(str(present[0]))
    return pa.nulls(len(messages))  # cast to the declared type by register_function


def register_duckdb_functions(register: Callable[..., None]) -> None:
    """Register the vectorized helpers the rewrites above call, through ``register``
    (:func:`streamhouse.sql.functions.register_function`)."""
    text, flag = pa.string(), pa.bool_()
    register(
        "flink_strptime", _constant("try_strptime(a0, {0})", 1), [text, text], pa.timestamp("us")
    )
    register(
        "flink_strptime_default",
        _duckdb(
            "date_trunc('millisecond', try_strptime(a0, "
            "['%Y-%m-%d %H:%M:%S.%f', '%Y-%m-%d %H:%M:%S', '%Y-%m-%d']))"
        ),
        [text],
        pa.timestamp("us"),
    )
    register("flink_convert_tz", _convert_tz_arrays, [text, text, text], text)
    register("flink_json_value", _constant(_JSON_VALUE, 1), [text, text], text)
    register("flink_json_query", _constant(_JSON_QUERY, 1), [text, text], text)
    register(
        "flink_json_exists",
        _constant("CASE WHEN json_valid(a0) THEN json_exists(a0, {0}) ELSE false END", 1),
        [text, text],
        flag,
    )
    register("flink_is_json", _constant(_IS_JSON, 1), [text, text], flag)
    register("flink_json_quote", _duckdb("CAST(to_json(a0) AS VARCHAR)"), [text], text)
    register("flink_bin", _duckdb("bin(a0)"), [pa.int64()], text)
    register("flink_sha1", _duckdb("sha1(a0)"), [text], text)
    # volatile: DataFusion must not evaluate it while planning, where a CASE branch no row
    # reaches would fail the query
    register("flink_fail", _fail, [text], text, volatility="volatile")
    register("flink_fail_index", _fail, [text], pa.int64(), volatility="volatile")
    register("flink_str_to_map", _str_to_map_arrays, [text, text, text], pa.map_(text, text))
