-- Revenue per country over the last 10 minutes, updated every 2 minutes (HOP, Flink TVF syntax).
CREATE STREAM IF NOT EXISTS events (
    user_id BIGINT,
    event_type STRING,
    page STRING,
    country STRING,
    amount DOUBLE,
    `timestamp` TIMESTAMP(3),
    WATERMARK FOR `timestamp` AS `timestamp` - INTERVAL '5' SECOND
) WITH (topic = 'events', format = 'json', partitions = '4');

INSERT INTO revenue_by_country_10m
SELECT window_start, window_end, country,
       SUM(amount) AS revenue, COUNT(*) AS purchases, AVG(amount) AS avg_basket
FROM TABLE(HOP(TABLE events, DESCRIPTOR(`timestamp`), INTERVAL '2' MINUTES, INTERVAL '10' MINUTES))
WHERE event_type = 'purchase'
GROUP BY window_start, window_end, country;
