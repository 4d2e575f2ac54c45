"""Flink SQL functions on DataFusion, and user-defined scalar functions in Python.

Generating SQL for DataFusion goes through :func:`to_datafusion`, which rewrites the Flink
functions DataFusion spells differently:

=======================================  ===============================================
Flink                                    DataFusion
=======================================  ===============================================
``DATE_FORMAT(ts, 'yyyy-MM-dd HH:mm')``  ``to_char(ts, '%Y-%m-%d %H:%M')``
``REGEXP_EXTRACT(s, re, i)``             ``regexp_match(s, re)[i]`` (i = 0: whole match)
``SPLIT_INDEX(s, sep, i)``               ``split_part(s, sep, i + 1)`` (NULL past the end)
``CHAR_LENGTH(s)``                       ``character_length(s)``
``HOUR(ts)``, ``MINUTE``, ``DAYOFMONTH``   ``date_part('hour', ts)``, ...
=======================================  ===============================================

User-defined scalar functions take and return Arrow arrays (vectorized, no per-row call):

>>> import pyarrow.compute as pc
>>> register_function("shout", lambda s: pc.utf8_upper(s), [pa.string()], pa.string())
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import datafusion
import pyarrow as pa
from sqlglot import exp

from streamhouse.errors import SqlError

log = logging.getLogger(__name__)

_FUNCTIONS: dict[str, datafusion.ScalarUDF] = {}

_JAVA_DATE = [
    ("yyyy", "%Y"),
    ("yy", "%y"),
    ("MM", "%m"),
    ("dd", "%d"),
    ("HH", "%H"),
    ("hh", "%I"),
    ("mm", "%M"),
    ("ss", "%S"),
    ("SSS", "%3f"),
    ("a", "%p"),
    ("EEE", "%a"),
]
_JAVA_TOKEN = re.compile("|".join(re.escape(j) for j, _ in _JAVA_DATE))


def java_date_format(pattern: str) -> str:
    """A Java ``SimpleDateFormat`` pattern as a strftime (chrono) pattern."""
    mapping = dict(_JAVA_DATE)
    return _JAVA_TOKEN.sub(lambda m: mapping[m.group(0)], pattern.replace("%", "%%"))


def register_function(
    name: str,
    function: Callable[..., pa.Array],
    input_types: list[pa.DataType],
    return_type: pa.DataType,
    *,
    volatility: str = "immutable",
) -> None:
    """Make ``name(...)`` callable from SQL in this process: Arrow arrays in, an Arrow array out.

    A result of another type than ``return_type`` is cast to it (``pc.count_substring`` gives
    int32 for int64 declared, say); one that does not cast is an error naming the function.
    """

    def call(*arrays: pa.Array) -> pa.Array:
        result = function(*arrays)
        if not isinstance(result, pa.Array | pa.ChunkedArray):
            raise SqlError(
                f"function {name!r} returned {type(result).__name__}, not an Arrow array"
            )
        if result.type == return_type:
            return result
        try:
            return result.cast(return_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SqlError(
                f"function {name!r} returned {result.type}, not the declared {return_type}: {exc}"
            ) from None

    _FUNCTIONS[name.lower()] = datafusion.udf(
        call, input_types, return_type, volatility, name.lower()
    )


def functions() -> list[datafusion.ScalarUDF]:
    return list(_FUNCTIONS.values())


def _rewrite(node: exp.Expr) -> exp.Expr:
    name = node.name.upper() if isinstance(node, exp.Anonymous) else None
    if isinstance(node, exp.TimeToStr) or name == "DATE_FORMAT":
        args = (
            [node.this, node.args.get("format")]
            if isinstance(node, exp.TimeToStr)
            else node.expressions
        )
        if len(args) == 2 and isinstance(args[1], exp.Literal):
            pattern = java_date_format(args[1].name)
            return exp.Anonymous(this="to_char", expressions=[args[0], exp.Literal.string(pattern)])
    if name == "REGEXP_EXTRACT" or isinstance(node, exp.RegexpExtract):
        if isinstance(node, exp.RegexpExtract):
            args = [node.this, node.expression, node.args.get("group")]
        else:
            args = list(node.expressions) + [None] * (3 - len(node.expressions))
        subject, pattern, group = args[0], args[1], args[2]
        index = int(group.name) if isinstance(group, exp.Literal) else 1
        if index == 0 and isinstance(pattern, exp.Literal):
            pattern, index = exp.Literal.string(f"({pattern.name})"), 1
        match = exp.Anonymous(this="regexp_match", expressions=[subject, pattern])
        return exp.Bracket(this=exp.Paren(this=match), expressions=[exp.Literal.number(index)])
    if name == "SPLIT_INDEX" and len(node.expressions) == 3:
        subject, separator, index = node.expressions
        part = exp.Anonymous(
            this="split_part",
            expressions=[subject, separator, exp.Add(this=index, expression=exp.Literal.number(1))],
        )
        return exp.Nullif(this=part, expression=exp.Literal.string(""))
    if name == "CHAR_LENGTH":
        return exp.Anonymous(this="character_length", expressions=node.expressions)
    part = _DATE_PARTS.get(type(node)) or _DATE_PART_NAMES.get(name or "")
    if part is not None:
        arg = node.this if not isinstance(node, exp.Anonymous) else node.expressions[0]
        return exp.Anonymous(this="date_part", expressions=[exp.Literal.string(part), arg])
    return node


_DATE_PARTS: dict[type, str] = {
    exp.Hour: "hour",
    exp.Minute: "minute",
    exp.Second: "second",
    exp.DayOfMonth: "day",
    exp.Month: "month",
    exp.Year: "year",
    exp.DayOfWeek: "dow",
    exp.DayOfYear: "doy",
}
_DATE_PART_NAMES = {"HOUR": "hour", "MINUTE": "minute", "SECOND": "second", "DAYOFMONTH": "day"}


def to_datafusion(expression: exp.Expr) -> str:
    """SQL text for DataFusion: Postgres-flavoured, identifiers quoted, Flink functions mapped."""
    return expression.copy().transform(_rewrite).sql(dialect="postgres", identify=True)
