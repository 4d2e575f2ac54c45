"""Lookup joins against the real PostgreSQL (``'connector'='jdbc'``): answers equal DuckDB's
join over the same rows, one ``= ANY`` query per micro-batch for the keys the cache lacks,
LRU and TTL eviction, and a database that goes away."""

from __future__ import annotations

import random

import duckdb
import psycopg
import pyarrow as pa
import pytest

from streamhouse.errors import ConfigError
from streamhouse.joins.lookup import JdbcLookupOptions, LookupError, LookupJoin, PostgresLookup
from streamhouse.sql.ddl import stream_definition
from streamhouse.sql.parse import parse_one

DIM_SCHEMA = pa.schema([("k", pa.int64()), ("name", pa.string()), ("price", pa.float64())])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dim_url(postgres_url: str) -> str:
    """A schema holding ``dim``: keys 0..499 (none for multiples of 7)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE dim (k BIGINT PRIMARY KEY, name TEXT, price DOUBLE PRECISION)")
        with conn.cursor().copy("COPY dim (k, name, price) FROM STDIN") as copy:
            for k in range(500):
                if k % 7:
                    copy.write_row((k, f"n{k}" if k % 5 else None, k * 1.5))
    return postgres_url


def lookup_join(
    url: str, left: bool = False, clock: Clock | None = None, **options: str
) -> LookupJoin:
    opts = JdbcLookupOptions.from_options(
        {"connector": "jdbc", "url": url, "table-name": "dim", **options}
    )
    source = PostgresLookup(opts, DIM_SCHEMA, "k", retry_delay=0.01, connect_timeout=2)
    return LookupJoin(source, "k", left=left, prefix="d_", clock=clock or Clock())


def probe_batches(seed: int, rows: int = 3000) -> list[pa.Table]:
    rng = random.Random(seed)
    keys = [rng.randrange(-20, 600) if rng.random() > 0.02 else None for _ in range(rows)]
    table = pa.table({"id": list(range(rows)), "k": keys})
    cuts = sorted(rng.sample(range(1, rows), 9))
    return [table.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, rows], strict=True)]


def oracle(url: str, probe: pa.Table, side: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        dim = pa.Table.from_pylist(
            [
                dict(zip(DIM_SCHEMA.names, r, strict=True))
                for r in conn.execute("SELECT * FROM dim")
            ],
            schema=DIM_SCHEMA,
        )
    db = duckdb.connect()
    db.register("probe", probe)
    db.register("dim", dim)
    return db.execute(
        f"SELECT p.id, p.k, d.k, d.name, d.price FROM probe p {side} JOIN dim d ON p.k = d.k"
        " ORDER BY p.id"
    ).fetchall()


def joined_rows(out: pa.Table) -> list[tuple]:
    cols = ["id", "k", "d_k", "d_name", "d_price"]
    return sorted(zip(*(out.column(c).to_pylist() for c in cols), strict=True))


@pytest.mark.parametrize("side", ["INNER", "LEFT"])
@pytest.mark.parametrize("cached", [True, False])
def test_lookup_join_equals_duckdb_over_random_batches(
    dim_url: str, side: str, cached: bool
) -> None:
    options = {"lookup.cache.max-rows": "10000", "lookup.cache.ttl": "1 min"} if cached else {}
    join = lookup_join(dim_url, left=side == "LEFT", **options)
    batches = probe_batches(seed=len(side) + cached)
    out = pa.concat_tables([join.join(b) for b in batches])
    assert joined_rows(out) == sorted(oracle(dim_url, pa.concat_tables(batches), side))
    assert join.lookups == len(batches)  # one query per micro-batch
    if cached:  # every distinct key asked once, then served from the cache
        distinct = {k for b in batches for k in b.column("k").to_pylist() if k is not None}
        assert join.looked_up_keys == len(distinct)
        again = pa.concat_tables([join.join(b) for b in batches])
        assert join.lookups == len(batches)
        assert joined_rows(again) == joined_rows(out)


def test_cache_ttl_and_max_rows(dim_url: str) -> None:
    clock = Clock()
    join = lookup_join(
        dim_url, clock=clock, **{"lookup.cache.max-rows": "50", "lookup.cache.ttl": "10 s"}
    )
    probe = pa.table({"id": [1, 2], "k": [1, 2]})
    assert join.join(probe).column("d_price").to_pylist() == [1.5, 3.0]
    with psycopg.connect(dim_url, autocommit=True) as conn:
        conn.execute("UPDATE dim SET price = -1 WHERE k = 1")
    clock.now += 9
    assert join.join(probe).column("d_price").to_pylist() == [1.5, 3.0]  # cached
    assert join.lookups == 1
    clock.now += 2
    assert join.join(probe).column("d_price").to_pylist() == [-1.0, 3.0]  # expired: reloaded
    assert join.lookups == 2
    ids = lambda keys: pa.table({"id": keys, "k": keys})  # noqa: E731
    join.join(ids(list(range(50))))  # fills the cache: 50 rows
    join.join(ids(list(range(10))))  # 0..9 used again: the most recent
    join.join(ids(list(range(100, 140))))  # 40 new: 10..49 go, least recently used
    assert len(join.cache) == 50
    lookups = join.lookups
    assert join.join(ids(list(range(10)))).column("d_k").to_pylist() == [1, 2, 3, 4, 5, 6, 8, 9]
    assert join.lookups == lookups  # 0..9 (7 a cached absence) still cached
    join.join(ids([10]))
    assert join.lookups == lookups + 1  # 10 was evicted


def test_reconnects_after_the_connection_is_killed(dim_url: str) -> None:
    join = lookup_join(dim_url)
    assert join.join(pa.table({"id": [1], "k": [3]})).num_rows == 1
    pid = join.source.connection.info.backend_pid
    with psycopg.connect(dim_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert join.join(pa.table({"id": [1], "k": [4]})).column("d_k").to_pylist() == [4]


@pytest.mark.parametrize("left", [False, True])
def test_a_database_that_is_gone_is_an_error_not_a_row(left: bool) -> None:
    url = "postgresql://postgres@127.0.0.1:1/none"  # nothing listens on port 1
    join = lookup_join(url, left=left, **{"lookup.max-retries": "2"})
    with pytest.raises(LookupError, match=r"dim: the database did not answer after 3 attempts"):
        join.join(pa.table({"id": [1], "k": [3]}))


def test_options_from_create_table() -> None:
    definition = stream_definition(
        parse_one(
            "CREATE TABLE dim (k BIGINT, name STRING, PRIMARY KEY (k) NOT ENFORCED) WITH ("
            "'connector'='jdbc', 'url'='jdbc:postgresql://h:5432/db', 'table-name'='public.dim',"
            " 'lookup.cache.max-rows'='5000', 'lookup.cache.ttl'='10min')"
        )
    )
    options = JdbcLookupOptions.from_options(definition.options)
    assert (options.url, options.table_name) == ("postgresql://h:5432/db", "public.dim")
    assert (options.cache_max_rows, options.cache_ttl_seconds) == (5000, 600.0)
    with pytest.raises(ConfigError, match="lookup.cache.ttl"):
        JdbcLookupOptions.from_options({**definition.options, "lookup.cache.ttl": "soon"})
    with pytest.raises(ConfigError, match="unsupported jdbc option"):
        JdbcLookupOptions.from_options({**definition.options, "lookup.async": "true"})


def test_string_keys_with_quotes_commas_and_backslashes(postgres_url: str) -> None:
    keys = ["a", "b,c", 'q"x', "back\\slash", "NULL", "", "{}", "line\nbreak", " sp ", "é"]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE sdim (k TEXT PRIMARY KEY, v INT)")
        for i, k in enumerate(keys[:-2]):
            conn.execute("INSERT INTO sdim VALUES (%s, %s)", (k, i))
        dim = pa.table(
            list(zip(*conn.execute("SELECT k, v FROM sdim").fetchall(), strict=True)),
            names=["k", "v"],
        )
    schema = pa.schema([("k", pa.string()), ("v", pa.int32())])
    opts = JdbcLookupOptions.from_options(
        {"connector": "jdbc", "url": postgres_url, "table-name": "sdim"}
    )
    join = LookupJoin(PostgresLookup(opts, schema, "k"), "k", left=True, prefix="d_")
    probe = pa.table({"id": list(range(len(keys) + 1)), "k": [*keys, None]})
    out = join.join(probe)
    db = duckdb.connect()
    db.register("probe", probe)
    db.register("dim", dim)
    expected = db.execute(
        "SELECT p.id, p.k, d.k, d.v FROM probe p LEFT JOIN dim d ON p.k = d.k ORDER BY p.id"
    ).fetchall()
    cols = ["id", "k", "d_k", "d_v"]
    assert list(zip(*(out.column(c).to_pylist() for c in cols), strict=True)) == expected


def test_sql_lookup_table_has_no_topic_and_event_time_is_refused(tmp_path, dim_url: str) -> None:
    import streamhouse
    from streamhouse.errors import SqlError

    with streamhouse.connect(tmp_path) as sh:
        sh.sql(
            "CREATE TABLE dim (k BIGINT, name STRING, price DOUBLE, PRIMARY KEY (k) NOT ENFORCED)"
            f" WITH ('connector'='jdbc', 'url'='{dim_url}', 'table-name'='dim',"
            " 'lookup.cache.max-rows'='100', 'lookup.cache.ttl'='10 s')"
        ).to_arrow_table()
        assert sh.log.get_topic("dim") is None  # an external table, not a topic
        with pytest.raises(SqlError, match=r"lookup table bad: .*'lookup.cache.ttl'='soon'"):
            sh.sql(
                "CREATE TABLE bad (k BIGINT) WITH ('connector'='jdbc', 'url'='postgresql://h/d',"
                " 'table-name'='t', 'lookup.cache.max-rows'='1', 'lookup.cache.ttl'='soon')"
            )
        assert sh.log.metadata.get_catalog("bad") is None
        sh.sql("CREATE STREAM s (id BIGINT, k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)")
        with pytest.raises(SqlError, match="takes a PROCTIME.. column of s, not ts"):
            sh.sql(
                "SELECT s.id, dim.name FROM s JOIN dim FOR SYSTEM_TIME AS OF s.ts ON s.k = dim.k"
            ).to_arrow_table()


def test_matches_feed_the_bounded_join_as_the_engine_runs_it(dim_url: str) -> None:
    """The bounded SQL path (``Engine._lookup``): matches -> temporal_inputs -> run_sql."""
    from streamhouse.joins.temporal import temporal_inputs
    from streamhouse.sql.execute import run_sql
    from streamhouse.sql.nodes import ROW

    join = lookup_join(dim_url)
    probes = pa.concat_tables(probe_batches(seed=7))
    rows, at = join.matches(probes)
    assert join.lookups == 1
    left, right = temporal_inputs(probes, rows, at.fill_null(-1).to_numpy())
    out = run_sql(
        f"SELECT l.id, l.k, r.k AS d_k, r.name AS d_name, r.price AS d_price FROM __left l"
        f' LEFT JOIN __right r ON l."{ROW}" = r."{ROW}"',
        {"__left": left, "__right": right},
        ordered=False,
    )
    assert joined_rows(out) == sorted(oracle(dim_url, probes, "LEFT"))


LOOKUP_SQL = (
    "SELECT s.id, s.k, dim.k AS d_k, dim.name AS d_name, dim.price AS d_price{extra}"
    " FROM s {side} JOIN dim FOR SYSTEM_TIME AS OF s.p ON s.k = dim.k"
)


@pytest.mark.parametrize("side", ["INNER", "LEFT"])
def test_sql_lookup_join_over_proctime_equals_duckdb(tmp_path, dim_url: str, side: str) -> None:
    """``JOIN dim FOR SYSTEM_TIME AS OF s.p`` with ``p AS PROCTIME()``, from ``sh.sql`` and
    from a ``streamhouse query`` subprocess: DuckDB's join over the same rows; ``p`` is the
    wall clock while the query ran."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import streamhouse
    from streamhouse.sql.computed import PROCTIME_TYPE, wall_clock_ms

    batches = probe_batches(seed=len(side), rows=600)
    probe = pa.concat_tables(batches)
    want = oracle(dim_url, probe, side)
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.sql(
            "CREATE TABLE dim (k BIGINT, name STRING, price DOUBLE, PRIMARY KEY (k) NOT ENFORCED)"
            f" WITH ('connector'='jdbc', 'url'='{dim_url}', 'table-name'='dim',"
            " 'lookup.cache.max-rows'='1000', 'lookup.cache.ttl'='1 min')"
        )
        sh.sql("CREATE STREAM s (id BIGINT, k BIGINT, p AS PROCTIME()) WITH (topic = 's')")
        for batch in batches:
            sh.produce("s", batch.to_pylist())
        before = wall_clock_ms()
        table = sh.sql(LOOKUP_SQL.format(side=side, extra=", s.p")).to_arrow_table()
        after = wall_clock_ms()
    assert table.schema.field("p").type == PROCTIME_TYPE
    assert all(before <= t.value <= after for t in table.column("p"))
    assert sorted(zip(*table.drop_columns(["p"]).to_pydict().values(), strict=True)) == want

    root = Path(streamhouse.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    cli = subprocess.run(
        [sys.executable, "-m", "streamhouse", "query", LOOKUP_SQL.format(side=side, extra="")]
        + ["--format", "json", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    rows = [tuple(json.loads(line).values()) for line in cli.stdout.splitlines()]
    assert sorted(rows, key=lambda r: r[0]) == want


def test_sql_lookup_join_star(tmp_path, dim_url: str) -> None:
    import streamhouse

    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.sql(
            "CREATE TABLE dim (k BIGINT, name STRING, price DOUBLE, PRIMARY KEY (k) NOT ENFORCED)"
            f" WITH ('connector'='jdbc', 'url'='{dim_url}', 'table-name'='dim')"
        )
        sh.sql("CREATE STREAM s (id BIGINT, k BIGINT, p AS PROCTIME()) WITH (topic = 's')")
        sh.produce("s", [{"id": 1, "k": 3}, {"id": 2, "k": 7}, {"id": 3, "k": 10}])
        join = "FROM s JOIN dim FOR SYSTEM_TIME AS OF s.p ON s.k = dim.k"
        star = sh.sql(f"SELECT * {join}").to_arrow_table()
        assert star.column_names == ["id", "k", "p", "k", "name", "price"]
        assert sorted(
            (r[0], r[4], r[5]) for r in zip(*(c.to_pylist() for c in star.columns), strict=True)
        ) == [
            (1, "n3", 4.5),
            (3, None, 15.0),  # 7 is missing, 10 has no name
        ]


def test_rows_read_as_csv_equal_psycopgs_rows(postgres_url: str) -> None:
    """The CSV read (one text value per batch, parsed by Arrow) gives what psycopg's rows give:
    NULLs, empty strings, quotes, newlines, NaN and infinities, booleans."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE tdim (k BIGINT PRIMARY KEY, flag BOOLEAN, x DOUBLE PRECISION,"
            " y REAL, s TEXT, d DATE)"
        )
        rows = [
            (1, True, float("nan"), 1.5, "", "2024-01-02"),
            (2, False, float("inf"), None, None, None),
            (3, None, float("-inf"), -0.25, 'a "q",\nb', "2024-02-29"),
            (4, True, None, 3.0e38, "NULL", "1999-12-31"),
            (5, False, 0.1 + 0.2, 1e-7, "é\\", None),
        ]
        for row in rows:
            conn.execute("INSERT INTO tdim VALUES (%s, %s, %s, %s, %s, %s)", row)
    options = JdbcLookupOptions.from_options(
        {"connector": "jdbc", "url": postgres_url, "table-name": "tdim"}
    )
    fields = [("k", pa.int64()), ("flag", pa.bool_()), ("x", pa.float64())]
    schema = pa.schema([*fields, ("y", pa.float32()), ("s", pa.string())])
    keys = [pa.array([1, 2, 3, 4, 5, 6])]
    csv = PostgresLookup(options, schema, "k")
    plain = PostgresLookup(options, schema, "k")
    plain.csv_query = None
    assert csv.csv_query is not None
    got, want = csv.rows(keys).sort_by("k"), plain.rows(keys).sort_by("k")
    assert got.schema == want.schema
    assert repr(got.to_pylist()) == repr(want.to_pylist())  # (NaN != NaN: compared as text)
    assert got.column("s").to_pylist() == ["", None, 'a "q",\nb', "NULL", "é\\"]
    dated = PostgresLookup(options, pa.schema([("k", pa.int64()), ("d", pa.date32())]), "k")
    assert dated.csv_query is None  # a DATE's text depends on DateStyle: psycopg reads it
    assert dated.rows(keys).sort_by("k").column("d").to_pylist()[0].isoformat() == "2024-01-02"
    for source in (csv, plain, dated):
        source.close()
