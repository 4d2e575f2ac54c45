"""Session-scoped objects: ``CREATE TEMPORARY STREAM | TABLE | VIEW``.

A temporary object lives as long as its session (a ``StreamHouse`` connection, one CLI
invocation, one ``.sql`` file of a continuous query) and is never written to the catalog.
It shadows nothing: a temporary object named like a catalog object (or like another temporary
object of the session) is refused, as Flink refuses a temporary table that exists already.
A continuous query's session starts from its connection's temporary objects; what its file
declares stays in the query's session.

>>> from streamhouse.sql.parse import parse_one
>>> statement = parse_one("CREATE TEMPORARY VIEW v AS SELECT 1 AS a")
>>> is_temporary(statement), without_temporary(statement).sql()
(True, 'CREATE VIEW v AS SELECT 1 AS a')
"""

from __future__ import annotations

import time

from sqlglot import exp

from streamhouse.log.metadata import CatalogEntry

__all__ = ["TemporaryObjects", "is_temporary", "without_temporary"]


def is_temporary(statement: exp.Expr) -> bool:
    """Whether a ``CREATE`` or ``DROP`` names a temporary object."""
    if isinstance(statement, exp.Drop):
        return bool(statement.args.get("temporary"))
    properties = statement.args.get("properties")
    return properties is not None and any(
        isinstance(p, exp.TemporaryProperty) for p in properties.expressions
    )


def without_temporary(statement: exp.Create) -> exp.Create:
    """A copy of ``statement`` without its ``TEMPORARY``: the definition the session keeps,
    read back as the catalog's definitions are."""
    copy = statement.copy()
    properties = copy.args.get("properties")
    if properties is not None:
        for prop in list(properties.expressions):
            if isinstance(prop, exp.TemporaryProperty):
                prop.pop()
        if not properties.expressions:
            copy.set("properties", None)
    return copy


class TemporaryObjects:
    """The temporary objects of one session, by name (case-sensitive, as the catalog)."""

    def __init__(self, entries: dict[str, CatalogEntry] | None = None) -> None:
        self._entries: dict[str, CatalogEntry] = dict(entries or {})

    def get(self, name: str) -> CatalogEntry | None:
        return self._entries.get(name)

    def put(self, name: str, kind: str, sql: str) -> None:
        self._entries[name] = CatalogEntry(name, kind, sql, int(time.time() * 1000))

    def drop(self, name: str) -> bool:
        return self._entries.pop(name, None) is not None

    def entries(self) -> list[CatalogEntry]:
        return sorted(self._entries.values(), key=lambda e: e.name)

    def child(self) -> TemporaryObjects:
        """A session that sees this one's objects as they are now; what it declares or
        drops stays its own."""
        return TemporaryObjects(self._entries)
