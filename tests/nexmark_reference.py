"""Batch answers to the Nexmark queries, written by hand for DuckDB.

Each entry of :data:`REFERENCE` is the DuckDB SQL that computes, over the whole generated data
set, the rows the streaming query ``queries/nexmark/qN.sql`` must end with once every window has
closed (the batch oracle of the streaming engine). The tables are ``person``, ``auction``,
``bid`` and ``side_input`` as :func:`benchmarks.nexmark.generate_tables` returns them.

Semantics pinned here, where Flink and DuckDB differ:

- windows are aligned to the epoch, ``[start, end)``; a HOP of slide s and size k puts a row
  in the k/s windows whose start is a multiple of s in ``(t - k, t]``;
- a session (gap g) ends at its last row + g, and a row more than g after the previous row of
  the same key starts a new one (a row exactly g later extends it, as Flink merges touching
  windows);
- ``REGEXP_EXTRACT`` is NULL when nothing matches (DuckDB's ``regexp_extract`` gives '');
  ``SPLIT_INDEX(s, sep, i)`` counts from 0 (DuckDB's ``split_part`` from 1);
- ``AVG`` of integers is a DOUBLE (Flink keeps the argument's type, BIGINT; the engine follows
  DataFusion and DuckDB here);
- ``DATE_FORMAT(ts, 'yyyy-MM-dd')`` is ``strftime(ts, '%Y-%m-%d')``.

Where a query's answer is not unique (ROW_NUMBER over ties, processing time), :data:`COMPARE`
gives a projection, applied to both answers as ``FROM result``, that is.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa

TUMBLE_10S = "(epoch_ms(dateTime) // 10000) * 10000"

REFERENCE: dict[str, str] = {
    "q0": "SELECT auction, bidder, price, dateTime, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908 * price AS price, dateTime, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    "q3": """
        SELECT P.name, P.city, P.state, A.id
        FROM auction A JOIN person P ON A.seller = P.id
        WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')
    """,
    "q4": """
        SELECT category, AVG(final)
        FROM (
            SELECT A.id, A.category, MAX(B.price) AS final
            FROM auction A JOIN bid B
              ON A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires
            GROUP BY A.id, A.category
        )
        GROUP BY category
    """,
    # HOP(2 s, 10 s): each bid falls in the 5 windows starting at (t // 2 s - i) * 2 s, i < 5.
    "q5": """
        WITH windows AS (
            SELECT auction, (epoch_ms(dateTime) // 2000 - i) * 2000 AS window_start
            FROM bid, range(5) AS r(i)
        ),
        counts AS (
            SELECT auction, window_start, count(*) AS num FROM windows GROUP BY ALL
        ),
        maxima AS (
            SELECT window_start, max(num) AS maxn FROM counts GROUP BY window_start
        )
        SELECT auction, num FROM counts JOIN maxima USING (window_start) WHERE num >= maxn
    """,
    # The intended meaning (the Flink text itself filters on a SELECT alias of its own level):
    # per seller, the average winning price over its latest 11 closed auctions by bid time.
    "q6": """
        WITH winners AS (
            SELECT A.id, A.seller, B.price, B.dateTime,
                   ROW_NUMBER() OVER (
                       PARTITION BY A.id, A.seller ORDER BY B.price DESC, B.dateTime
                   ) AS rownum
            FROM auction A JOIN bid B
              ON A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires
        )
        SELECT seller,
               AVG(price) OVER (
                   PARTITION BY seller ORDER BY dateTime, id
                   ROWS BETWEEN 10 PRECEDING AND CURRENT ROW
               )
        FROM winners WHERE rownum <= 1
    """,
    "q7": f"""
        WITH maxima AS (
            SELECT max(price) AS maxprice, epoch_ms({TUMBLE_10S} + 10000) AS window_end
            FROM bid GROUP BY {TUMBLE_10S}
        )
        SELECT B.auction, B.bidder, B.price, B.dateTime, B.extra
        FROM bid B JOIN maxima M ON B.price = M.maxprice
        WHERE B.dateTime BETWEEN M.window_end - INTERVAL 10 SECOND AND M.window_end
    """,
    "q8": f"""
        WITH P AS (
            SELECT DISTINCT id, name, {TUMBLE_10S} AS window_start FROM person
        ),
        A AS (
            SELECT DISTINCT seller, {TUMBLE_10S} AS window_start FROM auction
        )
        SELECT P.id, P.name, epoch_ms(P.window_start)
        FROM P JOIN A ON P.id = A.seller AND P.window_start = A.window_start
    """,
    "q9": """
        SELECT id, itemName, description, initialBid, reserve, dateTime, expires, seller,
               category, extra, auction, bidder, price, bid_dateTime, bid_extra
        FROM (
            SELECT A.*, B.auction, B.bidder, B.price, B.dateTime AS bid_dateTime,
                   B.extra AS bid_extra,
                   ROW_NUMBER() OVER (
                       PARTITION BY A.id ORDER BY B.price DESC, B.dateTime ASC
                   ) AS rownum
            FROM auction A JOIN bid B
              ON A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires
        )
        WHERE rownum <= 1
    """,
    "q10": """
        SELECT auction, bidder, price, dateTime, extra,
               strftime(dateTime, '%Y-%m-%d'), strftime(dateTime, '%H:%M')
        FROM bid
    """,
    "q11": """
        WITH ordered AS (
            SELECT bidder, epoch_ms(dateTime) AS t,
                   epoch_ms(dateTime) - lag(epoch_ms(dateTime)) OVER (
                       PARTITION BY bidder ORDER BY dateTime
                   ) AS since_previous
            FROM bid
        ),
        numbered AS (
            SELECT bidder, t,
                   sum(CASE WHEN since_previous IS NULL OR since_previous > 10000 THEN 1 ELSE 0 END)
                       OVER (PARTITION BY bidder ORDER BY t ROWS UNBOUNDED PRECEDING) AS session
            FROM ordered
        )
        SELECT bidder, count(*) AS bid_count, epoch_ms(min(t)) AS starttime,
               epoch_ms(max(t) + 10000) AS endtime
        FROM numbered GROUP BY bidder, session
    """,
    # Processing-time windows: only the per-bidder totals are defined.
    "q12": "SELECT bidder, count(*) AS bid_count, NULL AS starttime, NULL AS endtime FROM bid GROUP BY bidder",
    "q13": """
        SELECT B.auction, B.bidder, B.price, B.dateTime, S.value
        FROM bid B JOIN side_input S ON B.auction % 10000 = S.key
    """,
    "q14": """
        SELECT auction, bidder, 0.908 * price AS price,
               CASE
                   WHEN hour(dateTime) >= 8 AND hour(dateTime) <= 18 THEN 'dayTime'
                   WHEN hour(dateTime) <= 6 OR hour(dateTime) >= 20 THEN 'nightTime'
                   ELSE 'otherTime'
               END AS bidTimeType,
               dateTime, extra,
               length(extra) - length(replace(extra, 'c', '')) AS c_counts
        FROM bid
        WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000
    """,
    "q15": """
        SELECT strftime(dateTime, '%Y-%m-%d') AS day,
               count(*) AS total_bids,
               count(*) FILTER (WHERE price < 10000) AS rank1_bids,
               count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
               count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
               count(DISTINCT bidder) AS total_bidders,
               count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders,
               count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000),
               count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders,
               count(DISTINCT auction) AS total_auctions,
               count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions,
               count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000),
               count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions
        FROM bid GROUP BY 1
    """,
    "q16": """
        SELECT channel, strftime(dateTime, '%Y-%m-%d') AS day,
               max(strftime(dateTime, '%H:%M')) AS minute,
               count(*) AS total_bids,
               count(*) FILTER (WHERE price < 10000) AS rank1_bids,
               count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
               count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
               count(DISTINCT bidder) AS total_bidders,
               count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders,
               count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000),
               count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders,
               count(DISTINCT auction) AS total_auctions,
               count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions,
               count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000),
               count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions
        FROM bid GROUP BY 1, 2
    """,
    "q17": """
        SELECT auction, strftime(dateTime, '%Y-%m-%d') AS day,
               count(*) AS total_bids,
               count(*) FILTER (WHERE price < 10000) AS rank1_bids,
               count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
               count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
               min(price), max(price), avg(price), sum(price)
        FROM bid GROUP BY 1, 2
    """,
    "q18": """
        SELECT auction, bidder, price, channel, url, dateTime, extra
        FROM (
            SELECT *, ROW_NUMBER() OVER (
                PARTITION BY bidder, auction ORDER BY dateTime DESC
            ) AS rank_number
            FROM bid
        )
        WHERE rank_number <= 1
    """,
    "q19": """
        SELECT * FROM (
            SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number
            FROM bid
        )
        WHERE rank_number <= 10
    """,
    "q20": """
        SELECT B.auction, B.bidder, B.price, B.channel, B.url, B.dateTime, B.extra,
               A.itemName, A.description, A.initialBid, A.reserve, A.dateTime, A.expires,
               A.seller, A.category, A.extra
        FROM bid B JOIN auction A ON B.auction = A.id
        WHERE A.category = 10
    """,
    "q21": """
        WITH extracted AS (
            SELECT *, nullif(regexp_extract(url, '(&|^)channel_id=([^&]*)', 2), '') AS from_url
            FROM bid
        )
        SELECT auction, bidder, price, channel,
               CASE lower(channel)
                   WHEN 'apple' THEN '0'
                   WHEN 'google' THEN '1'
                   WHEN 'facebook' THEN '2'
                   WHEN 'baidu' THEN '3'
                   ELSE from_url
               END AS channel_id
        FROM extracted
        WHERE from_url IS NOT NULL OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')
    """,
    "q22": """
        SELECT auction, bidder, price, channel,
               split_part(url, '/', 4) AS dir1,
               split_part(url, '/', 5) AS dir2,
               split_part(url, '/', 6) AS dir3
        FROM bid
    """,
}

COMPARE: dict[str, str] = {
    # ROW_NUMBER over equal times picks any of the tied bids: compare the (bidder, auction)
    # pairs and the time of their last bid.
    "q18": "SELECT auction, bidder, dateTime FROM result",
    # Ties in price: the k-th price of an auction is defined, not which bid carries it.
    "q19": "SELECT auction, price, rank_number FROM result",
    # Processing-time windows: only the bids per bidder over all windows are defined.
    "q12": "SELECT bidder, sum(bid_count) FROM result GROUP BY bidder",
}


def connect(tables: Any) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the generated tables registered (``tables``: NexmarkTables)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name in ("person", "auction", "bid", "side_input"):
        table = tables.table(name)
        con.register(f"{name}_arrow", table)
        # TIMESTAMP_MS columns as TIMESTAMP: epoch_ms(TIMESTAMP_MS) fails in DuckDB 2.0.
        times = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
        replace = ", ".join(f"{c}::TIMESTAMP AS {c}" for c in times)
        star = f"* REPLACE ({replace})" if times else "*"
        con.execute(f"CREATE VIEW {name} AS SELECT {star} FROM {name}_arrow")
    return con


def reference(con: duckdb.DuckDBPyConnection, query: str) -> pa.Table:
    """The batch answer of ``query`` (``"q5"``) over the tables registered in ``con``."""
    return con.sql(REFERENCE[query]).to_arrow_table()


def comparable(query: str, table: pa.Table) -> list[tuple[Any, ...]]:
    """``table``'s rows as a sorted list of tuples, after the query's :data:`COMPARE` projection.

    Floats and fractional decimals are rounded to 9 significant digits, so that summation order
    and DECIMAL-vs-DOUBLE arithmetic do not matter; whole decimals are ints.
    """
    if query in COMPARE:
        con = duckdb.connect()
        con.register("result", table)
        table = con.sql(COMPARE[query]).to_arrow_table()
    columns = [column.to_pylist() for column in table.columns]
    rows = [tuple(_normal(v) for v in row) for row in zip(*columns, strict=True)]
    return sorted(rows, key=repr)


def _normal(value: Any) -> Any:
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)  # SUM(BIGINT) is a HUGEINT in DuckDB: exact, as the engine's BIGINT
    if isinstance(value, float | Decimal):
        return float(f"{float(value):.9g}")
    return value
