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
CREATE STREAM IF NOT EXISTS clicks (
    user_id BIGINT,
    event_type STRING,
    page STRING,
    country STRING,
    amount DOUBLE,
    ts TIMESTAMP(3),
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (topic = 'events', format = 'json')
"""

DEMO_QUERIES = [
    (
        "Events by type",
        "SELECT event_type, count(*) AS events, count(DISTINCT user_id) AS users "
        "FROM clicks GROUP BY event_type ORDER BY events DESC",
    ),
    (
        "Top 5 users by clicks (the roadmap's query, over the whole log)",
        "SELECT user_id, COUNT(*) AS event_count FROM clicks WHERE event_type = 'click' "
        "GROUP BY user_id ORDER BY event_count DESC, user_id LIMIT 5",
    ),
    (
        "Revenue by country",
        "SELECT country, round(sum(amount), 2) AS revenue, count(*) AS purchases "
        "FROM clicks WHERE event_type = 'purchase' GROUP BY country ORDER BY revenue DESC",
    ),
    (
        "Events per partition, as stored",
        "SELECT _partition AS partition, count(*) AS records, min(_offset) AS first_offset, "
        "max(_offset) AS last_offset FROM clicks GROUP BY _partition ORDER BY _partition",
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
                "ts": (start + timedelta(milliseconds=int(ms))).strftime("%Y-%m-%dT%H:%M:%S.%f")[
                    :-3
                ],
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
    return answers
