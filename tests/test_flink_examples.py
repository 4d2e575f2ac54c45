"""The examples of Flink's window documentation give the same rows here, in both syntaxes.

Source: Flink's "Windowing TVF" and "Window Aggregation" pages (docs/dev/table/sql/queries/
window-tvf.md and window-agg.md). TUMBLE, HOP and CUMULATE run over its six-row ``Bid`` table
(08:05 to 08:17 on 2020-04-15, with ``supplier_id`` as in the Window Aggregation page); SESSION
over the five-row ``Bid`` table of the SESSION section (08:06 to 08:17, items A and B). Every
example runs bounded (``sh.sql``) and continuously (``sh.start``, INSERT INTO a topic, read back),
written as a Flink window TVF and as our ``GROUP BY <window>(...)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from window_cases import rows_of, table_rows, to_ms, topic_rows

import streamhouse
from streamhouse import StreamHouse

DAY = "2020-04-15"

BIDS = [  # bidtime, price, item, supplier_id
    ("08:05", "4.00", "C", "supplier1"),
    ("08:07", "2.00", "A", "supplier1"),
    ("08:09", "5.00", "D", "supplier2"),
    ("08:11", "3.00", "B", "supplier2"),
    ("08:13", "1.00", "E", "supplier1"),
    ("08:17", "6.00", "F", "supplier2"),
]
SESSION_BIDS = [  # bidtime, price, item (in the order the docs list them: out of order)
    ("08:07", "4.00", "A"),
    ("08:06", "2.00", "A"),
    ("08:09", "5.00", "B"),
    ("08:08", "3.00", "A"),
    ("08:17", "1.00", "B"),
]

DDL = """CREATE STREAM {name} (
    bidtime TIMESTAMP(3),
    price DECIMAL(10, 2),
    item STRING,
    supplier_id STRING,
    WATERMARK FOR bidtime AS bidtime - INTERVAL '1' SECOND
) WITH (topic = '{topic}', format = 'json')"""


def at(hhmm: str) -> int:
    """Epoch ms of ``hh:mm`` on the day of the examples."""
    return to_ms(f"{DAY} {hhmm}:00")


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql(DDL.format(name="Bid", topic="bids"))
        conn.produce(
            "bids",
            [
                {"bidtime": f"{DAY} {t}:00", "price": p, "item": i, "supplier_id": s}
                for t, p, i, s in BIDS
            ],
        )
        conn.sql(DDL.format(name="SessionBid", topic="session-bids"))
        conn.produce(
            "session-bids",
            [{"bidtime": f"{DAY} {t}:00", "price": p, "item": i} for t, p, i in SESSION_BIDS],
        )
        yield conn


def expect(*rows: tuple) -> list[tuple]:
    """Rows of the docs' tables: ``hh:mm`` window bounds to ms, prices to numbers."""
    out = []
    for row in rows:
        converted = []
        for value in row:
            if isinstance(value, str) and len(value) == 5 and value[2] == ":":
                value = at(value)
            elif isinstance(value, str) and value.replace(".", "").isdigit():
                value = float(Decimal(value))
            converted.append(value)
        out.append(tuple(converted))
    return sorted(out, key=repr)


TOTALS = ["window_start", "window_end", "total_price"]

EXAMPLES = [
    pytest.param(
        "SELECT window_start, window_end, SUM(price) AS total_price "
        "FROM TABLE(TUMBLE(TABLE Bid, DESCRIPTOR(bidtime), INTERVAL '10' MINUTES)) "
        "GROUP BY window_start, window_end",
        "SELECT window_start, window_end, SUM(price) AS total_price "
        "FROM Bid GROUP BY TUMBLING(bidtime, INTERVAL '10' MINUTE)",
        TOTALS,
        expect(("08:00", "08:10", "11.00"), ("08:10", "08:20", "10.00")),
        id="tumble",
    ),
    pytest.param(
        "SELECT window_start, window_end, SUM(price) AS total_price FROM TABLE(TUMBLE("
        "DATA => TABLE Bid, TIMECOL => DESCRIPTOR(bidtime), SIZE => INTERVAL '10' MINUTES)) "
        "GROUP BY window_start, window_end",
        "SELECT window_start, window_end, SUM(price) AS total_price "
        "FROM Bid GROUP BY TUMBLE(bidtime, INTERVAL '10' MINUTE)",
        TOTALS,
        expect(("08:00", "08:10", "11.00"), ("08:10", "08:20", "10.00")),
        id="tumble-named-arguments",
    ),
    pytest.param(
        "SELECT window_start, window_end, supplier_id, SUM(price) AS total_price "
        "FROM TABLE(TUMBLE(TABLE Bid, DESCRIPTOR(bidtime), INTERVAL '10' MINUTES)) "
        "GROUP BY window_start, window_end, supplier_id",
        "SELECT window_start, window_end, supplier_id, SUM(price) AS total_price "
        "FROM Bid GROUP BY supplier_id, TUMBLING(bidtime, INTERVAL '10' MINUTE)",
        ["window_start", "window_end", "supplier_id", "total_price"],
        # the per-supplier rows of the docs' GROUPING SETS ((supplier_id), ()) example
        expect(
            ("08:00", "08:10", "supplier1", "6.00"),
            ("08:00", "08:10", "supplier2", "5.00"),
            ("08:10", "08:20", "supplier1", "1.00"),
            ("08:10", "08:20", "supplier2", "9.00"),
        ),
        id="tumble-per-supplier",
    ),
    pytest.param(
        "SELECT window_start, window_end, SUM(price) AS total_price FROM TABLE("
        "HOP(TABLE Bid, DESCRIPTOR(bidtime), INTERVAL '5' MINUTES, INTERVAL '10' MINUTES)) "
        "GROUP BY window_start, window_end",
        "SELECT window_start, window_end, SUM(price) AS total_price "
        "FROM Bid GROUP BY HOP(bidtime, INTERVAL '5' MINUTE, INTERVAL '10' MINUTE)",
        TOTALS,
        expect(
            ("08:00", "08:10", "11.00"),
            ("08:05", "08:15", "15.00"),
            ("08:10", "08:20", "10.00"),
            ("08:15", "08:25", "6.00"),
        ),
        id="hop",
    ),
    pytest.param(
        "SELECT window_start, window_end, SUM(price) AS total_price FROM TABLE("
        "CUMULATE(TABLE Bid, DESCRIPTOR(bidtime), INTERVAL '2' MINUTES, INTERVAL '10' MINUTES)) "
        "GROUP BY window_start, window_end",
        "SELECT window_start, window_end, SUM(price) AS total_price "
        "FROM Bid GROUP BY CUMULATE(bidtime, INTERVAL '2' MINUTE, INTERVAL '10' MINUTE)",
        TOTALS,
        expect(
            ("08:00", "08:06", "4.00"),
            ("08:00", "08:08", "6.00"),
            ("08:00", "08:10", "11.00"),
            ("08:10", "08:12", "3.00"),
            ("08:10", "08:14", "4.00"),
            ("08:10", "08:16", "4.00"),
            ("08:10", "08:18", "10.00"),
            ("08:10", "08:20", "10.00"),
        ),
        id="cumulate",
    ),
    pytest.param(
        "SELECT window_start, window_end, item, SUM(price) AS total_price FROM TABLE("
        "SESSION(TABLE SessionBid PARTITION BY item, DESCRIPTOR(bidtime), INTERVAL '5' MINUTES)) "
        "GROUP BY item, window_start, window_end",
        "SELECT window_start, window_end, item, SUM(price) AS total_price "
        "FROM SessionBid GROUP BY item, SESSION(bidtime, INTERVAL '5' MINUTE)",
        ["window_start", "window_end", "item", "total_price"],
        expect(
            ("08:06", "08:13", "A", "9.00"),
            ("08:09", "08:14", "B", "5.00"),
            ("08:17", "08:22", "B", "1.00"),
        ),
        id="session-partitioned",
    ),
    pytest.param(
        "SELECT window_start, window_end, SUM(price) AS total_price FROM TABLE("
        "SESSION(TABLE SessionBid, DESCRIPTOR(bidtime), INTERVAL '5' MINUTES)) "
        "GROUP BY window_start, window_end",
        "SELECT window_start, window_end, SUM(price) AS total_price "
        "FROM SessionBid GROUP BY SESSION(bidtime, INTERVAL '5' MINUTE)",
        TOTALS,
        expect(("08:06", "08:14", "14.00"), ("08:17", "08:22", "1.00")),
        id="session",
    ),
]


@pytest.mark.parametrize(("flink", "ours", "columns", "expected"), EXAMPLES)
def test_bounded(
    sh: StreamHouse, flink: str, ours: str, columns: list[str], expected: list[tuple]
) -> None:
    assert table_rows(sh.sql(flink).to_arrow_table(), columns) == expected
    assert table_rows(sh.sql(ours).to_arrow_table(), columns) == expected


@pytest.mark.parametrize(("flink", "ours", "columns", "expected"), EXAMPLES)
def test_continuous(
    sh: StreamHouse, flink: str, ours: str, columns: list[str], expected: list[tuple]
) -> None:
    for name, sql in (("flink", flink), ("ours", ours)):
        query = sh.start(f"INSERT INTO out_{name} {sql}", name=name)
        try:
            query.run_until_caught_up(final=True)
            status = query.status()
        finally:
            query.stop()
        assert status["error"] is None
        assert status["late_rows"] == status["rejected_rows"] == 0
        assert rows_of(topic_rows(sh, f"out_{name}"), columns) == expected, name


def test_window_columns_match_the_tvf_output(sh: StreamHouse) -> None:
    """``SELECT *`` over a window TVF: the docs' HOP table, window_time = window_end - 1 ms."""
    table = sh.sql(
        "SELECT bidtime, item, window_start, window_end, window_time FROM TABLE("
        "HOP(TABLE Bid, DESCRIPTOR(bidtime), INTERVAL '5' MINUTES, INTERVAL '10' MINUTES))"
    ).to_arrow_table()
    got = sorted(
        (r["item"], to_ms(r["window_start"]), to_ms(r["window_end"]), to_ms(r["window_time"]))
        for r in table.to_pylist()
    )
    expected = []
    for t, _, item, _ in BIDS:
        minute = int(t[3:])
        first = minute - minute % 5
        for start in (first - 5, first):
            begin = at(f"08:{start:02d}")
            expected.append((item, begin, begin + 600_000, begin + 600_000 - 1))
    assert got == sorted(expected)
    assert len(got) == 12
