"""The roadmap's pathological topic: 10,000 partitions created, produced to (every partition),
fetched from, listed and read by SQL through one ``serve`` on PostgreSQL metadata
(``benchmarks/metadata/partitions.py`` measures the same run against the issue's targets)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.metadata.partitions import run


def test_a_topic_of_10000_partitions_end_to_end(tmp_path: Path, postgres_url: str) -> None:
    result = run(tmp_path / "data", postgres_url, 10_000)
    assert result["fetched_partitions"] == 10_000  # run() checked every value too
    assert result["sql_distinct_partitions"] == 10_000
    assert result["create_s"] < 10.0
    assert result["metadata_ms"] < 1000.0  # the target is 200 ms: see benchmarks/README.md
