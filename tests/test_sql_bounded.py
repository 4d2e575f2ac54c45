"""Bounded SQL over the log, checked against DuckDB reading the very records that were stored.

DuckDB is the oracle: it reads the stored values (as a JSON-lines file) and the record metadata
(as an Arrow table) and runs the same query; the answers must agree.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import streamhouse
from streamhouse import SqlError, StreamHouse, UnknownStreamError

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
COUNTRIES = ["DE", "FR", "US", "BR", "JP"]
EVENT_TYPES = ["click", "view", "purchase", "share"]


def _events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(
            {
                "user_id": rng.randrange(40),
                "event_type": rng.choice(EVENT_TYPES),
                "amount": None if rng.random() < 0.1 else round(rng.uniform(0, 200), 2),
                "country": rng.choice(COUNTRIES),
                "ts_ms": BASE_MS + i * 997 + rng.randrange(500),
            }
        )
    return rows


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StreamHouse, Any]]:
    """A log with events (ISO timestamps), events_ms (epoch ms) and users, and a DuckDB
    connection holding tables of the same names built from the stored records."""
    root = tmp_path_factory.mktemp("sql")
    sh = streamhouse.connect(root / "data", linger_ms=1)
    rows = _events(3000, seed=1)
    sh.create_topic("events", partitions=4)
    sh.create_topic("events_ms", partitions=3)
    sh.create_topic("users", partitions=2)
    iso_rows = [
        {**{k: v for k, v in r.items() if k != "ts_ms"}, "ts": _iso(r["ts_ms"])} for r in rows
    ]
    ms_rows = [{**{k: v for k, v in r.items() if k != "ts_ms"}, "ts": r["ts_ms"]} for r in rows]
    for start in range(0, len(rows), 700):  # several produce calls: several objects
        part = slice(start, start + 700)
        sh.produce(
            "events",
            iso_rows[part],
            key=[f"user-{r['user_id']}" for r in iso_rows[part]],
            timestamp=[r["ts_ms"] for r in rows[part]],
        )
        sh.produce("events_ms", ms_rows[part], timestamp=[r["ts_ms"] for r in rows[part]])
    users = [
        {"user_id": u, "name": f"user {u}", "tier": ["free", "pro", "team"][u % 3]}
        for u in range(0, 50, 2)  # odd users have no profile: inner and outer joins differ
    ]
    sh.produce("users", users, key=[str(u["user_id"]) for u in users])
    sh.sql(
        "CREATE STREAM ev (user_id BIGINT, event_type STRING, amount DOUBLE, country STRING,"
        " ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)"
        " WITH (topic='events', format='json')"
    )
    sh.sql(
        "CREATE STREAM ev_ms (user_id BIGINT, event_type VARCHAR, amount DOUBLE,"
        " country VARCHAR, ts TIMESTAMP(3)) WITH (topic='events_ms', format='json')"
    )
    sh.sql("CREATE STREAM profiles (user_id BIGINT, name STRING, tier STRING) WITH (topic='users')")

    db = duckdb.connect()
    for topic, table, columns, ts_expr in [
        (
            "events",
            "ev",
            "user_id BIGINT, event_type VARCHAR, amount DOUBLE, country VARCHAR, ts VARCHAR",
            "CAST(ts AS TIMESTAMP)",
        ),
        (
            "events_ms",
            "ev_ms",
            "user_id BIGINT, event_type VARCHAR, amount DOUBLE, country VARCHAR, ts BIGINT",
            "epoch_ms(ts)",
        ),
        ("users", "profiles", "user_id BIGINT, name VARCHAR, tier VARCHAR", None),
    ]:
        stored = sh.fetch(topic)  # exactly what the log holds, in one order for both sides
        path = root / f"{topic}.jsonl"
        path.write_bytes(b"".join(v + b"\n" for v in stored["value"].to_pylist()))
        meta = pa.table(
            {
                "_offset": stored["offset"],
                "_partition": stored["partition"],
                "_timestamp": stored["timestamp"],
                "_key": stored["key"].cast(pa.string()),
            }
        )
        db.register(f"{table}_meta", meta)
        spec = ", ".join(f"'{c.split()[0]}': '{c.split()[1]}'" for c in columns.split(", "))
        cols = ", ".join(c.split()[0] for c in columns.split(", "))
        if ts_expr:
            cols = cols.replace("ts", f"{ts_expr} AS ts")
        db.execute(
            f"CREATE TABLE {table} AS SELECT {cols}, m.* FROM"
            f" read_json('{path}', format='newline_delimited', columns={{{spec}}})"
            f" POSITIONAL JOIN {table}_meta m"
        )
    # The plain topic, read with the schema DuckDB infers itself.
    db.execute(
        f"CREATE TABLE events AS SELECT * FROM read_json('{root / 'events.jsonl'}',"
        " format='newline_delimited')"
    )
    yield sh, db
    sh.close()


def _rows(table: Any) -> list[tuple[Any, ...]]:
    if isinstance(table, pa.Table):
        return [tuple(r.values()) for r in table.to_pylist()]
    return [tuple(r) for r in table]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def _assert_same(ours: list[tuple[Any, ...]], theirs: list[tuple[Any, ...]], sql: str) -> None:
    assert len(ours) == len(theirs), f"{sql}: {len(ours)} rows, DuckDB {len(theirs)}"
    for i, (x, y) in enumerate(zip(ours, theirs, strict=True)):
        assert len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y, strict=True)), (
            f"{sql}: row {i}: {x} != DuckDB {y}"
        )


QUERIES = [
    # filters and projections
    "SELECT user_id, event_type, amount FROM ev WHERE amount > 150 AND country = 'DE'"
    " ORDER BY user_id, amount, event_type",
    "SELECT user_id * 2 AS doubled, upper(event_type) AS kind, amount / 2 AS half FROM ev"
    " WHERE event_type IN ('share', 'purchase') AND amount IS NOT NULL ORDER BY ts",
    "SELECT count(*) FROM ev WHERE amount IS NULL",
    # GROUP BY with every common aggregate
    "SELECT country, count(*) AS n, count(amount) AS paid, sum(amount) AS total,"
    " avg(amount) AS mean, min(amount), max(amount), min(ts) AS first, max(ts) AS last"
    " FROM ev GROUP BY country ORDER BY country",
    "SELECT event_type, count(DISTINCT user_id) AS users FROM ev GROUP BY event_type"
    " HAVING count(*) > 10 ORDER BY users DESC, event_type",
    # ORDER BY and LIMIT
    "SELECT user_id, ts, amount FROM ev ORDER BY ts DESC LIMIT 7",
    "SELECT user_id, sum(amount) AS spent FROM ev GROUP BY user_id ORDER BY spent DESC, user_id LIMIT 5",
    # time: ISO strings and epoch millis read as the same timestamps
    "SELECT country, min(ts), max(ts), count(*) FROM ev_ms GROUP BY country ORDER BY country",
    "SELECT count(*) FROM ev_ms WHERE ts >= TIMESTAMP '2026-01-01 00:20:00'"
    " AND ts < TIMESTAMP '2026-01-01 00:30:00'",
    # joins between streams
    "SELECT p.tier, count(*) AS n, sum(e.amount) AS total FROM ev e"
    " JOIN profiles p ON e.user_id = p.user_id GROUP BY p.tier ORDER BY p.tier",
    "SELECT e.user_id, count(*) AS n, max(p.name) AS name FROM ev e"
    " LEFT JOIN profiles p ON e.user_id = p.user_id GROUP BY e.user_id ORDER BY e.user_id",
    "SELECT a.country, count(*) FROM ev a JOIN ev_ms b ON a.user_id = b.user_id AND a.ts = b.ts"
    " GROUP BY a.country ORDER BY a.country",
    # metadata columns
    "SELECT _partition, count(*), min(_offset), max(_offset) FROM ev GROUP BY _partition"
    " ORDER BY _partition",
    "SELECT _key, count(*) AS n FROM ev GROUP BY _key ORDER BY n DESC, _key LIMIT 10",
    "SELECT count(*) FROM ev WHERE _timestamp = ts",
    "SELECT _partition, _offset, user_id FROM ev WHERE _key = 'user-7' ORDER BY ts",
    # a CTE and a subquery
    "WITH spend AS (SELECT user_id, sum(amount) AS s FROM ev GROUP BY user_id)"
    " SELECT count(*) FROM spend WHERE s > (SELECT avg(s) FROM spend)",
]


@pytest.mark.parametrize("sql", QUERIES)
def test_answers_match_duckdb(world: tuple[StreamHouse, Any], sql: str) -> None:
    sh, db = world
    ours = _rows(sh.sql(sql).to_arrow_table())
    theirs = _rows(db.execute(sql).fetchall())
    assert ours, f"{sql}: no rows, the comparison would prove nothing"
    _assert_same(ours, theirs, sql)


def test_plain_topic_with_inferred_schema_matches_duckdb(world: tuple[StreamHouse, Any]) -> None:
    sh, db = world
    sql = (
        "SELECT country, event_type, count(*) AS n, sum(amount) AS total, max(user_id)"
        " FROM events GROUP BY country, event_type ORDER BY country, event_type"
    )
    _assert_same(_rows(sh.sql(sql).to_arrow_table()), _rows(db.execute(sql).fetchall()), sql)
    schema = sh.sql("SELECT * FROM events LIMIT 1").to_arrow_table().schema
    assert schema.field("user_id").type == pa.int64()
    assert schema.field("amount").type == pa.float64()
    assert schema.field("country").type == pa.string()
    # As in Flink, * is the value's columns; the metadata columns are there by name.
    assert not {"_offset", "_partition", "_timestamp", "_key"} & set(schema.names)
    named = sh.sql("SELECT user_id, _offset, _partition, _timestamp, _key FROM events LIMIT 1")
    assert {"_offset", "_partition", "_timestamp", "_key"} <= set(
        named.to_arrow_table().schema.names
    )


def test_timestamps_in_either_form_in_one_stream(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.create_topic("mixed")
        sh.produce(
            "mixed",
            [
                {"id": 1, "a": "2026-01-01T00:00:00.250", "b": BASE_MS + 1},
                {"id": 2, "a": BASE_MS + 2, "b": "2026-01-01 00:00:03"},
                {"id": 3, "a": "2026-01-01T01:00:00+01:00", "b": "2026-01-01T00:00:04Z"},
            ],
        )
        sh.sql("CREATE STREAM m (id INT, a TIMESTAMP(3), b TIMESTAMP(3)) WITH (topic='mixed')")
        relation = sh.sql("SELECT id, a, b FROM m ORDER BY id")
        at = dt.datetime(2026, 1, 1)
        assert relation.fetchall() == [
            (1, at + dt.timedelta(milliseconds=250), at + dt.timedelta(milliseconds=1)),
            (2, at + dt.timedelta(milliseconds=2), at + dt.timedelta(seconds=3)),
            (3, at, at + dt.timedelta(seconds=4)),
        ]
        assert relation.stats.rejected == []


def test_rows_that_do_not_fit_the_schema_are_reported(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.create_topic("orders", partitions=2)
        good = [{"id": i, "amount": i * 10.0} for i in range(6)]
        sh.produce("orders", good, partition=0)
        bad = sh.produce(
            "orders",
            [
                b'{"id": "seven", "amount": 1}',
                b"not json at all",
                b"[1, 2]",
                b'{"id": 8, "amount": 8}',
            ],
            partition=1,
        )
        first_bad, _ = bad.offsets[1]
        sh.sql("CREATE STREAM orders (id BIGINT, amount DOUBLE) WITH (topic='orders')")
        relation = sh.sql("SELECT id, amount, _partition, _offset FROM orders ORDER BY id")
        assert relation.fetchall() == [(i, i * 10.0, 0, i) for i in range(6)] + [(8, 8.0, 1, 3)]
        rejected = relation.stats.rejected
        assert [(r.topic, r.partition, r.offset) for r in rejected] == [
            ("orders", 1, first_bad),
            ("orders", 1, first_bad + 1),
            ("orders", 1, first_bad + 2),
        ]
        assert all(r.reason for r in rejected)
        # Aggregates still answer over the rows that fit.
        assert sh.sql("SELECT count(id), sum(amount) FROM orders").fetchall() == [(7, 158.0)]
        # Nothing was lost: the log still holds every record as produced.
        assert sh.fetch("orders", 1)["value"].to_pylist()[1] == b"not json at all"


@pytest.mark.parametrize(
    ("sql", "line", "column", "text"),
    [
        ("SELECT a,\n  count(*\nFROM t", 3, 1, "Expecting )"),
        ("SELEC a FROM t", 1, 1, "SELEC"),
        ("SELECT a FROM t\nWHERE a = = 1", 2, 11, ""),
        ("SELECT 'unterminated FROM t", 1, 8, ""),
    ],
)
def test_malformed_sql_reports_line_and_column(
    world: tuple[StreamHouse, Any], sql: str, line: int, column: int, text: str
) -> None:
    sh, _ = world
    with pytest.raises(SqlError) as err:
        sh.sql(sql).to_arrow_table()
    assert (err.value.line, err.value.column) == (line, column), str(err.value)
    assert f"(line {line}, column {column})" in str(err.value)
    assert text in str(err.value)


def test_unknown_names_are_reported_where_they_appear(world: tuple[StreamHouse, Any]) -> None:
    sh, _ = world
    with pytest.raises(UnknownStreamError, match=r"'nowhere' \(line 2, column 8\)"):
        sh.sql("SELECT *\n  FROM nowhere")
    with pytest.raises(UnknownStreamError, match="'gone'"):
        sh.sql("DROP STREAM gone")
    with pytest.raises(SqlError, match=r"no_such_column.*\(line 1, column 8\)"):
        sh.sql("SELECT no_such_column FROM ev").to_arrow_table()


def test_two_sessions_declaring_one_stream_at_once_both_succeed(tmp_path: Path) -> None:
    """`CREATE STREAM IF NOT EXISTS` from two sessions at the same moment (two query files of
    one launch, or two tasks) declares it once and answers both; neither loses the race."""
    import threading

    sessions = [streamhouse.connect(tmp_path), streamhouse.connect(tmp_path)]
    errors: list[BaseException] = []
    for i in range(10):
        barrier = threading.Barrier(len(sessions))

        def declare(session: StreamHouse, i: int = i, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                session.sql(f"CREATE STREAM IF NOT EXISTS s{i} (k STRING, v BIGINT)")
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=declare, args=(s,)) for s in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    names = sorted(topic.name for topic in sessions[0].topics())
    assert names == sorted(f"s{i}" for i in range(10))
    declared = sessions[1].sql("SHOW STREAMS").to_arrow_table().column(0).to_pylist()
    assert sorted(declared) == names
