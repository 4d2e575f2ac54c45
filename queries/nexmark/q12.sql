-- Nexmark query 12: Processing time windows
-- Bids per user in 10-second processing-time windows (not in the original suite).
-- Query text as in the nexmark/nexmark Flink suite; only the DDL is StreamHouse's.
-- The windows depend on the clock: tests compare per-bidder totals (every bid is counted once).

CREATE STREAM IF NOT EXISTS bid (
    auction BIGINT,
    bidder BIGINT,
    price BIGINT,
    channel VARCHAR,
    url VARCHAR,
    dateTime TIMESTAMP(3),
    extra VARCHAR,
    WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND
) WITH (topic = 'bid', format = 'json');

CREATE VIEW B AS SELECT *, PROCTIME() as p_time FROM bid;

INSERT INTO nexmark_q12
SELECT
    bidder,
    count(*) as bid_count,
    window_start AS starttime,
    window_end AS endtime
FROM TABLE(
        TUMBLE(TABLE B, DESCRIPTOR(p_time), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end;
