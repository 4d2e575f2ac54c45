"""``EXPLAIN`` of every Nexmark query file, to compare the plans of two commits.

``python -m benchmarks.nexmark.plans [--out FILE]`` prints (or writes) one section per query
(``queries/nexmark/qN.sql`` and the benchmark's own ``tumble``, ``hop``, ``session``): the
``EXPLAIN`` of its ``INSERT INTO`` statement over a fresh data directory holding its DDL. Run
it with ``PYTHONPATH`` pointing at each commit's tree and diff the two outputs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import streamhouse
from benchmarks.nexmark import QUERIES
from benchmarks.nexmark.runner import query_file
from benchmarks.nexmark.udfs import register as register_udfs

BENCH_QUERIES = ("tumble", "hop", "session")


def explain(name: str) -> str:
    """The ``EXPLAIN`` of one query file's continuous statement (or why it cannot run)."""
    query = query_file(name)
    with tempfile.TemporaryDirectory() as data_dir:
        sh = streamhouse.connect(data_dir)
        try:
            register_udfs(sh)
            for statement in query.ddl():
                sh.sql(statement)
            insert = next(s for s in query.statements() if s not in query.ddl())
            try:
                lines = sh.sql(f"EXPLAIN {insert}").to_arrow_table().column("plan")
            except streamhouse.StreamHouseError as exc:
                return f"error: {exc}"
            return "\n".join(lines.to_pylist())
        finally:
            sh.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write here instead of stdout")
    parser.add_argument("--queries", help="comma-separated names (default: every query file)")
    args = parser.parse_args()
    names = args.queries.split(",") if args.queries else [*QUERIES, *BENCH_QUERIES]
    text = "".join(f"== {name}\n{explain(name)}\n" for name in names)
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
