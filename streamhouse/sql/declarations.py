"""How a declaration in a query file compares with the catalog's entry of the same name.

A query file carries its DDL, as a Flink job carries its ``CREATE TABLE`` statements: running
the file again must not fail on its own declarations. :func:`declaration_difference` says
whether a ``CREATE`` states what the catalog holds already (``None``) or how it differs.

>>> from streamhouse.sql.parse import parse_one
>>> stored = "CREATE STREAM s (a BIGINT) WITH (topic='s')"
>>> declaration_difference(stored, parse_one("CREATE STREAM s (a  BIGINT) WITH (topic = 's')"))
>>> declaration_difference(stored, parse_one("CREATE STREAM s (a STRING) WITH (topic='s')"))
'column a is BIGINT in the catalog, STRING in the file'
"""

from __future__ import annotations

from sqlglot import exp

from streamhouse.sql.ddl import Column, StreamDef, stream_definition
from streamhouse.sql.parse import DIALECT, parse_one

__all__ = ["created_name", "declaration_difference"]


def created_name(statement: exp.Create) -> str:
    """The name a ``CREATE`` statement declares."""
    target = statement.this
    return target.name if isinstance(target, exp.Table) else target.this.name


def _kind(statement: exp.Create) -> str:
    kind = (statement.args.get("kind") or "").lower()
    properties = statement.args.get("properties")
    if kind == "view" and properties is not None:
        materialized = any(isinstance(p, exp.MaterializedProperty) for p in properties.expressions)
        return "materialized view" if materialized else kind
    return kind


def _column_text(column: Column) -> str:
    if column.expression is not None:
        return f"AS {column.expression}"
    if column.metadata is not None:
        return f"METADATA {column.metadata}"
    return f"{column.type}{'' if column.nullable else ' NOT NULL'}"


def _sql_type(statement: exp.Create, column: str) -> str | None:
    for item in statement.this.expressions:
        if isinstance(item, exp.ColumnDef) and item.name == column and item.kind is not None:
            if item.kind.this == exp.DataType.Type.TEXT:
                return "STRING"  # STRING parses as TEXT; say it as Flink users write it
            return item.kind.sql(dialect=DIALECT)
    return None


def _stream_difference(
    old: StreamDef, new: StreamDef, old_sql: exp.Create, new_sql: exp.Create
) -> str | None:
    old_columns = {c.name: c for c in old.columns}
    new_columns = {c.name: c for c in new.columns}
    for name in old_columns.keys() - new_columns.keys():
        return f"column {name} is in the catalog, not in the file"
    for name in new_columns.keys() - old_columns.keys():
        return f"column {name} is in the file, not in the catalog"
    for name, column in old_columns.items():
        if column != new_columns[name]:
            old_text = _sql_type(old_sql, name) or _column_text(column)
            new_text = _sql_type(new_sql, name) or _column_text(new_columns[name])
            if old_text == new_text:
                old_text, new_text = _column_text(column), _column_text(new_columns[name])
            return f"column {name} is {old_text} in the catalog, {new_text} in the file"
    if [c.name for c in old.columns] != [c.name for c in new.columns]:
        return "the columns are in another order than in the catalog"
    if old.watermark != new.watermark:
        return f"the watermark is {old.watermark} in the catalog, {new.watermark} in the file"
    if old.primary_key != new.primary_key:
        return (
            f"the primary key is {old.primary_key or 'none'} in the catalog, "
            f"{new.primary_key or 'none'} in the file"
        )
    for option in sorted(old.options.keys() | new.options.keys()):
        before, after = old.options.get(option), new.options.get(option)
        if before != after:
            return f"option {option!r} is {before!r} in the catalog, {after!r} in the file"
    return None


def declaration_difference(stored_sql: str, statement: exp.Create) -> str | None:
    """``None`` if ``statement`` declares what ``stored_sql`` (the catalog's text) does, else
    the first difference, in words."""
    stored = parse_one(stored_sql)
    if not isinstance(stored, exp.Create):
        return "the catalog's entry is not a CREATE statement"
    old_kind, new_kind = _kind(stored), _kind(statement)
    if old_kind != new_kind:
        return f"it is a {old_kind} in the catalog, a {new_kind} in the file"
    if old_kind in ("stream", "table"):
        return _stream_difference(
            stream_definition(stored), stream_definition(statement), stored, statement
        )
    before, after = stored.expression, statement.expression
    if (before is None) != (after is None) or (
        before is not None and before.sql(dialect=DIALECT) != after.sql(dialect=DIALECT)
    ):
        return "its query differs from the catalog's"
    return None
