-- Clicks per user per minute: the roadmap's own query, written to topic clicks_per_minute.
CREATE STREAM IF NOT EXISTS events (
    user_id BIGINT,
    event_type STRING,
    page STRING,
    country STRING,
    amount DOUBLE,
    `timestamp` TIMESTAMP(3),
    WATERMARK FOR `timestamp` AS `timestamp` - INTERVAL '5' SECOND
) WITH (topic = 'events', format = 'json', partitions = '4');

INSERT INTO clicks_per_minute
SELECT user_id, window_start, window_end, COUNT(*) AS event_count
FROM events
WHERE event_type = 'click'
GROUP BY user_id, TUMBLING(`timestamp`, INTERVAL '1' MINUTE);
