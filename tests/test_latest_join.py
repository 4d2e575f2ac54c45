"""``JOIN t FOR SYSTEM_TIME AS OF s.p`` (``p AS PROCTIME()``) against a StreamHouse table with a
primary key: each probe row meets the latest row of its key as the table is when the row is
processed. Continuously over several micro-batches with the table changing between them and a
restart; bounded, the table as it is now. The oracle is the table replayed key by key."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from window_cases import start_paused, topic_rows

import streamhouse
from streamhouse import StreamHouse


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql(
            "CREATE STREAM rates (cur STRING, rate DOUBLE, PRIMARY KEY (cur) NOT ENFORCED)"
            " WITH (topic = 'rates')"
        )
        conn.sql(
            "CREATE STREAM orders (id BIGINT, cur STRING, p AS PROCTIME()) WITH (topic = 'orders')"
        )
        yield conn


SQL = (
    "INSERT INTO out SELECT o.id, o.cur, r.rate FROM orders AS o {side} JOIN rates"
    " FOR SYSTEM_TIME AS OF o.p AS r ON o.cur = r.cur"
)
CURRENCIES = ["EUR", "USD", "GBP", "JPY", None]


@pytest.mark.parametrize("side", ["INNER", "LEFT"])
def test_each_order_meets_the_rate_current_when_it_is_processed(sh: StreamHouse, side: str) -> None:
    rng = random.Random(side)
    table: dict[str, float] = {}
    want: list[tuple] = []
    query = start_paused(sh, SQL.format(side=side), "latest")
    next_id = 0
    try:
        for step in range(8):
            if step == 4:  # a restart: the table's latest rows come from the checkpoint
                query.stop()
                query = start_paused(sh, SQL.format(side=side), "latest")
            changes = [
                {"cur": rng.choice(CURRENCIES[:3]), "rate": round(rng.random(), 3)}
                for _ in range(rng.randrange(0, 4))
            ]
            orders = [
                {"id": next_id + i, "cur": rng.choice(CURRENCIES)}
                for i in range(rng.randrange(1, 9))
            ]
            next_id += len(orders)
            if changes:
                sh.produce("rates", changes)
            sh.produce("orders", orders)
            for change in changes:  # the batch's rows of the table are taken in first
                table[change["cur"]] = change["rate"]
            for order in orders:
                rate = table.get(order["cur"]) if order["cur"] is not None else None
                if rate is not None or side == "LEFT":
                    want.append((order["id"], order["cur"], rate))
            assert query.step()
    finally:
        query.stop()
    got = sorted((r["id"], r["cur"], r["rate"]) for r in topic_rows(sh, "out"))
    assert got == sorted(want)
    assert any(rate is None for _, _, rate in want) == (side == "LEFT")


def test_bounded_join_sees_the_table_as_it_is_now(sh: StreamHouse) -> None:
    sh.produce("rates", [{"cur": "EUR", "rate": 1.0}, {"cur": "USD", "rate": 2.0}])
    sh.produce("orders", [{"id": 1, "cur": "EUR"}, {"id": 2, "cur": "GBP"}, {"id": 3, "cur": None}])
    sh.produce("rates", [{"cur": "EUR", "rate": 1.5}])
    table = sh.sql(
        "SELECT o.id, r.rate FROM orders AS o LEFT JOIN rates FOR SYSTEM_TIME AS OF o.p AS r"
        " ON o.cur = r.cur"
    ).to_arrow_table()
    assert sorted(zip(*table.to_pydict().values(), strict=True)) == [
        (1, 1.5),
        (2, None),
        (3, None),
    ]
