-- Benchmark query tumble: bids and their total price per auction, per 10-second tumbling window.
-- Issue 4's "tumbling COUNT/SUM per key" (not in the Nexmark suite); Flink syntax.

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

INSERT INTO bench_tumble
SELECT auction, window_start, window_end, count(*) AS num, sum(price) AS total
FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
GROUP BY auction, window_start, window_end;
