"""The StreamHouse SQL dialect: parsing, round trips, DDL definitions, intervals, windows, errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.ddl import Column, StreamDef, Watermark, arrow_type, interval_ms
from streamhouse.sql.ddl import stream_definition as define
from streamhouse.sql.dialect import Explain, StreamHouse, TableArgument
from streamhouse.sql.parse import parse, parse_one
from streamhouse.sql.window_spec import WindowKind, WindowSpec, find_window

FIXTURES = Path(__file__).parent / "fixtures" / "sql" / "dialect.sql"
EXPECTED = "-- expected:"


def load_cases() -> list[tuple[str, str]]:
    """(input, expected output) pairs from the fixture file."""
    cases = []
    for block in FIXTURES.read_text().split("\n\n"):
        lines = [line for line in block.strip().splitlines() if line.strip()]
        lines = [line for line in lines if line == EXPECTED or not line.startswith("--")]
        if not lines:
            continue
        if EXPECTED in lines:
            cut = lines.index(EXPECTED)
            cases.append(("\n".join(lines[:cut]), "\n".join(lines[cut + 1 :])))
        else:
            text = "\n".join(lines)
            cases.append((text, text))
    return cases


@pytest.mark.parametrize(("sql", "expected"), load_cases())
def test_round_trip(sql: str, expected: str) -> None:
    printed = parse_one(sql).sql(dialect=StreamHouse)
    assert printed == expected
    assert parse_one(printed).sql(dialect=StreamHouse) == printed


def test_fixture_file_has_cases() -> None:
    assert len(load_cases()) >= 20


def test_statement_classes() -> None:
    assert isinstance(parse_one("CREATE STREAM s (a INT)"), exp.Create)
    assert parse_one("CREATE STREAM s (a INT)").kind == "STREAM"
    assert isinstance(parse_one("EXPLAIN SELECT 1"), Explain)
    assert isinstance(parse_one("EXPLAIN SELECT 1").this, exp.Select)
    assert isinstance(parse_one("INSERT INTO k SELECT 1"), exp.Insert)
    show = parse_one("SHOW TOPICS")
    assert isinstance(show, exp.Show) and show.name == "TOPICS"
    drop = parse_one("DROP STREAM IF EXISTS s")
    assert isinstance(drop, exp.Drop) and drop.kind == "STREAM" and drop.args["exists"]
    view = parse_one("CREATE MATERIALIZED VIEW v AS SELECT 1")
    assert view.kind == "VIEW" and view.find(exp.MaterializedProperty)


def test_table_argument_node() -> None:
    select = parse_one(
        "SELECT * FROM TABLE(SESSION(TABLE bid PARTITION BY (a, b), DESCRIPTOR(t), x))"
    )
    argument = select.find(TableArgument)
    assert argument.this.name == "bid"
    assert [c.name for c in argument.args["partition_by"]] == ["a", "b"]


def test_table_argument_of_a_query_partitioned_by_keys() -> None:
    """Flink's ``TABLE (SELECT ...) PARTITION BY k``; without PARTITION BY it stays sqlglot's
    call of ``TABLE``, as every window TVF planner reads it."""
    select = parse_one(
        "SELECT * FROM TABLE(SESSION(TABLE (SELECT a, b FROM bid WHERE a > 1) PARTITION BY (a, b),"
        " DESCRIPTOR(t), x))"
    )
    argument = select.find(TableArgument)
    assert isinstance(argument.this, exp.Subquery) and argument.this.this.find(exp.Where)
    assert [c.name for c in argument.args["partition_by"]] == ["a", "b"]
    plain = parse_one("SELECT * FROM TABLE(TUMBLE(TABLE (SELECT a FROM bid), DESCRIPTOR(t), x))")
    assert plain.find(TableArgument) is None
    with pytest.raises(SqlError, match="line 1, column"):
        parse_one("SELECT * FROM TABLE(SESSION(TABLE (SELECT a FROM bid) PARTITION BY, x))")


def test_parse_many_statements() -> None:
    statements = parse("CREATE STREAM s (a INT);\nSELECT a FROM s;")
    assert [type(s) for s in statements] == [exp.Create, exp.Select]


# --- DDL -> StreamDef -----------------------------------------------------------------------


def test_create_stream_definition() -> None:
    definition = define(
        parse_one(
            "CREATE STREAM IF NOT EXISTS clicks (user_id BIGINT NOT NULL, url VARCHAR, "
            "ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) "
            "WITH (TOPIC='clicks-v1', format='json', partitions=3)"
        )
    )
    assert definition == StreamDef(
        name="clicks",
        columns=(
            Column("user_id", pa.int64(), nullable=False),
            Column("url", pa.string()),
            Column("ts", pa.timestamp("ms")),
        ),
        watermark=Watermark("ts", 5000),
        options={"topic": "clicks-v1", "format": "json", "partitions": "3"},
        primary_key=(),
        kind="stream",
        if_not_exists=True,
        or_replace=False,
    )
    assert definition.topic == "clicks-v1"
    assert definition.format == "json"
    assert definition.schema() == pa.schema(
        [
            pa.field("user_id", pa.int64(), nullable=False),
            ("url", pa.string()),
            ("ts", pa.timestamp("ms")),
        ]
    )


def test_defaults_for_topic_and_format() -> None:
    definition = define(parse_one("CREATE OR REPLACE STREAM s (a INT, WATERMARK FOR a AS a)"))
    assert definition.or_replace and not definition.if_not_exists
    assert (definition.topic, definition.format) == ("s", "json")
    assert definition.watermark == Watermark("a", 0)
    assert definition.options == {}


def test_flink_create_table_definition() -> None:
    definition = define(
        parse_one(
            """CREATE TABLE `Bid` (
                 `item` STRING,
                 price DECIMAL(10, 2),
                 tags ARRAY<STRING>,
                 attrs MAP<STRING, BIGINT>,
                 buyer ROW<id BIGINT, name VARCHAR>,
                 bidtime TIMESTAMP(3),
                 received TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
                 `offset` BIGINT METADATA VIRTUAL,
                 price_cents AS CAST(price * 100 AS BIGINT),
                 day AS UPPER(`item`),
                 WATERMARK FOR bidtime AS bidtime - INTERVAL '1.5' SECOND,
                 PRIMARY KEY (item) NOT ENFORCED
               ) WITH ('connector' = 'kafka', 'topic' = 'bids', 'Value.Format' = 'avro',
                       'scan.startup.mode' = 'earliest-offset')"""
        )
    )
    assert definition.name == "Bid"
    assert definition.kind == "table"
    assert definition.primary_key == ("item",)
    assert definition.watermark == Watermark("bidtime", 1500)
    assert definition.options == {
        "connector": "kafka",
        "topic": "bids",
        "value.format": "avro",
        "scan.startup.mode": "earliest-offset",
    }
    assert (definition.topic, definition.format) == ("bids", "avro")
    assert definition.columns == (
        Column("item", pa.string(), nullable=False),
        Column("price", pa.decimal128(10, 2)),
        Column("tags", pa.list_(pa.string())),
        Column("attrs", pa.map_(pa.string(), pa.int64())),
        Column("buyer", pa.struct([("id", pa.int64()), ("name", pa.string())])),
        Column("bidtime", pa.timestamp("ms")),
        Column("received", pa.timestamp("ms", tz="UTC"), metadata="timestamp"),
        Column("offset", pa.int64(), metadata="offset"),
        Column("price_cents", pa.int64(), expression="CAST(price * 100 AS BIGINT)"),
        Column("day", pa.null(), expression='UPPER("item")'),
    )
    assert definition.schema().names == ["item", "price", "tags", "attrs", "buyer", "bidtime"]


@pytest.mark.parametrize(
    ("sql_type", "arrow"),
    [
        ("TIMESTAMP(0)", pa.timestamp("s")),
        ("TIMESTAMP(3)", pa.timestamp("ms")),
        ("TIMESTAMP", pa.timestamp("us")),
        ("TIMESTAMP(6)", pa.timestamp("us")),
        ("TIMESTAMP(9)", pa.timestamp("ns")),
        ("TIMESTAMP(3) WITHOUT TIME ZONE", pa.timestamp("ms")),
        ("TIMESTAMP_LTZ(3)", pa.timestamp("ms", tz="UTC")),
        ("TIMESTAMP(3) WITH LOCAL TIME ZONE", pa.timestamp("ms", tz="UTC")),
        ("TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
        ("VARCHAR", pa.string()),
        ("VARCHAR(20)", pa.string()),
        ("STRING", pa.string()),
        ("CHAR(3)", pa.string()),
        ("BIGINT", pa.int64()),
        ("INT", pa.int32()),
        ("INTEGER", pa.int32()),
        ("SMALLINT", pa.int16()),
        ("TINYINT", pa.int8()),
        ("DOUBLE", pa.float64()),
        ("DOUBLE PRECISION", pa.float64()),
        ("FLOAT", pa.float32()),
        ("REAL", pa.float32()),
        ("BOOLEAN", pa.bool_()),
        ("DECIMAL(10,2)", pa.decimal128(10, 2)),
        ("DECIMAL", pa.decimal128(10, 0)),
        ("DECIMAL(50, 4)", pa.decimal256(50, 4)),
        ("DATE", pa.date32()),
        ("TIME(3)", pa.time32("ms")),
        ("BYTES", pa.binary()),
        ("ARRAY<BIGINT>", pa.list_(pa.int64())),
        ("INT[]", pa.list_(pa.int32())),
        ("MAP<STRING, DOUBLE>", pa.map_(pa.string(), pa.float64())),
        (
            "ROW<a INT, b ARRAY<STRING>>",
            pa.struct([("a", pa.int32()), ("b", pa.list_(pa.string()))]),
        ),
        ("ROW(a INT)", pa.struct([("a", pa.int32())])),
    ],
)
def test_arrow_type(sql_type: str, arrow: pa.DataType) -> None:
    kind = parse_one(f"CREATE TABLE t (c {sql_type})").this.expressions[0].args["kind"]
    assert arrow_type(kind) == arrow


def test_unsupported_type_has_position() -> None:
    with pytest.raises(SqlError) as info:
        define(parse_one("CREATE STREAM s (\n  a INT,\n  b INTERVAL\n)"))
    assert "unsupported column type" in info.value.message
    assert (info.value.line, info.value.column) == (3, 3)


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE STREAM s (ts TIMESTAMP, WATERMARK FOR ts AS ts + INTERVAL '1' SECOND)",
        "CREATE STREAM s (ts TIMESTAMP, WATERMARK FOR x AS x)",
        "CREATE STREAM s (a INT, a INT)",
        "CREATE TABLE t AS SELECT 1",
        "CREATE STREAM s (a INT, PRIMARY KEY (b) NOT ENFORCED)",
    ],
)
def test_bad_definitions(sql: str) -> None:
    with pytest.raises(SqlError):
        define(parse_one(sql))


# --- intervals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "ms"),
    [
        ("INTERVAL '1' MINUTE", 60_000),
        ("INTERVAL '10' MINUTES", 600_000),
        ("INTERVAL '2' SECOND", 2_000),
        ("INTERVAL '1.5' SECOND", 1_500),
        ("INTERVAL '1' HOUR", 3_600_000),
        ("INTERVAL '1' DAY", 86_400_000),
        ("INTERVAL '2' DAYS", 172_800_000),
        ("INTERVAL '250' MILLISECOND", 250),
        ("INTERVAL '00:01:00'", 60_000),
        ("INTERVAL '01:30:00' HOUR TO SECOND", 5_400_000),
        ("INTERVAL '2:30' MINUTE TO SECOND", 150_000),
        ("INTERVAL '1 02:00:00' DAY TO SECOND", 93_600_000),
        ("INTERVAL '5 seconds'", 5_000),
        ("INTERVAL '1' HOUR '30' MINUTE", 5_400_000),
    ],
)
def test_interval_ms(interval: str, ms: int) -> None:
    assert interval_ms(parse_one(f"SELECT {interval}").expressions[0]) == ms


@pytest.mark.parametrize(
    "expression",
    [
        "INTERVAL '1' MONTH",
        "INTERVAL '1' YEAR",
        "5",
        "INTERVAL 'soon' SECOND",
        "INTERVAL '1' MICROSECOND",
    ],
)
def test_interval_ms_rejects(expression: str) -> None:
    with pytest.raises(SqlError):
        interval_ms(parse_one(f"SELECT {expression}").expressions[0])


# --- windows --------------------------------------------------------------------------------

TUMBLE_10M = WindowSpec(WindowKind.TUMBLE, "bidtime", 600_000)
HOP_5M_10M = WindowSpec(WindowKind.HOP, "bidtime", 600_000, slide_ms=300_000)
CUMULATE_2M_10M = WindowSpec(WindowKind.CUMULATE, "bidtime", 600_000, slide_ms=120_000)
SESSION_5M = WindowSpec(WindowKind.SESSION, "bidtime", 0, gap_ms=300_000, partition_by=("item",))


@pytest.mark.parametrize(
    ("sql", "spec", "rest"),
    [
        (
            "SELECT item, COUNT(*) FROM bid GROUP BY item, TUMBLING(bidtime, INTERVAL '10' MINUTE)",
            TUMBLE_10M,
            "SELECT item, COUNT(*) FROM bid GROUP BY item, window_start, window_end",
        ),
        (
            "SELECT window_start, COUNT(*) FROM bid GROUP BY TUMBLE(bidtime, INTERVAL '10' MINUTES)",
            TUMBLE_10M,
            "SELECT window_start, COUNT(*) FROM bid GROUP BY window_start, window_end",
        ),
        (
            "SELECT COUNT(*) FROM bid GROUP BY HOP(bidtime, INTERVAL '5' MINUTE, INTERVAL '10' MINUTE)",
            HOP_5M_10M,
            "SELECT COUNT(*) FROM bid GROUP BY window_start, window_end",
        ),
        (
            "SELECT COUNT(*) FROM bid GROUP BY CUMULATE(bidtime, INTERVAL '2' MINUTE, INTERVAL '10' MINUTE)",
            CUMULATE_2M_10M,
            "SELECT COUNT(*) FROM bid GROUP BY window_start, window_end",
        ),
        (
            "SELECT item, window_end FROM bid GROUP BY item, SESSION(bidtime, INTERVAL '5' MINUTE)",
            SESSION_5M,
            "SELECT item, window_end FROM bid GROUP BY item, window_start, window_end",
        ),
        (
            "SELECT window_start, window_end, SUM(price) FROM TABLE(TUMBLE(TABLE bid, "
            "DESCRIPTOR(bidtime), INTERVAL '10' MINUTES)) GROUP BY window_start, window_end",
            TUMBLE_10M,
            "SELECT window_start, window_end, SUM(price) FROM bid GROUP BY window_start, window_end",
        ),
        (
            "SELECT * FROM TABLE(HOP(TABLE bid, DESCRIPTOR(bidtime), INTERVAL '5' MINUTES, "
            "INTERVAL '10' MINUTES)) AS w",
            HOP_5M_10M,
            "SELECT * FROM bid AS w",
        ),
        (
            "SELECT * FROM TABLE(CUMULATE(TABLE bid, DESCRIPTOR(bidtime), INTERVAL '2' MINUTES, "
            "INTERVAL '10' MINUTES))",
            CUMULATE_2M_10M,
            "SELECT * FROM bid",
        ),
        (
            "SELECT item, SUM(price) FROM TABLE(SESSION(TABLE bid PARTITION BY item, "
            "DESCRIPTOR(bidtime), INTERVAL '5' MINUTES)) GROUP BY item, window_start, window_end",
            SESSION_5M,
            "SELECT item, SUM(price) FROM bid GROUP BY item, window_start, window_end",
        ),
        (
            "SELECT * FROM TABLE(TUMBLE(DATA => TABLE bid, TIMECOL => DESCRIPTOR(bidtime), "
            "SIZE => INTERVAL '10' MINUTES))",
            TUMBLE_10M,
            "SELECT * FROM bid",
        ),
        (
            "SELECT * FROM TABLE(HOP(TABLE bid, DESCRIPTOR(bidtime), SIZE => INTERVAL '10' MINUTES, "
            "SLIDE => INTERVAL '5' MINUTES))",
            HOP_5M_10M,
            "SELECT * FROM bid",
        ),
        ("SELECT a, COUNT(*) FROM bid GROUP BY a", None, "SELECT a, COUNT(*) FROM bid GROUP BY a"),
    ],
)
def test_find_window(sql: str, spec: WindowSpec | None, rest: str) -> None:
    select = parse_one(sql)
    before = select.sql(dialect=StreamHouse)
    found, remainder = find_window(select)
    assert found == spec
    assert remainder.sql(dialect=StreamHouse) == rest
    assert select.sql(dialect=StreamHouse) == before  # the input is left alone


@pytest.mark.parametrize(
    ("sql", "message", "line", "column"),
    [
        (
            "SELECT 1 FROM t\nGROUP BY HOP(ts, INTERVAL '3' SECOND, INTERVAL '10' SECOND)",
            "multiple of its slide",
            2,
            39,
        ),
        (
            "SELECT 1 FROM TABLE(CUMULATE(TABLE t, DESCRIPTOR(ts), INTERVAL '3' SECOND, "
            "INTERVAL '10' SECOND))",
            "multiple of its step",
            1,
            76,
        ),
        ("SELECT 1 FROM t GROUP BY TUMBLE(ts, INTERVAL '0' SECOND)", "must be positive", 1, 37),
        ("SELECT 1 FROM t GROUP BY SESSION(ts, INTERVAL '-1' SECOND)", "must be positive", 1, 38),
        (
            "SELECT 1 FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' SECOND))\n"
            "GROUP BY window_start,\n  TUMBLE(ts, INTERVAL '1' SECOND)",
            "only one window",
            3,
            3,
        ),
        ("SELECT 1 FROM t GROUP BY TUMBLE(1 + 1, INTERVAL '1' SECOND)", "must be a column", 1, 33),
        (
            "SELECT 1 FROM TABLE(TUMBLE(t, DESCRIPTOR(ts), INTERVAL '1' SECOND))",
            "TABLE <name>",
            1,
            28,
        ),
        ("SELECT 1 FROM TABLE(TUMBLE(TABLE t, ts, INTERVAL '1' SECOND))", "DESCRIPTOR", 1, 21),
        ("SELECT 1 FROM t GROUP BY TUMBLE(ts)", "size is missing", 1, 26),
    ],
)
def test_find_window_errors(sql: str, message: str, line: int, column: int) -> None:
    with pytest.raises(SqlError) as info:
        find_window(parse_one(sql))
    assert message in info.value.message
    assert (info.value.line, info.value.column) == (line, column)


# --- parse errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "line", "column"),
    [
        ("SELEC 1", 1, 1),
        ("SELECT a,\n  b\nFROM t WHERE (a = 1", 3, 19),
        ("SELECT a\nFROM t\nWHERE a = = 1", 3, 11),
        ("SELECT * FROM t LIMIT x y", 1, 25),
        ("CREATE STREAM s (a INT) WITH (topic 's')", 1, 37),
        ("CREATE STREAM s (a INT,\n  b INT b)", 2, 9),
        ("SHOW CATS", 1, 6),
        ("SELECT 1;\nSELECT 2", 2, 8),
    ],
)
def test_parse_error_positions(sql: str, line: int, column: int) -> None:
    with pytest.raises(SqlError) as info:
        parse_one(sql)
    assert (info.value.line, info.value.column) == (line, column), info.value.message
    assert info.value.message


def test_unterminated_string_is_sql_error() -> None:
    with pytest.raises(SqlError):
        parse("SELECT 'abc")


def test_nested_case_is_read_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each CASE is parsed once: reading the common one-value form again from its start made
    nested CASEs cost 2**depth (the SQL fuzz test drew one that took minutes)."""
    calls = 0
    parse_case = StreamHouse.Parser._parse_case

    def counted(self: object) -> object:
        nonlocal calls
        calls += 1
        return parse_case(self)

    monkeypatch.setattr(StreamHouse.Parser, "_parse_case", counted)
    depth = 12
    sql = "SELECT " + "CASE WHEN a > 0 THEN " * depth + "1" + " END" * depth + " FROM t"
    tree = parse_one(sql)
    assert calls == depth
    assert len(list(tree.find_all(exp.Case))) == depth
