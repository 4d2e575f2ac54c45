-- User sessions (30 s of inactivity ends one): length, events and whether the user bought.
CREATE STREAM IF NOT EXISTS events (
    user_id BIGINT,
    event_type STRING,
    page STRING,
    country STRING,
    amount DOUBLE,
    `timestamp` TIMESTAMP(3),
    WATERMARK FOR `timestamp` AS `timestamp` - INTERVAL '5' SECOND
) WITH (topic = 'events', format = 'json', partitions = '4');

SET 'allowed-lateness' = '10 s';

INSERT INTO user_sessions
SELECT user_id, window_start AS session_start, window_end AS session_end,
       COUNT(*) AS events,
       COUNT(DISTINCT page) AS pages,
       COUNT(*) FILTER (WHERE event_type = 'purchase') AS purchases
FROM events
GROUP BY user_id, SESSION(`timestamp`, INTERVAL '30' SECOND);
