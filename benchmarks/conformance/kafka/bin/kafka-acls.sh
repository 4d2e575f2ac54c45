#!/bin/sh
# Kafka's kafka-acls.sh for librdkafka's tests (KAFKA_PATH points here): the same ACL
# changes made through the Kafka admin API (confluent-kafka), see kafka_acls.py.
exec "${CONFORMANCE_PYTHON:-python3}" -m benchmarks.conformance.kafka_acls "$@"
