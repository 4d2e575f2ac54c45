"""Nexmark for StreamHouse: a deterministic event generator, the query files, a harness.

``python -m benchmarks.nexmark --bids N`` generates the events, loads them into the log and
runs the queries of ``queries/nexmark`` (see :mod:`benchmarks.nexmark.__main__`).

>>> q = nexmark_query("q2")
>>> q.blocked, q.select().split()[:3]
(None, ['SELECT', 'auction,', 'price'])
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from benchmarks.nexmark.generator import (
    STREAMS,
    LoadStats,
    NexmarkChunk,
    NexmarkConfig,
    NexmarkTables,
    generate,
    generate_tables,
    json_values,
    load,
    side_input_table,
)

__all__ = [
    "QUERIES",
    "QUERY_DIR",
    "STREAMS",
    "LoadStats",
    "NexmarkChunk",
    "NexmarkConfig",
    "NexmarkQuery",
    "NexmarkTables",
    "generate",
    "generate_tables",
    "json_values",
    "load",
    "nexmark_query",
    "side_input_table",
]

QUERY_DIR = Path(__file__).resolve().parents[2] / "queries" / "nexmark"
QUERIES = tuple(f"q{i}" for i in range(23))

_BLOCKED = "-- cannot run yet:"
_BLOCKED_BOUNDED = "-- cannot run bounded yet:"
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+\S+\s*", re.IGNORECASE | re.MULTILINE)
_STATEMENT_END = re.compile(r";[ \t]*(?:--[^\n]*)?(?:\n|$)")


@dataclass(frozen=True)
class NexmarkQuery:
    """One ``queries/nexmark/qN.sql`` file: its DDL, its continuous statement and its status.

    A file whose first line is ``-- cannot run yet: <reason>`` does not run as a continuous
    query today; a line ``-- cannot run bounded yet: <reason>`` (second) says the same of its
    SELECT run once through ``sh.sql``.
    """

    name: str
    path: Path

    @cached_property
    def text(self) -> str:
        return self.path.read_text()

    @property
    def blocked(self) -> str | None:
        """Why the query cannot run continuously yet, or None."""
        return self._status(_BLOCKED)

    @property
    def blocked_bounded(self) -> str | None:
        """Why its SELECT cannot run bounded (``sh.sql``) yet, or None."""
        return self._status(_BLOCKED_BOUNDED)

    def _status(self, prefix: str) -> str | None:
        for line in self.text.splitlines()[:2]:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        return None

    def statements(self) -> list[str]:
        """The file's statements, without their final semicolons (comment-only parts dropped)."""
        parts = _STATEMENT_END.split(self.text)
        return [p.strip() for p in parts if _code(p)]

    def ddl(self) -> list[str]:
        """Every statement but the ``INSERT INTO``: what must run before its SELECT."""
        return [s for s in self.statements() if not _INSERT.search(_code(s))]

    def select(self) -> str:
        """The query of the ``INSERT INTO sink SELECT ...`` statement, as written."""
        for statement in self.statements():
            code = _code(statement)
            if match := _INSERT.search(code):
                return code[match.end() :].strip()
        raise ValueError(f"{self.path} has no INSERT INTO statement")


def _code(text: str) -> str:
    """``text`` without its whole-line comments."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def nexmark_query(name: str) -> NexmarkQuery:
    """The query file ``queries/nexmark/<name>.sql``."""
    return NexmarkQuery(name, QUERY_DIR / f"{name}.sql")
