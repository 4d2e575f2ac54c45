"""Stream definitions from parsed DDL, as plain dataclasses the engine can use without sqlglot.

>>> from streamhouse.sql.parse import parse_one
>>> d = stream_definition(parse_one(
...     "CREATE STREAM clicks (user_id BIGINT, ts TIMESTAMP(3), "
...     "WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (topic='clicks-v1')"))
>>> (d.name, d.topic, d.format, d.watermark)
('clicks', 'clicks-v1', 'json', Watermark(column='ts', delay_ms=5000))

Type mapping (:func:`arrow_type`): ``TIMESTAMP(0)`` -> ``timestamp('s')``, ``TIMESTAMP(1..3)`` ->
``timestamp('ms')``, ``TIMESTAMP`` and ``TIMESTAMP(4..6)`` -> ``timestamp('us')`` (Flink's default
precision is 6), ``TIMESTAMP(7..9)`` -> ``timestamp('ns')``; ``TIMESTAMP_LTZ(p)`` and
``TIMESTAMP WITH [LOCAL] TIME ZONE`` are the same units with ``tz='UTC'``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import pyarrow as pa
from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.dialect import MetadataColumnConstraint, StreamHouse
from streamhouse.sql.parse import node_position

__all__ = [
    "Column",
    "StreamDef",
    "Watermark",
    "arrow_type",
    "interval_ms",
    "stream_definition",
]

logger = logging.getLogger(__name__)

UNIT_MS: dict[str, Decimal] = {
    "MICROSECOND": Decimal("0.001"),
    "MILLISECOND": Decimal(1),
    "SECOND": Decimal(1_000),
    "MINUTE": Decimal(60_000),
    "HOUR": Decimal(3_600_000),
    "DAY": Decimal(86_400_000),
    "WEEK": Decimal(7 * 86_400_000),
}
UNIT_ALIASES = {"US": "MICROSECOND", "MS": "MILLISECOND", "S": "SECOND", "SEC": "SECOND"}
UNIT_ALIASES |= {"MIN": "MINUTE", "H": "HOUR", "D": "DAY"}

# [-][D ]HH:MM[:SS[.fff]] or MM:SS[.fff] (the latter for MINUTE TO SECOND)
CLOCK_RE = re.compile(r"^(-)?(?:(\d+)\s+)?(\d+):(\d+)(?::(\d+(?:\.\d+)?))?$")
AMOUNT_UNIT_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]+)?\s*$")


@dataclass(frozen=True)
class Column:
    """A column of a stream: physical, computed (``expression``) or from metadata (``metadata``).

    A computed column's ``type`` is its CAST target if it is a CAST, else ``pa.null()``
    (decided by the planner).
    """

    name: str
    type: pa.DataType
    nullable: bool = True
    expression: str | None = None
    metadata: str | None = None

    @property
    def physical(self) -> bool:
        """True if the column is stored in the record value (neither computed nor metadata)."""
        return self.expression is None and self.metadata is None


@dataclass(frozen=True)
class Watermark:
    """``WATERMARK FOR column AS column - delay``: event time lags the max seen by ``delay_ms``."""

    column: str
    delay_ms: int


@dataclass(frozen=True)
class StreamDef:
    """A ``CREATE STREAM`` or Flink-style ``CREATE TABLE``; ``options`` keys are lower-cased."""

    name: str
    columns: tuple[Column, ...]
    watermark: Watermark | None = None
    options: dict[str, str] = field(default_factory=dict)
    primary_key: tuple[str, ...] = ()
    kind: str = "stream"
    if_not_exists: bool = False
    or_replace: bool = False

    def schema(self) -> pa.Schema:
        """The Arrow schema of the physical columns (not computed, not metadata)."""
        return pa.schema(
            [pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns if c.physical]
        )

    @property
    def topic(self) -> str:
        """The topic the stream reads: option ``topic``, else the stream's name."""
        return self.options.get("topic") or self.name

    @property
    def format(self) -> str:
        """The record value format: option ``format`` or ``value.format``, else ``json``."""
        return self.options.get("format") or self.options.get("value.format") or "json"


def _error(message: str, *nodes: exp.Expr | None) -> SqlError:
    """A SqlError at the first of ``nodes`` that has a position."""
    for node in nodes:
        line, column = node_position(node)
        if line is not None:
            return SqlError(message, line, column)
    return SqlError(message)


def _timestamp_unit(precision: int | None) -> str:
    if precision is None:
        return "us"
    if precision == 0:
        return "s"
    if precision <= 3:
        return "ms"
    return "us" if precision <= 6 else "ns"


def _params(sql_type: exp.DataType) -> list[int]:
    values: list[int] = []
    for param in sql_type.expressions:
        if isinstance(param, exp.DataTypeParam) and param.this.is_int:
            values.append(int(param.this.name))
    return values


SIMPLE_TYPES: dict[exp.DType, pa.DataType] = {
    exp.DType.BOOLEAN: pa.bool_(),
    exp.DType.TINYINT: pa.int8(),
    exp.DType.SMALLINT: pa.int16(),
    exp.DType.INT: pa.int32(),
    exp.DType.BIGINT: pa.int64(),
    exp.DType.FLOAT: pa.float32(),
    exp.DType.DOUBLE: pa.float64(),
    exp.DType.TEXT: pa.string(),
    exp.DType.VARCHAR: pa.string(),
    exp.DType.NVARCHAR: pa.string(),
    exp.DType.CHAR: pa.string(),
    exp.DType.NCHAR: pa.string(),
    exp.DType.BPCHAR: pa.string(),
    exp.DType.JSON: pa.string(),
    exp.DType.JSONB: pa.string(),
    exp.DType.BINARY: pa.binary(),
    exp.DType.VARBINARY: pa.binary(),
    exp.DType.DATE: pa.date32(),
}


def arrow_type(sql_type: exp.DataType) -> pa.DataType:
    """The Arrow type of a SQL type (see the module docstring); SqlError if there is none."""
    kind = sql_type.this
    if kind in SIMPLE_TYPES:
        return SIMPLE_TYPES[kind]
    params = _params(sql_type)
    precision = params[0] if params else None
    if kind == exp.DType.TIMESTAMP:
        return pa.timestamp(_timestamp_unit(precision))
    if kind in (exp.DType.TIMESTAMPLTZ, exp.DType.TIMESTAMPTZ):
        return pa.timestamp(_timestamp_unit(precision), tz="UTC")
    if kind == exp.DType.TIME:
        return pa.time32("ms") if precision is not None and precision <= 3 else pa.time64("us")
    if kind == exp.DType.DECIMAL:
        p = params[0] if params else 10  # Flink's DECIMAL is DECIMAL(10, 0)
        s = params[1] if len(params) > 1 else 0
        return pa.decimal128(p, s) if p <= 38 else pa.decimal256(p, s)
    if kind == exp.DType.ARRAY and len(sql_type.expressions) == 1:
        return pa.list_(arrow_type(sql_type.expressions[0]))
    if kind == exp.DType.MAP and len(sql_type.expressions) == 2:
        key, value = sql_type.expressions
        return pa.map_(arrow_type(key), arrow_type(value))
    if kind == exp.DType.STRUCT:
        fields = []
        for member in sql_type.expressions:
            if not isinstance(member, exp.ColumnDef) or not isinstance(
                member.args.get("kind"), exp.DataType
            ):
                raise _error("ROW fields need a name and a type", member, sql_type)
            fields.append(pa.field(member.name, arrow_type(member.args["kind"])))
        return pa.struct(fields)
    raise _error(f"unsupported column type {sql_type.sql(dialect=StreamHouse)}", sql_type)


def _interval_parts(expr: exp.Expr) -> list[exp.Interval]:
    if isinstance(expr, exp.Interval):
        return [expr]
    if isinstance(expr, exp.Add):
        return _interval_parts(expr.this) + _interval_parts(expr.expression)
    if isinstance(expr, exp.Paren):
        return _interval_parts(expr.this)
    raise _error(f"expected an INTERVAL, got {expr.sql(dialect=StreamHouse)}", expr)


def _clock_ms(text: str, unit: str | None, node: exp.Expr) -> Decimal:
    """``'HH:MM:SS'``, ``'D HH:MM:SS'`` or (for ``MINUTE [TO SECOND]``) ``'MM:SS'``."""
    match = CLOCK_RE.match(text.strip())
    if not match:
        raise _error(f"cannot read interval {text!r}", node)
    sign, days, first, second, third = match.groups()
    if third is None and unit and unit.startswith("MINUTE"):
        total = Decimal(first) * 60_000 + Decimal(second) * 1_000
    else:
        total = Decimal(first) * 3_600_000 + Decimal(second) * 60_000
        total += Decimal(third or 0) * 1_000
    total += Decimal(days or 0) * 86_400_000
    return -total if sign else total


def _single_interval_ms(interval: exp.Interval) -> Decimal:
    value = interval.this
    unit_node = interval.args.get("unit")
    if isinstance(unit_node, exp.IntervalSpan):
        unit: str | None = f"{unit_node.this.name.upper()} TO {unit_node.expression.name.upper()}"
    else:
        unit = unit_node.name.upper() if unit_node is not None else None
    if not isinstance(value, exp.Literal):
        raise _error("an interval needs a literal amount", interval)
    text = value.name
    if ":" in text:
        return _clock_ms(text, unit, interval)
    if unit is None:  # Postgres style: INTERVAL '5 seconds'
        match = AMOUNT_UNIT_RE.match(text)
        if not match or not match.group(2):
            raise _error(f"interval {text!r} has no unit", interval)
        text, unit = match.group(1), match.group(2).upper()
    unit = UNIT_ALIASES.get(unit, unit)
    if unit.endswith("S") and unit[:-1] in UNIT_MS:
        unit = unit[:-1]
    if unit not in UNIT_MS:
        raise _error(f"unsupported interval unit {unit} (use DAY, HOUR, MINUTE, SECOND)", interval)
    try:
        return Decimal(text) * UNIT_MS[unit]
    except InvalidOperation:
        raise _error(f"cannot read interval amount {text!r}", interval) from None


def interval_ms(expr: exp.Expr) -> int:
    """Milliseconds in an INTERVAL literal (or a sum of them); SqlError if not whole ms.

    >>> from streamhouse.sql.parse import parse_one
    >>> interval_ms(parse_one("SELECT INTERVAL '1.5' SECOND").expressions[0])
    1500
    """
    total = sum((_single_interval_ms(part) for part in _interval_parts(expr)), Decimal(0))
    if total != total.to_integral_value():
        raise _error("interval is not a whole number of milliseconds", expr)
    return int(total)


def _watermark(constraint: exp.WatermarkColumnConstraint) -> Watermark:
    column = constraint.this
    body = constraint.expression
    name = column.name
    if isinstance(body, exp.Column) and body.name == name:
        return Watermark(name, 0)
    if isinstance(body, exp.Sub) and isinstance(body.this, exp.Column) and body.this.name == name:
        delay = interval_ms(body.expression)
        if delay < 0:
            raise _error("watermark delay must not be negative", body.expression)
        return Watermark(name, delay)
    raise _error(
        f"unsupported watermark: use WATERMARK FOR {name} AS {name} - INTERVAL '<n>' <unit>",
        body,
        constraint,
    )


def _option_value(value: exp.Expr) -> str:
    if isinstance(value, exp.Boolean):
        return "true" if value.this else "false"
    if isinstance(value, exp.Literal | exp.Var | exp.Identifier | exp.Column):
        return value.name
    return value.sql(dialect=StreamHouse)


def _options(create: exp.Create) -> dict[str, str]:
    options: dict[str, str] = {}
    properties = create.args.get("properties")
    for prop in properties.expressions if properties else []:
        if type(prop) is not exp.Property:
            raise _error(f"unsupported clause {prop.sql(dialect=StreamHouse)}", prop, create)
        options[prop.name.lower()] = _option_value(prop.args["value"])
    return options


def _column(coldef: exp.ColumnDef) -> Column:
    name = coldef.name
    kind = coldef.args.get("kind")
    nullable = True
    expression = metadata = None
    for constraint in coldef.constraints:
        ckind = constraint.kind
        if isinstance(ckind, exp.NotNullColumnConstraint):
            nullable = bool(ckind.args.get("allow_null"))
        elif isinstance(ckind, exp.ComputedColumnConstraint):
            expression = ckind.this.sql(dialect=StreamHouse)
            if kind is None and isinstance(ckind.this, exp.Cast):
                kind = ckind.this.to
        elif isinstance(ckind, MetadataColumnConstraint):
            metadata = ckind.this.name if ckind.this else name
        elif isinstance(ckind, exp.PrimaryKeyColumnConstraint):
            nullable = False
        else:
            raise _error(f"unsupported column constraint {constraint.sql(StreamHouse)}", constraint)
    if kind is None and expression is None:
        raise _error(f"column {name} needs a type", coldef)
    try:
        arrow = arrow_type(kind) if isinstance(kind, exp.DataType) else pa.null()
    except SqlError as error:
        if error.line is not None:
            raise
        raise _error(f"column {name}: {error.message}", coldef) from None
    return Column(name, arrow, nullable, expression, metadata)


def _key_names(key: exp.Expr) -> tuple[str, ...]:
    names = []
    for part in key.expressions:
        names.append(part.this.name if isinstance(part, exp.Ordered) else part.name)
    return tuple(names)


def stream_definition(expr: exp.Expr) -> StreamDef:
    """The :class:`StreamDef` of a parsed ``CREATE STREAM`` / ``CREATE TABLE (...)``."""
    if not (
        isinstance(expr, exp.Create)
        and expr.kind in ("STREAM", "TABLE")
        and isinstance(expr.this, exp.Schema)
        and expr.expression is None
    ):
        raise _error("expected CREATE STREAM or CREATE TABLE with a column list", expr)
    schema = expr.this
    columns: list[Column] = []
    watermark: Watermark | None = None
    primary_key: tuple[str, ...] = ()
    inline_key: list[str] = []
    for item in schema.expressions:
        if isinstance(item, exp.ColumnDef):
            columns.append(_column(item))
            if any(isinstance(c.kind, exp.PrimaryKeyColumnConstraint) for c in item.constraints):
                inline_key.append(item.name)
        elif isinstance(item, exp.WatermarkColumnConstraint):
            if watermark is not None:
                raise _error("a stream has at most one WATERMARK", item)
            watermark = _watermark(item)
        elif isinstance(item, exp.PrimaryKey):
            primary_key = _key_names(item)
        else:
            raise _error(f"unsupported table element {item.sql(StreamHouse)}", item)
    names = [c.name for c in columns]
    if primary_key and inline_key:
        raise _error("declare the primary key once", schema)
    primary_key = primary_key or tuple(inline_key)
    for name in primary_key:
        if name not in names:
            raise _error(f"primary key column {name} is not a column", schema)
    if primary_key:
        columns = [
            Column(c.name, c.type, False, c.expression, c.metadata) if c.name in primary_key else c
            for c in columns
        ]
    if watermark is not None and watermark.column not in names:
        raise _error(f"watermark column {watermark.column} is not a column", schema)
    if watermark is not None and any(
        c.name == watermark.column and (c.expression or "").replace(" ", "").upper() == "PROCTIME()"
        for c in columns
    ):
        raise _error(
            f"a WATERMARK cannot be declared on the processing-time column {watermark.column}"
            " (PROCTIME()): declare it on an event-time column",
            schema,
        )
    if len(set(names)) != len(names):
        raise _error("duplicate column name", schema)
    definition = StreamDef(
        name=schema.this.name,
        columns=tuple(columns),
        watermark=watermark,
        options=_options(expr),
        primary_key=primary_key,
        kind=expr.kind.lower(),
        if_not_exists=bool(expr.args.get("exists")),
        or_replace=bool(expr.args.get("replace")),
    )
    logger.debug("stream definition %s", definition)
    return definition
