-- cannot run yet: the Flink text filters on a SELECT alias of its own level (WHERE rownum <= 1: "No field named rownum") and needs an OVER window over an updating Top-1; Flink cannot run it either
-- cannot run bounded yet: the Flink text is invalid SQL: "No field named rownum" (WHERE refers to a SELECT alias of the same level)
-- Nexmark query 6: Average selling price by seller
-- The average selling price per seller over their last 10 closed auctions (Flink cannot run it either: its OVER window does not take retractions).
-- Query text as in the nexmark/nexmark Flink suite; only the DDL is StreamHouse's.

CREATE STREAM IF NOT EXISTS auction (
    id BIGINT,
    itemName VARCHAR,
    description VARCHAR,
    initialBid BIGINT,
    reserve BIGINT,
    dateTime TIMESTAMP(3),
    expires TIMESTAMP(3),
    seller BIGINT,
    category BIGINT,
    extra VARCHAR,
    WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND
) WITH (topic = 'auction', format = 'json');

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

INSERT INTO nexmark_q6
SELECT
    Q.seller,
    AVG(Q.price) OVER
        (PARTITION BY Q.seller ORDER BY Q.dateTime ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)
FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY A.id, A.seller ORDER BY B.price DESC) AS rownum
    FROM (SELECT A.id, A.seller, B.price, B.dateTime
        FROM auction AS A,
            bid AS B
        WHERE A.id = B.auction
            and B.dateTime between A.dateTime and A.expires)
    WHERE rownum <= 1
) AS Q;
