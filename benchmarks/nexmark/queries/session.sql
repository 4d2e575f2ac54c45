-- Benchmark query session: bids per bidder session (10-second gap), as q11 with window TVFs.
-- Issue 4's SESSION benchmark; Flink 1.19+ syntax (q11's SESSION_START/END are not supported).

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

INSERT INTO bench_session
SELECT bidder, window_start, window_end, count(*) AS num
FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(dateTime), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end;
