"""The errors StreamHouse raises. Every one derives from :class:`StreamHouseError`."""

from __future__ import annotations

from collections.abc import Mapping


class StreamHouseError(Exception):
    """Root of every error StreamHouse raises on purpose."""


class LogError(StreamHouseError):
    """The log cannot do what was asked (storage, offsets, records)."""


class UnknownTopicError(LogError):
    """The topic does not exist."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"unknown topic {topic!r}")
        self.topic = topic


class TopicExistsError(LogError):
    """A topic of that name exists already."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} already exists")
        self.topic = topic


class UnknownPartitionError(LogError):
    """The topic has no partition of that number."""

    def __init__(self, topic: str, partition: int) -> None:
        super().__init__(f"topic {topic!r} has no partition {partition}")
        self.topic = topic
        self.partition = partition


class OffsetOutOfRangeError(LogError):
    """The requested offset lies outside [log start, high watermark]."""


class InvalidConfigError(LogError):
    """A topic config is unknown, malformed or not supported (Kafka's INVALID_CONFIG)."""


class InvalidBrokerConfigError(LogError):
    """A dynamic broker config that is read-only or has a bad value (Kafka answers
    INVALID_REQUEST for these, not INVALID_CONFIG: KAFKA-13609)."""


class RecordTooLargeError(LogError):
    """A record or batch is larger than the topic's max.message.bytes."""


class InvalidRecordError(LogError):
    """A record given to produce cannot be stored: a value or key that is not text or JSON
    (a lone surrogate, NaN, nesting too deep to encode)."""


class CorruptRecordError(LogError):
    """A record batch fails its CRC-32C or cannot be parsed."""


class CorruptSegmentError(LogError):
    """A segment object fails its checksum or is truncated; the message names the object."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"segment object {key!r} is corrupt: {reason}")
        self.key = key
        self.reason = reason


class DamagedRangeError(CorruptSegmentError):
    """Offsets ``[base_offset, last_offset]`` of a partition are unreadable: their run in segment
    object ``key`` fails its checksum or is cut short. Only that range is lost; the records
    before and after it read as usual.

    >>> str(DamagedRangeError("t", 0, 1000, 1999, "segments/2.seg", "checksum mismatch"))
    "topic 't' partition 0 offsets [1000, 1999] are unreadable: segment object 'segments/2.seg' is damaged (checksum mismatch)"
    """

    def __init__(
        self, topic: str, partition: int, base_offset: int, last_offset: int, key: str, reason: str
    ) -> None:
        LogError.__init__(
            self,
            f"topic {topic!r} partition {partition} offsets [{base_offset}, {last_offset}] are"
            f" unreadable: segment object {key!r} is damaged ({reason})",
        )
        self.topic = topic
        self.partition = partition
        self.base_offset = base_offset
        self.last_offset = last_offset
        self.key = key
        self.reason = reason

    @property
    def records(self) -> int:
        """How many offsets the range spans."""
        return self.last_offset - self.base_offset + 1


class ProducerSequenceError(LogError):
    """An idempotent producer's batch does not follow the batches the store has of it."""


class OutOfOrderSequenceError(ProducerSequenceError):
    """The batch's first sequence number is not one past the last one stored (a gap, or an
    old batch no longer remembered): Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER."""


class InvalidProducerEpochError(ProducerSequenceError):
    """The batch carries an older epoch than the store has seen of its producer id."""


class RefusedBatchesError(LogError):
    """A segment commit was rolled back because some idempotent producer batches in it may not
    be indexed: ``verdicts`` maps the index of each such batch (in the commit's list) to the
    base offset its earlier copy got (a duplicate: the producer is answered with it) or to the
    :class:`ProducerSequenceError` (or other refusal, such as a commit hook's) to answer with."""

    def __init__(self, verdicts: Mapping[int, int | LogError]) -> None:
        super().__init__(f"{len(verdicts)} idempotent producer batch(es) refused")
        self.verdicts = dict(verdicts)


class TransactionRefusedError(LogError):
    """The store refused to decide a transaction in the commit of its markers (it was not in
    the state expected, or some of its records were not indexed): the markers are not written."""


class StorageError(LogError):
    """The object store or the metadata store failed (disk full, unwritable directory, S3 error)."""


class FencedError(LogError):
    """A write made under a lease this process no longer holds (it expired or was taken over):
    refused in the transaction that would have committed it, so nothing of it is visible."""


class StateFormatError(StorageError):
    """A query's state directory was written in a state format this build does not read."""


class ObjectNotFoundError(StorageError):
    """The object store has no object under that key; ``place`` says where it looked
    (``under /data/objects``, ``in s3://bucket/prefix``), so a command pointed at the wrong
    object store says so."""

    def __init__(self, key: str, place: str = "") -> None:
        super().__init__(f"object {key!r} not found" + (f" {place}" if place else ""))
        self.key = key


class SqlError(StreamHouseError):
    """A SQL statement is invalid; ``line`` and ``column`` point at the problem (1-based)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        where = (
            f" (line {line}, column {column})" if line is not None and column is not None else ""
        )
        super().__init__(f"{message}{where}")
        self.message = message
        self.line = line
        self.column = column


class UnknownStreamError(SqlError):
    """A query names a stream, table or topic that does not exist."""


class ProtocolError(StreamHouseError):
    """A Kafka protocol frame is malformed or unsupported."""


class ConfigError(StreamHouseError):
    """A setting has a value StreamHouse cannot use."""
