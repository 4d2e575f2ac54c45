"""The librdkafka conformance runner's reading of a test's output: a failure is reported as one
a Kafka 4.0 broker shares only in the subtest ``[as_kafka_4]`` names (no suite run here)."""

from __future__ import annotations

import tomllib

from benchmarks.conformance.librdkafka import AS_KAFKA_4, SELECTION, Outcome, as_kafka_4

SELECTION_0052 = {"as_kafka_4": tomllib.loads(SELECTION.read_text())["as_kafka_4"]}


def _output(*subtests: str) -> str:
    lines = [f"[0052_msg_timestamps / 1.0s] Timestamp test using rdkafkatest_{s}" for s in subtests]
    return "\n".join([*lines, '### Test "0052_msg_timestamps" failed at test.c:655', "boom"])


def test_a_failure_in_the_named_subtest_is_kafka_4_s_too() -> None:
    failed = Outcome("0052", "0052_msg_timestamps", "FAILED", 3.0, "Broker transport failure")
    output = _output(
        "0052_msg_timestamps_CreateTime_0.10.1.0_none",
        "0052_msg_timestamps_CreateTime_0.9.0.0_none",
    )
    marked = as_kafka_4(failed, output, SELECTION_0052)
    assert marked.result == AS_KAFKA_4
    assert marked.first_error.endswith(
        "[in rdkafkatest_0052_msg_timestamps_CreateTime_0.9.0.0_none]"
    )


def test_any_other_failure_stays_a_failure() -> None:
    failed = Outcome("0052", "0052_msg_timestamps", "FAILED", 3.0, "wrong timestamp")
    output = _output("0052_msg_timestamps_LogAppendTime_0.10.1.0_gzip")
    assert as_kafka_4(failed, output, SELECTION_0052) == failed
    passed = Outcome("0052", "0052_msg_timestamps", "PASSED", 3.0, "")
    assert as_kafka_4(passed, _output("x_0.9.0.0_none"), SELECTION_0052) == passed
    other = Outcome("0081", "0081_admin", "FAILED", 3.0, "x")
    assert as_kafka_4(other, _output("x_0.9.0.0_none"), SELECTION_0052) == other
