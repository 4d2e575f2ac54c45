"""Benchmarks of the log through the Kafka protocol (``python -m benchmarks.log``).

:mod:`benchmarks.log.kafka` measures produce and fetch throughput and latency percentiles with
confluent-kafka against ``streamhouse serve`` and, in the same run, against librdkafka's
built-in mock cluster.
"""
