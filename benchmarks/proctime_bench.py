"""Processing-time windows (issue 24): how long after its end on the wall clock a window's
row reaches the caller.

``python benchmarks/proctime_bench.py [--seconds 30] [--window-ms 250] [--every-ms 50]
[--out benchmarks/results/proctime_fire.json]``: a continuous ``TUMBLE`` over a
``PROCTIME()`` column, one record produced every ``--every-ms`` through the Python API, each
window's row timed from its ``window_end`` to the ``on_results`` callback; p50, p99 and max
over the windows (target: within 100 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import streamhouse

QUERY = """SET 'poll-interval' = '5 s';
INSERT INTO fired SELECT k, window_start, window_end, COUNT(*) AS n
FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(p), INTERVAL '{window_ms}' MILLISECOND))
GROUP BY k, window_start, window_end"""


def measure(seconds: float, window_ms: int, every_ms: int) -> dict:
    latencies: list[float] = []

    def on_results(table) -> None:
        now = time.time()
        for end in table.column("window_end").to_pylist():
            latencies.append((now - end.timestamp()) * 1000)

    with tempfile.TemporaryDirectory() as data, streamhouse.connect(Path(data)) as sh:
        sh.sql("CREATE STREAM ev (k STRING, v BIGINT, p AS PROCTIME()) WITH (topic = 'ev')")
        query = sh.start(QUERY.format(window_ms=window_ms), name="fire", on_results=on_results)
        try:
            deadline = time.monotonic() + seconds
            sent = 0
            while time.monotonic() < deadline:
                sh.produce("ev", [{"k": "a", "v": sent}])
                sent += 1
                time.sleep(every_ms / 1000)
            time.sleep(2 * window_ms / 1000 + 0.5)  # the last window fires
        finally:
            query.stop()
    values = np.array(latencies)
    return {
        "windows": len(values),
        "records": sent,
        "window_ms": window_ms,
        "every_ms": every_ms,
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
        "max_ms": round(float(values.max()), 1),
        "min_ms": round(float(values.min()), 1),
        "load_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--window-ms", type=int, default=250)
    parser.add_argument("--every-ms", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.seconds, args.window_ms, args.every_ms)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)  # noqa: T201 - a benchmark's report


if __name__ == "__main__":
    main()
