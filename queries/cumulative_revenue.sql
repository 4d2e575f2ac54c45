-- Revenue so far today, reported every 10 minutes (CUMULATE, Flink TVF syntax).
CREATE STREAM IF NOT EXISTS events (
    user_id BIGINT,
    event_type STRING,
    page STRING,
    country STRING,
    amount DOUBLE,
    `timestamp` TIMESTAMP(3),
    WATERMARK FOR `timestamp` AS `timestamp` - INTERVAL '5' SECOND
) WITH (topic = 'events', format = 'json', partitions = '4');

INSERT INTO revenue_today
SELECT window_start, window_end, SUM(amount) AS revenue, COUNT(DISTINCT user_id) AS buyers
FROM TABLE(CUMULATE(TABLE events, DESCRIPTOR(`timestamp`), INTERVAL '10' MINUTES, INTERVAL '1' DAY))
WHERE event_type = 'purchase'
GROUP BY window_start, window_end;
