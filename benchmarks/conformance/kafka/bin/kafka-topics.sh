#!/bin/sh
# Kafka's kafka-topics.sh for librdkafka's tests (KAFKA_PATH points here): the same topic
# changes made through the Kafka admin API (confluent-kafka), see kafka_topics.py.
exec "${CONFORMANCE_PYTHON:-python3}" -m benchmarks.conformance.kafka_topics "$@"
