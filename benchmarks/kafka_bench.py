"""Kafka protocol throughput and latency, StreamHouse against librdkafka's mock cluster.

    python benchmarks/kafka_bench.py [options]   # the same as: python -m benchmarks.log

Kept for the command people know; the benchmark lives in :mod:`benchmarks.log.kafka`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.log.kafka import main

    main()
