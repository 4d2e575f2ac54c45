"""One continuous Nexmark query in a process of its own, for counting its instructions apart
from start-up (imports, ``connect``) under callgrind.

Usage, from each tree compared (its ``PYTHONPATH``), after ``python -m compileall -q
streamhouse benchmarks`` so both read warm ``.pyc`` (this environment sets
PYTHONDONTWRITEBYTECODE, so otherwise every start compiles every module it imports)::

    python -m benchmarks.nexmark.instructions --data-dir D --load 217392   # once: the events
    valgrind --tool=callgrind python -m benchmarks.nexmark.instructions --data-dir COPY --query q8
    valgrind --tool=callgrind python -m benchmarks.nexmark.instructions --data-dir COPY

each over a fresh copy of ``D``. The second run (no ``--query``) is everything but the query;
the query's instructions are the difference of the two ``Collected`` totals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import streamhouse
from benchmarks.nexmark.generator import NexmarkConfig, load
from benchmarks.nexmark.runner import continuous, query_file, register_udfs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nexmark.instructions")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--load", type=int, help="generate this many events into --data-dir")
    parser.add_argument("--query", help="the query to run (none: start and stop alone)")
    args = parser.parse_args(argv)
    if args.load:
        with streamhouse.connect(args.data_dir) as sh:
            stats = load(sh, NexmarkConfig(events=args.load))
        json.dump({"rows": stats.rows}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    query = query_file(args.query) if args.query else None
    sh = streamhouse.connect(args.data_dir)
    try:
        register_udfs(sh)
        if query is not None:
            outcome = continuous(sh, query, "instructions")
            json.dump({k: v for k, v in outcome.items() if k != "table"}, sys.stdout)
            sys.stdout.write("\n")
    finally:
        sh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
