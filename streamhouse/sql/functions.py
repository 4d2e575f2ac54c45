"""Flink SQL functions on DataFusion, and user-defined scalar functions in Python.

Generating SQL for DataFusion goes through :func:`to_datafusion`, which rewrites the Flink
functions DataFusion spells differently: most in :mod:`.builtins` (its table of every documented
Flink function: :mod:`.function_table`), and these here:

=======================================  ===============================================
Flink                                    DataFusion
=======================================  ===============================================
``DATE_FORMAT(ts, 'yyyy-MM-dd HH:mm')``  ``to_char(ts, '%Y-%m-%d %H:%M')`` (:mod:`.date_format`)
``REGEXP_EXTRACT(s, re, i)``             ``regexp_match(s, '(' || re || ')')[i + 1]``
``CHAR_LENGTH(s)``                       ``character_length(s)``
``CAST(ts AS STRING)``                   ``yyyy-MM-dd HH:mm:ss[.f]``, p digits for TIMESTAMP(p)
``HOUR(ts)``, ``MINUTE``, ``DAYOFMONTH``   ``date_part('hour', ts)``, ...
=======================================  ===============================================

User-defined scalar functions take and return Arrow arrays (vectorized, no per-row call):

>>> import pyarrow.compute as pc
>>> register_function("shout", lambda s: pc.utf8_upper(s), [pa.string()], pa.string())
"""

from __future__ import annotations

import base64
import importlib
import logging
from collections.abc import Callable
from typing import ClassVar

import datafusion
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.generators.postgres import PostgresGenerator

from streamhouse.errors import SqlError
from streamhouse.sql.builtins import flink_function, register_duckdb_functions
from streamhouse.sql.date_format import (
    FORMAT_DISTINCT,
    NAMES_OUTPUT,
    DateFormatError,
    date_format_sql,
    format_distinct,
)
from streamhouse.sql.parse import sql_error
from streamhouse.sql.unnest import unnest_joins

log = logging.getLogger(__name__)

_FUNCTIONS: dict[str, datafusion.ScalarUDF] = {}
# name -> (module, qualified name, types as a schema: arguments then result, volatility) of a
# registered function another process can import (a module's top-level function)
_IMPORTABLE: dict[str, tuple[str, str, pa.Schema, str]] = {}


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
    module, qualname = getattr(function, "__module__", None), getattr(function, "__qualname__", "")
    if module and module != "__main__" and "<" not in qualname:
        types = pa.schema(
            [*(pa.field(f"a{i}", t) for i, t in enumerate(input_types)), pa.field("r", return_type)]
        )
        _IMPORTABLE[name.lower()] = (module, qualname, types, volatility)
    else:
        _IMPORTABLE.pop(name.lower(), None)


def exported_functions(called: set[str]) -> list[dict[str, str]]:
    """The registered functions of ``called`` (lower-case names) as another process imports
    them (:func:`import_functions`: a parallel query's tasks); a SqlError naming one that is
    not a module's top-level function (a lambda, a nested function), which no task can
    import."""
    exported = []
    for name in sorted(called & _FUNCTIONS.keys()):
        if name not in _IMPORTABLE:
            raise SqlError(
                f"function {name!r} is not a module's top-level function: the task processes"
                " of a query at parallelism > 1 cannot import it (define it at the top level"
                " of a module, or run the query at parallelism 1)"
            )
        module, qualname, types, volatility = _IMPORTABLE[name]
        schema = base64.b64encode(types.serialize().to_pybytes()).decode()
        exported.append(
            {
                "name": name,
                "module": module,
                "qualname": qualname,
                "types": schema,
                "volatility": volatility,
            }
        )
    return exported


def import_functions(exported: list[dict[str, str]]) -> None:
    """Register in this process the functions :func:`exported_functions` described."""
    for item in exported:
        try:
            function: object = importlib.import_module(item["module"])
            for part in item["qualname"].split("."):
                function = getattr(function, part)
        except (ImportError, AttributeError) as exc:
            raise SqlError(
                f"function {item['name']!r} ({item['module']}.{item['qualname']}) cannot be"
                f" imported by a task process of a query at parallelism > 1: {exc}"
            ) from None
        types = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(item["types"])))
        assert callable(function)
        register_function(
            item["name"],
            function,
            types.types[:-1],
            types.types[-1],
            volatility=item["volatility"],
        )


# StreamHouse's own functions, in every context (DATE_FORMAT's cheap path)
_OWN = [
    datafusion.udf(
        format_distinct,
        [pa.timestamp("ms"), pa.string()],
        pa.string(),
        "immutable",
        FORMAT_DISTINCT,
    )
]


def functions() -> list[datafusion.ScalarUDF]:
    return [*_OWN, *_FUNCTIONS.values()]


def _rewrite(node: exp.Expr) -> exp.Expr:
    builtin = flink_function(node, _deep)
    if builtin is not None:
        return builtin
    if _rewrite_own(node) is node:
        return node
    # The result is not visited again: the arguments are rewritten before the call.
    node = node.copy()
    for child in list(node.iter_expressions()):
        child.replace(_deep(child))
    return _rewrite_own(node)


def _rewrite_own(node: exp.Expr) -> exp.Expr:
    name = node.name.upper() if isinstance(node, exp.Anonymous) else None
    if isinstance(node, exp.TimeToStr):  # Postgres TO_CHAR: its format is strftime already
        return exp.Anonymous(this="to_char", expressions=[node.this, node.args["format"]])
    if name == "DATE_FORMAT":
        return _date_format(node)
    if isinstance(node, exp.RegexpExtract):
        return _regexp_extract(node)
    if isinstance(node, exp.Cast) and node.to.this in _TEXT_TYPES:
        return _cast_to_string(node)
    if name == "CHAR_LENGTH":
        return exp.Anonymous(this="character_length", expressions=node.expressions)
    part = _DATE_PARTS.get(type(node)) or _DATE_PART_NAMES.get(name or "")
    if part is not None:
        arg = node.this if not isinstance(node, exp.Anonymous) else node.expressions[0]
        return exp.Anonymous(this="date_part", expressions=[exp.Literal.string(part), arg])
    return node


def _deep(node: exp.Expr) -> exp.Expr:
    """``node`` with every Flink call in it rewritten."""
    return node.transform(_rewrite)


def _date_format(node: exp.Anonymous) -> exp.Expr:
    """``DATE_FORMAT(ts, 'pattern')``: the pattern must be a literal (see :mod:`.date_format`)."""
    args = node.expressions
    if len(args) != 2 or not (isinstance(args[1], exp.Literal) and args[1].is_string):
        raise sql_error(
            "DATE_FORMAT takes a timestamp and a pattern given as a string literal", node
        )
    try:
        return date_format_sql(args[0], args[1].name, distinct=not node.meta.get(NAMES_OUTPUT))
    except DateFormatError as error:
        raise sql_error(str(error), args[1]) from None


def _regexp_extract(node: exp.RegexpExtract) -> exp.Expr:
    """Flink's ``REGEXP_EXTRACT(s, re[, i])``: group ``i`` of the first match, the whole match
    for ``i = 0`` (the default); NULL if nothing matches or there is no group ``i``.

    The pattern is wrapped in a group, so element 1 of ``regexp_match`` is the whole match and
    element ``i + 1`` group ``i`` (``regexp_match`` gives the whole match alone when a pattern
    has no group, so the pattern as written could not tell group 1 from the match)."""
    subject, pattern, group = node.this, node.expression, node.args.get("group")
    if isinstance(pattern, exp.Literal) and pattern.is_string:
        wrapped: exp.Expr = exp.Literal.string(f"({pattern.name})")
    else:
        parts = [exp.Literal.string("("), pattern.copy(), exp.Literal.string(")")]
        wrapped = exp.Anonymous(this="concat", expressions=parts)
    index: exp.Expr = exp.Literal.number(1)
    if isinstance(group, exp.Literal) and group.is_int:
        index = exp.Literal.number(int(group.name) + 1)
    elif group is not None:
        index = exp.Add(this=exp.Paren(this=group.copy()), expression=exp.Literal.number(1))
    match = exp.Anonymous(this="regexp_match", expressions=[subject, wrapped])
    # offset=1: the index is 1-based already (Postgres' own offset would add one more)
    return exp.Bracket(this=exp.Paren(this=match), expressions=[index], offset=1)


_TEXT_TYPES = {exp.DType.TEXT, exp.DType.VARCHAR, exp.DType.CHAR, exp.DType.NVARCHAR}

# Flink's CAST(TIMESTAMP(p) AS STRING): 'yyyy-MM-dd HH:mm:ss' and, for p > 0, a dot and
# exactly p digits (a whole second of a TIMESTAMP(3) is '.000'); DataFusion prints a 'T',
# only the digits the value needs and, with a zone, a suffix. The digits follow the Arrow unit
# (s: 0, ms: 3, us: 6, ns: 9); TIMESTAMP(1) and (2) are stored in ms and print 3.
_CAST_TO_STRING = """CASE WHEN __x IS NULL THEN NULL
  WHEN arrow_typeof(__x) LIKE 'Timestamp(%' THEN CAST(concat(
    replace(substr(CAST(__x AS VARCHAR), 1, 19), 'T', ' '),
    CASE WHEN arrow_typeof(__x) LIKE 'Timestamp(s%' THEN '' ELSE concat('.', rpad(
      rtrim(split_part(ltrim(substr(CAST(__x AS VARCHAR), 20), '.'), '+', 1), 'Z'),
      CASE WHEN arrow_typeof(__x) LIKE 'Timestamp(ms%' THEN 3
           WHEN arrow_typeof(__x) LIKE 'Timestamp(ns%' THEN 9 ELSE 6 END, '0')) END) AS VARCHAR)
  ELSE CAST(__x AS VARCHAR) END"""
"""DataFusion prints ``yyyy-MM-ddTHH:mm:ss[.fff...][Z|+hh:mm]`` (years 0000-9999, as Flink's
TIMESTAMP): the first 19 characters with a space, then the fraction padded to the unit's digits,
the zone suffix dropped (a TIMESTAMP_LTZ prints in the session zone, UTC). Both branches are
VARCHAR (Utf8View): DataFusion 55 builds an invalid Utf8 array from a CASE that mixes Utf8 and
Utf8View branches over sorted rows (offsets past the end of an empty data buffer)."""


def _cast_to_string(node: exp.Cast) -> exp.Expr:
    """``CAST(x AS STRING)`` printing timestamps as Flink does; other types as DataFusion does.
    The type is tested at run time (``arrow_typeof``), so this holds for any ``x``."""
    template = sqlglot.parse_one(_CAST_TO_STRING, read="postgres")
    operand = node.this
    return template.transform(
        lambda n: operand.copy() if isinstance(n, exp.Column) and n.name == "__x" else n
    )


_DATE_PARTS: dict[type, str] = {
    exp.Hour: "hour",
    exp.Minute: "minute",
    exp.Second: "second",
    exp.DayOfMonth: "day",
    exp.Month: "month",
    exp.Year: "year",
    exp.DayOfYear: "doy",
}
_DATE_PART_NAMES = {"HOUR": "hour", "MINUTE": "minute", "SECOND": "second", "DAYOFMONTH": "day"}


class DataFusionSQL(Postgres):
    """Postgres as DataFusion reads it: ``TRY_CAST``, ``IGNORE NULLS`` and ``* EXCLUDE (c)``
    are kept."""

    class Generator(PostgresGenerator):
        STAR_EXCEPT = "EXCLUDE"
        TRANSFORMS: ClassVar = {
            **PostgresGenerator.TRANSFORMS,
            exp.TryCast: lambda self, e: f"TRY_CAST({self.sql(e, 'this')} AS {self.sql(e, 'to')})",
            exp.IgnoreNulls: lambda self, e: f"{self.sql(e, 'this')} IGNORE NULLS",
        }


_DATAFUSION = DataFusionSQL()


def _mark_named(tree: exp.Expr) -> exp.Expr:
    """``tree`` with every node of a SELECT with an unaliased projection marked
    :data:`NAMES_OUTPUT`: DataFusion names that output column after the expression's text (the
    key of each JSON record a sink writes), so DATE_FORMAT keeps its ``to_char`` form there
    (:func:`date_format_sql`). The whole SELECT is marked: DataFusion matches a projection with its GROUP BY (ORDER BY,
    HAVING) expression by text, so both keep one form."""
    for select in list(tree.find_all(exp.Select)):
        named = (e for e in select.expressions if not isinstance(e, exp.Alias | exp.Column))
        if any(not isinstance(e, exp.Star) for e in named):
            for node in select.walk():
                node.meta[NAMES_OUTPUT] = True
    return tree


def stateless_sql(select: exp.Select) -> tuple[str, str | None]:
    """A filter/projection's SQL for DataFusion, and the SQL that names its output (None: the
    first does). A SELECT with an unaliased computed output has DATE_FORMAT in its ``to_char``
    form (:func:`_mark_named`); with that output aliased by its position instead, DATE_FORMAT
    takes its cheaper path, and the columns get back the names DataFusion gives the first
    form, planned once (:func:`streamhouse.sql.execute.output_names`)."""
    plain = to_datafusion(select)
    aliased = select.copy()
    for i, output in enumerate(list(aliased.expressions)):
        if not isinstance(output, exp.Alias | exp.Column | exp.Star):
            output.replace(exp.alias_(output.copy(), f"__output_{i}"))
    cheap = to_datafusion(aliased)
    distinct = FORMAT_DISTINCT.upper()
    if distinct not in cheap.upper() or distinct in plain.upper():
        return plain, None
    return cheap, plain


def to_datafusion(expression: exp.Expr) -> str:
    """SQL text for DataFusion: Postgres-flavoured, identifiers quoted, Flink functions mapped."""
    tree = _mark_named(unnest_joins(expression.copy()))
    return _DATAFUSION.generate(tree.transform(_rewrite), identify=True)


register_duckdb_functions(register_function)
