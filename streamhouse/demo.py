"""The demo: realistic click-stream events into the log, then a few questions in SQL.

``streamhouse demo`` (and ``make demo``) runs :func:`run_demo`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import numpy as np

from streamhouse.connection import StreamHouse

log = logging.getLogger(__name__)

DEMO_TOPIC = "events"
EVENT_TYPES = np.array(["view", "click", "add_to_cart", "purchase"])
EVENT_WEIGHTS = np.array([0.55, 0.30, 0.10, 0.05])
PAGES = np.array(["/", "/search", "/product/42", "/product/7", "/cart", "/checkout"])
COUNTRIES = np.array(["DE", "US", "FR", "JP", "BR", "IN"])

DEMO_DDL = """
CREATE STREAM IF NOT EXISTS events (
    user_id BIGINT,
    event_type STRING,
    page STRING,
    country STRING,
    amount DOUBLE,
    `timestamp` TIMESTAMP(3),
    WATERMARK FOR `timestamp` AS `timestamp` - INTERVAL '5' SECOND
) WITH (topic = 'events', format = 'json')
"""

DEMO_QUERY_NAME = "demo_clicks_per_minute"
DEMO_CONTINUOUS = """
INSERT INTO demo_clicks_per_minute
SELECT user_id, window_start, window_end, COUNT(*) AS event_count
FROM events
WHERE event_type = 'click'
GROUP BY user_id, TUMBLING(`timestamp`, INTERVAL '1' MINUTE)
"""

DEMO_QUERIES = [
    (
        "Events by type",
        "SELECT event_type, count(*) AS events, count(DISTINCT user_id) AS users "
        "FROM events GROUP BY event_type ORDER BY events DESC",
    ),
    (
        "Busiest user-minutes (the roadmap's windowed query, ad hoc)",
        "SELECT user_id, window_start, COUNT(*) AS event_count FROM events "
        "WHERE event_type = 'click' GROUP BY user_id, TUMBLING(`timestamp`, INTERVAL '1' MINUTE) "
        "ORDER BY event_count DESC, window_start, user_id LIMIT 5",
    ),
    (
        "Clicks per 10 minutes, sliding every 5 (HOP, Flink syntax)",
        "SELECT window_start, window_end, COUNT(*) AS clicks, COUNT(DISTINCT user_id) AS users "
        "FROM TABLE(HOP(TABLE events, DESCRIPTOR(`timestamp`), INTERVAL '5' MINUTES, "
        "INTERVAL '10' MINUTES)) WHERE event_type = 'click' "
        "GROUP BY window_start, window_end ORDER BY window_start",
    ),
    (
        "Revenue by country",
        "SELECT country, round(sum(amount), 2) AS revenue, count(*) AS purchases "
        "FROM events WHERE event_type = 'purchase' GROUP BY country ORDER BY revenue DESC",
    ),
    (
        "Events per partition, as stored",
        "SELECT _partition AS partition, count(*) AS records, min(_offset) AS first_offset, "
        "max(_offset) AS last_offset FROM events GROUP BY _partition ORDER BY _partition",
    ),
]


def generate_events(
    count: int, *, seed: int = 7, start: datetime | None = None
) -> Iterator[list[dict[str, object]]]:
    """Click-stream events in chunks of up to 10,000, one per ~36 ms of event time."""
    rng = np.random.default_rng(seed)
    start = start or datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    done = 0
    while done < count:
        n = min(10_000, count - done)
        users = rng.zipf(1.6, n) % 500
        kinds = rng.choice(EVENT_TYPES, n, p=EVENT_WEIGHTS)
        pages = rng.choice(PAGES, n)
        countries = rng.choice(COUNTRIES, n)
        amounts = np.round(rng.gamma(2.0, 20.0, n), 2)
        millis = np.sort(rng.integers(0, 36 * n, n)) + done * 36
        chunk = [
            {
                "user_id": int(u),
                "event_type": str(k),
                "page": str(p),
                "country": str(c),
                "amount": float(a) if k == "purchase" else 0.0,
                "timestamp": (start + timedelta(milliseconds=int(ms))).isoformat(
                    timespec="milliseconds"
                ),
            }
            for u, k, p, c, a, ms in zip(
                users, kinds, pages, countries, amounts, millis, strict=True
            )
        ]
        done += n
        yield chunk


def run_demo(
    sh: StreamHouse,
    events: int = 100_000,
    progress: Callable[[int], None] | None = None,
    show: Callable[[str, object], None] | None = None,
) -> list[tuple[str, object]]:
    """Produce ``events`` demo events and answer the demo queries; returns (title, table) pairs."""
    if sh.log.get_topic(DEMO_TOPIC) is None:
        sh.create_topic(DEMO_TOPIC, partitions=4)
    for chunk in generate_events(events):
        sh.produce(DEMO_TOPIC, chunk, key=[str(e["user_id"]) for e in chunk])
        if progress is not None:
            progress(len(chunk))
    sh.sql(DEMO_DDL)
    answers = []
    for title, query in DEMO_QUERIES:
        table = sh.sql(query).to_arrow_table()
        answers.append((title, table))
        if show is not None:
            show(f"{title}\n  {query}", table)
    answers.append(run_continuous(sh))
    if show is not None:
        title, table = answers[-1]
        show(title, table)
    return answers


def run_continuous(sh: StreamHouse) -> tuple[str, object]:
    """The roadmap's query as a continuous query over everything in the log, to its end."""
    import shutil

    from streamhouse.runtime.launch import start_query

    state = sh.settings.data_dir / "queries"
    shutil.rmtree(state / DEMO_QUERY_NAME, ignore_errors=True)  # the demo starts afresh
    if sh.log.get_topic(DEMO_QUERY_NAME) is not None:
        sh.delete_topic(DEMO_QUERY_NAME)
    query = start_query(
        sh.engine, DEMO_CONTINUOUS, name=DEMO_QUERY_NAME, state_root=state, start=False
    )
    try:
        query.run_until_caught_up(final=True)
        status = query.status()
    finally:
        query.stop()
    table = sh.sql(
        f"SELECT user_id, window_start, window_end, event_count FROM {DEMO_QUERY_NAME} "
        "ORDER BY window_start, event_count DESC, user_id LIMIT 8"
    ).to_arrow_table()
    title = (
        f"Continuous query {DEMO_QUERY_NAME}: {status['rows_in']} events in, "
        f"{status['rows_out']} window results out (first 8 shown)"
    )
    return title, table
