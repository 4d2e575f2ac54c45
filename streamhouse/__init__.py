"""StreamHouse: a Kafka-compatible, object-store-native log and a streaming SQL engine.

>>> import streamhouse, tempfile
>>> sh = streamhouse.connect(tempfile.mkdtemp())  # connect() alone: ./streamhouse-data
>>> sh.close()
"""

import sys

from streamhouse.os_memory import keep_freed_pages, keep_heap_pages

keep_freed_pages()  # before anything imports DataFusion, whose allocator reads it when loaded
keep_heap_pages()

if "hypothesis" not in sys.modules:
    # kio registers hypothesis strategies for its types whenever hypothesis can be imported
    # (it comes with the test extras): 0.3 s of every command's start-up, and a .hypothesis/
    # folder left in the working directory. A process that has not imported hypothesis first
    # (as pytest's plugin does) has no use for them.
    sys.modules["hypothesis"] = None  # type: ignore[assignment]
    try:
        import kio.static.primitive  # noqa: F401
    finally:
        del sys.modules["hypothesis"]

from streamhouse.connection import Produced, StreamHouse, connect  # noqa: E402
from streamhouse.errors import (  # noqa: E402
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
from streamhouse.result import Relation  # noqa: E402

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
