-- Nexmark query 13: Bounded side input join
-- Bids enriched from a lookup table (not in the original suite). The side input is topic side_input, keys 0..9999.
-- Query text as in the nexmark/nexmark Flink suite; only the DDL is StreamHouse's.
-- Each micro-batch reads side_input to the log's end before probing, so with the side input
-- loaded first the answer is deterministic.

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

CREATE TABLE IF NOT EXISTS side_input (
    key BIGINT,
    `value` VARCHAR
) WITH (topic = 'side_input', format = 'json');

INSERT INTO nexmark_q13
SELECT
    B.auction,
    B.bidder,
    B.price,
    B.dateTime,
    S.`value`
FROM (SELECT *, PROCTIME() as p_time FROM bid) B
JOIN side_input FOR SYSTEM_TIME AS OF B.p_time AS S
ON mod(B.auction, 10000) = S.key;
