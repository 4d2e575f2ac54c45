"""StreamHouse: a Kafka-compatible, object-store-native log and a streaming SQL engine.

>>> import streamhouse, tempfile
>>> sh = streamhouse.connect(tempfile.mkdtemp())  # connect() alone: ./streamhouse-data
>>> sh.close()
"""

from streamhouse.connection import Produced, StreamHouse, connect
from streamhouse.errors import (
    ConfigError,
    CorruptRecordError,
    CorruptSegmentError,
    DamagedRangeError,
    InvalidConfigError,
    LogError,
    OffsetOutOfRangeError,
    ProtocolError,
    RecordTooLargeError,
    SqlError,
    StorageError,
    StreamHouseError,
    TopicExistsError,
    UnknownPartitionError,
    UnknownStreamError,
    UnknownTopicError,
)
from streamhouse.result import Relation

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CorruptRecordError",
    "CorruptSegmentError",
    "DamagedRangeError",
    "InvalidConfigError",
    "LogError",
    "OffsetOutOfRangeError",
    "Produced",
    "ProtocolError",
    "RecordTooLargeError",
    "Relation",
    "SqlError",
    "StorageError",
    "StreamHouse",
    "StreamHouseError",
    "TopicExistsError",
    "UnknownPartitionError",
    "UnknownStreamError",
    "UnknownTopicError",
    "connect",
]
