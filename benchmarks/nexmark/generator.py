"""A deterministic, vectorized Nexmark event generator writing ``person``, ``auction`` and ``bid``.

The model is the standard Nexmark one (as the nexmark/nexmark Flink benchmark generates it):

- events are numbered 0, 1, 2, ...; of every 50 consecutive numbers 1 is a person, 3 are
  auctions and 46 are bids (proportions configurable), so ids grow with event numbers: person
  ids and auction ids start at 1000 and count the persons/auctions generated so far;
- event time advances at ``events_per_second`` (10,000 by default) from a fixed base time; a
  fraction of events (10%) carry a time up to ``max_delay_ms`` (3 s) earlier than their place in
  the stream: bounded disorder, within the queries' 4-second watermark delay;
- an auction's seller is a *hot* seller (the first person of the latest block of 100) with
  probability 1 - 1/hot_sellers_ratio, else one of the latest ``num_active_people`` persons (or
  up to 10 ids ahead); its category is one of 10..14; it expires after a random span averaging
  the time of ``num_in_flight_auctions`` auctions;
- a bid's auction is *hot* (the first of the latest block of 100 auctions) with probability
  1 - 1/hot_auction_ratio, else one of the latest ``num_in_flight_auctions`` (or up to 10 ahead);
  its bidder is hot (the second person of the latest block of 100) with probability
  1 - 1/hot_bidders_ratio; its price is log-uniform in [100, 10^8); half the bids come from one
  of 4 hot channels (Google, Facebook, Baidu, Apple), the other half from ``channel-<n>`` for
  n < 10,000, whose URL carries ``&channel_id=...`` 9 times out of 10;
- every event carries an ``extra`` padding string, so that persons, auctions and bids average
  200, 500 and 100 bytes of field data.

Columns follow the Flink Nexmark DDL (``person``, ``auction``, ``bid`` tables; ``dateTime`` is the
event time). Nothing here loops over events in Python: columns are numpy arrays, strings are cut
out of a random letter pool by offsets, and JSON is assembled with Arrow string kernels. Every
generated string is made of letters, digits, spaces and ``@._-/:?&=`` only, so no JSON escaping is
ever needed.

>>> config = NexmarkConfig.for_bids(46_000)
>>> tables = generate_tables(config)
>>> tables.bid.num_rows, tables.auction.num_rows, tables.person.num_rows
(46000, 3000, 1000)
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

__all__ = [
    "STREAMS",
    "LoadStats",
    "NexmarkChunk",
    "NexmarkConfig",
    "generate",
    "generate_tables",
    "json_values",
    "load",
    "side_input_table",
]

FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
HOT_BLOCK = 100
"""Hot sellers, bidders and auctions are picked from the latest block of this many ids."""
ID_LEAD = 10
"""Random person and auction references may point this many ids past the latest one."""
CHANNELS = 10_000
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
SIDE_INPUT_ROWS = 10_000

BASE_TIME_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)

US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = (
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
)
FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah")
FIRST_NAMES += ("Deiter", "Walter")
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones")
LAST_NAMES += ("Noris",)

PERSON_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("emailAddress", pa.string()),
        ("creditCard", pa.string()),
        ("city", pa.string()),
        ("state", pa.string()),
        ("dateTime", pa.timestamp("ms")),
        ("extra", pa.string()),
    ]
)
AUCTION_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("itemName", pa.string()),
        ("description", pa.string()),
        ("initialBid", pa.int64()),
        ("reserve", pa.int64()),
        ("dateTime", pa.timestamp("ms")),
        ("expires", pa.timestamp("ms")),
        ("seller", pa.int64()),
        ("category", pa.int64()),
        ("extra", pa.string()),
    ]
)
BID_SCHEMA = pa.schema(
    [
        ("auction", pa.int64()),
        ("bidder", pa.int64()),
        ("price", pa.int64()),
        ("channel", pa.string()),
        ("url", pa.string()),
        ("dateTime", pa.timestamp("ms")),
        ("extra", pa.string()),
    ]
)
STREAMS: dict[str, pa.Schema] = {"person": PERSON_SCHEMA, "auction": AUCTION_SCHEMA}
STREAMS["bid"] = BID_SCHEMA
"""The three streams, in the order events of one event number block are generated."""


@dataclass(frozen=True)
class NexmarkConfig:
    """What to generate. Equal configs generate equal events, whatever the machine."""

    events: int
    seed: int = 0
    events_per_second: int = 10_000
    """Event time advances by one second every this many events."""
    base_time_ms: int = BASE_TIME_MS
    person_proportion: int = 1
    auction_proportion: int = 3
    bid_proportion: int = 46
    hot_auction_ratio: int = 2
    hot_sellers_ratio: int = 4
    hot_bidders_ratio: int = 4
    num_in_flight_auctions: int = 100
    num_active_people: int = 1000
    avg_person_bytes: int = 200
    avg_auction_bytes: int = 500
    avg_bid_bytes: int = 100
    delayed_fraction: float = 0.1
    """Share of events whose time lags their place in the stream (bounded disorder)."""
    max_delay_ms: int = 3000
    """The most an event's time lags its place: keep it below the watermark delay (4 s)."""
    chunk_events: int = 100_000
    """Events are generated (and loaded) this many at a time; part of what the data is."""

    def __post_init__(self) -> None:
        if self.events < 0:
            raise ValueError("events must not be negative")
        if min(self.person_proportion, self.auction_proportion, self.bid_proportion) < 1:
            raise ValueError("every proportion must be at least 1")
        if self.chunk_events % self.total_proportion:
            object.__setattr__(
                self,
                "chunk_events",
                max(1, self.chunk_events // self.total_proportion) * self.total_proportion,
            )

    @classmethod
    def for_bids(cls, bids: int, **options: Any) -> NexmarkConfig:
        """A config with enough events for ``bids`` bids (and the persons/auctions around them)."""
        probe = cls(events=0, **options)
        blocks = math.ceil(bids / probe.bid_proportion)
        events = blocks * probe.total_proportion
        extra_bids = blocks * probe.bid_proportion - bids  # trailing bids of the last block
        return replace(probe, events=events - extra_bids)

    @property
    def total_proportion(self) -> int:
        return self.person_proportion + self.auction_proportion + self.bid_proportion

    def counts(self) -> dict[str, int]:
        """How many persons, auctions and bids the config generates."""
        kinds = _kind_counts(self, 0, self.events)
        return dict(zip(STREAMS, kinds, strict=True))

    def time_ms(self, event_numbers: np.ndarray) -> np.ndarray:
        """The in-order event time (ms since the epoch) of each event number."""
        return self.base_time_ms + (event_numbers * 1000) // self.events_per_second


@dataclass(frozen=True)
class NexmarkChunk:
    """The persons, auctions and bids of one run of consecutive event numbers."""

    first_event: int
    events: int
    person: pa.Table
    auction: pa.Table
    bid: pa.Table

    def table(self, stream: str) -> pa.Table:
        return getattr(self, stream)


@dataclass(frozen=True)
class NexmarkTables:
    """Every generated row, as one Arrow table per stream (rows in event-number order)."""

    person: pa.Table
    auction: pa.Table
    bid: pa.Table
    side_input: pa.Table = field(default_factory=lambda: side_input_table())

    def table(self, stream: str) -> pa.Table:
        return getattr(self, stream)


# -- ids ---------------------------------------------------------------------------------------


def _kind_counts(config: NexmarkConfig, start: int, end: int) -> tuple[int, int, int]:
    """(persons, auctions, bids) among event numbers [start, end)."""
    total = config.total_proportion
    p, a = config.person_proportion, config.auction_proportion

    def upto(n: int, lo: int, hi: int) -> int:  # event numbers < n whose offset is in [lo, hi)
        full, rest = divmod(n, total)
        return full * (hi - lo) + max(0, min(rest, hi) - lo)

    persons = upto(end, 0, p) - upto(start, 0, p)
    auctions = upto(end, p, p + a) - upto(start, p, p + a)
    return persons, auctions, (end - start) - persons - auctions


def _last_person(config: NexmarkConfig, n: np.ndarray) -> np.ndarray:
    """The base-0 id of the latest person at event number ``n`` (its own, for a person)."""
    epoch, offset = np.divmod(n, config.total_proportion)
    offset = np.minimum(offset, config.person_proportion - 1)
    return epoch * config.person_proportion + offset


def _last_auction(config: NexmarkConfig, n: np.ndarray) -> np.ndarray:
    """The base-0 id of the latest auction at event number ``n`` (its own, for an auction)."""
    epoch, offset = np.divmod(n, config.total_proportion)
    p, a = config.person_proportion, config.auction_proportion
    before = offset < p  # a person: the last auction of the previous block
    epoch = np.where(before, epoch - 1, epoch)
    offset = np.where(before | (offset >= p + a), a - 1, offset - p)
    return np.maximum(epoch * a + offset, 0)


def _random_person(config: NexmarkConfig, n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A base-0 person id among the active ones (or a few ahead)."""
    people = _last_person(config, n) + 1
    active = np.minimum(people, config.num_active_people)
    return people - active + _below(rng, active + ID_LEAD)


def _random_auction(config: NexmarkConfig, n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A base-0 auction id among those likely still open (or a few ahead)."""
    last = _last_auction(config, n)
    first = np.maximum(last - config.num_in_flight_auctions, 0)
    return first + _below(rng, last - first + 1 + ID_LEAD)


def _below(rng: np.random.Generator, bound: np.ndarray) -> np.ndarray:
    """One uniform integer in [0, bound) per element."""
    return np.minimum((rng.random(len(bound)) * bound).astype(np.int64), bound - 1)


def _hot(rng: np.random.Generator, n: int, ratio: int) -> np.ndarray:
    """True with probability 1 - 1/ratio."""
    return rng.integers(0, ratio, n) > 0


def _prices(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.rint(np.power(10.0, rng.random(n) * 6.0) * 100.0).astype(np.int64)


# -- strings -----------------------------------------------------------------------------------


class _Letters:
    """Random strings cut out of a pool of random characters, without copying.

    A string array's characters are one contiguous slice of the pool; its offsets give the
    lengths wanted. Strings of one array never share characters; arrays may reuse the pool.
    """

    def __init__(self, rng: np.random.Generator, alphabet: bytes, size: int) -> None:
        table = np.frombuffer(alphabet, np.uint8)
        self._pool = table[rng.integers(0, len(table), size, dtype=np.uint16)]
        self._buffer = pa.py_buffer(self._pool)

    def strings(self, rng: np.random.Generator, lengths: np.ndarray) -> pa.StringArray:
        offsets = np.zeros(len(lengths) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total > len(self._pool):
            raise ValueError(f"{total} characters asked of a pool of {len(self._pool)}")
        start = int(rng.integers(0, len(self._pool) - total + 1))
        data = self._buffer.slice(start, total)
        return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), data)

    def words(self, rng: np.random.Generator, n: int, max_length: int) -> pa.StringArray:
        """Strings of 3 to ``max_length - 1`` characters, as Nexmark's ``nextString``."""
        return self.strings(rng, rng.integers(3, max_length, n))

    def padding(
        self, rng: np.random.Generator, current: np.ndarray, average: int
    ) -> pa.StringArray:
        """Strings that bring rows of ``current`` bytes to ``average`` bytes on average (+-20%)."""
        wanted = np.maximum(average - current, 0)
        delta = np.rint(wanted * 0.2).astype(np.int64)
        lengths = wanted - delta + _below(rng, np.maximum(2 * delta, 1))
        return self.strings(rng, np.where(delta > 0, lengths, wanted))


LETTERS = b"abcdefghijklmnopqrstuvwxyz"
WORD_CHARS = LETTERS * 12 + b" "  # about 1 in 13 characters is a space, as in Nexmark
POOL_CHARS = 1 << 20


def _reverse_bits32(values: np.ndarray) -> np.ndarray:
    """Java's ``Math.abs(Integer.reverse(v))`` for non-negative ints below 2^31."""
    v = values.astype(np.uint32)
    v = ((v >> 1) & 0x55555555) | ((v & 0x55555555) << 1)
    v = ((v >> 2) & 0x33333333) | ((v & 0x33333333) << 2)
    v = ((v >> 4) & 0x0F0F0F0F) | ((v & 0x0F0F0F0F) << 4)
    v = ((v >> 8) & 0x00FF00FF) | ((v & 0x00FF00FF) << 8)
    v = (v >> 16) | (v << 16)
    return np.abs(v.view(np.int32).astype(np.int64))


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


@dataclass
class _Vocabulary:
    """Fixed string tables of one generation run: names, cards, channels and their URLs."""

    words: _Letters
    url_words: _Letters
    padding: _Letters
    channels: pa.StringArray  # 4 hot channels, then channel-0 .. channel-9999
    urls: pa.StringArray
    names: pa.StringArray
    digits4: pa.StringArray
    cities: pa.StringArray
    states: pa.StringArray

    @classmethod
    def build(cls, config: NexmarkConfig) -> _Vocabulary:
        rng = np.random.default_rng([config.seed, 0x6E6578])
        # A chunk asks for under 100 padding characters per event, and far fewer word ones.
        events = max(1, min(config.chunk_events, config.events))
        words = _Letters(rng, WORD_CHARS, max(POOL_CHARS, events * 16))
        url_words = _Letters(rng, LETTERS * 12 + b"_", POOL_CHARS)
        padding = _Letters(rng, LETTERS, max(POOL_CHARS, events * 128))
        n = len(HOT_CHANNELS) + CHANNELS
        dirs = [url_words.words(rng, n, 5) for _ in range(3)]
        base = _join("https://www.nexmark.com/", dirs[0], "/", dirs[1], "/", dirs[2])
        base = _join(base, "/item.htm?query=1")
        numbers = np.arange(CHANNELS)
        tagged = np.concatenate(
            [np.zeros(len(HOT_CHANNELS), bool), rng.integers(0, 10, CHANNELS) > 0]
        )
        ids = pa.array(
            np.concatenate([np.zeros(len(HOT_CHANNELS), np.int64), _reverse_bits32(numbers)])
        )
        suffix = pc.if_else(pa.array(tagged), _join("&channel_id=", ids.cast(pa.string())), "")
        channels = pa.concat_arrays(
            [
                pa.array(HOT_CHANNELS, pa.string()),
                _join("channel-", pa.array(numbers).cast(pa.string())),
            ]
        )
        names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
        return cls(
            words=words,
            url_words=url_words,
            padding=padding,
            channels=channels,
            urls=_join(base, suffix),
            names=pa.array(names, pa.string()),
            digits4=pa.array([f"{i:04d}" for i in range(10_000)], pa.string()),
            cities=pa.array(US_CITIES, pa.string()),
            states=pa.array(US_STATES, pa.string()),
        )


def _lengths(array: pa.Array) -> np.ndarray:
    return pc.utf8_length(array).to_numpy().astype(np.int64)


# -- events ------------------------------------------------------------------------------------


def _event_times(
    config: NexmarkConfig, n: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, pa.Array]:
    """In-order times and the (possibly delayed) ``dateTime`` column of events ``n``."""
    in_order = config.time_ms(n)
    delayed = rng.random(len(n)) < config.delayed_fraction
    delay = np.where(delayed, 1 + _below(rng, np.full(len(n), max(config.max_delay_ms, 1))), 0)
    if config.max_delay_ms <= 0:
        delay[:] = 0
    # No event is earlier than the base time: the first ones are delayed less.
    times = np.maximum(in_order - delay, config.base_time_ms)
    return in_order, pa.array(times, pa.timestamp("ms"))


def _persons(
    config: NexmarkConfig, n: np.ndarray, rng: np.random.Generator, vocab: _Vocabulary
) -> pa.Table:
    count = len(n)
    _, date_time = _event_times(config, n, rng)
    name = vocab.names.take(pa.array(rng.integers(0, len(vocab.names), count)))
    email = _join(vocab.words.words(rng, count, 7), "@", vocab.words.words(rng, count, 5), ".com")
    groups = [vocab.digits4.take(pa.array(rng.integers(0, 10_000, count))) for _ in range(4)]
    card = pc.binary_join_element_wise(*groups, " ")
    city = vocab.cities.take(pa.array(rng.integers(0, len(US_CITIES), count)))
    state = vocab.states.take(pa.array(rng.integers(0, len(US_STATES), count)))
    size = 8 + _lengths(name) + _lengths(email) + _lengths(card) + _lengths(city) + 2
    extra = vocab.padding.padding(rng, size, config.avg_person_bytes)
    ids = _last_person(config, n) + FIRST_PERSON_ID
    columns = [pa.array(ids), name, email, card, city, state, date_time, extra]
    return pa.Table.from_arrays(columns, schema=PERSON_SCHEMA)


def _auctions(
    config: NexmarkConfig, n: np.ndarray, rng: np.random.Generator, vocab: _Vocabulary
) -> pa.Table:
    count = len(n)
    in_order, date_time = _event_times(config, n, rng)
    hot = _hot(rng, count, config.hot_sellers_ratio)
    hot_seller = (_last_person(config, n) // HOT_BLOCK) * HOT_BLOCK
    seller = np.where(hot, hot_seller, _random_person(config, n, rng)) + FIRST_PERSON_ID
    category = FIRST_CATEGORY_ID + rng.integers(0, NUM_CATEGORIES, count)
    initial = _prices(rng, count)
    reserve = initial + _prices(rng, count)
    # An auction stays open for a random span averaging the time until num_in_flight_auctions
    # more auctions have been generated.
    ahead = (config.num_in_flight_auctions * config.total_proportion) // config.auction_proportion
    horizon = config.time_ms(n + ahead) - in_order
    start = date_time.to_numpy().astype(np.int64)
    expires = start + 1 + _below(rng, np.maximum(2 * horizon, 1))
    item = vocab.words.words(rng, count, 20)
    description = vocab.words.words(rng, count, 100)
    size = 8 + _lengths(item) + _lengths(description) + 40
    extra = vocab.padding.padding(rng, size, config.avg_auction_bytes)
    ids = _last_auction(config, n) + FIRST_AUCTION_ID
    columns = [
        pa.array(ids),
        item,
        description,
        pa.array(initial),
        pa.array(reserve),
        date_time,
        pa.array(expires, pa.timestamp("ms")),
        pa.array(seller),
        pa.array(category),
        extra,
    ]
    return pa.Table.from_arrays(columns, schema=AUCTION_SCHEMA)


def _bids(
    config: NexmarkConfig, n: np.ndarray, rng: np.random.Generator, vocab: _Vocabulary
) -> pa.Table:
    count = len(n)
    _, date_time = _event_times(config, n, rng)
    hot_auction = (_last_auction(config, n) // HOT_BLOCK) * HOT_BLOCK
    auction = np.where(
        _hot(rng, count, config.hot_auction_ratio), hot_auction, _random_auction(config, n, rng)
    )
    hot_bidder = (_last_person(config, n) // HOT_BLOCK) * HOT_BLOCK + 1
    bidder = np.where(
        _hot(rng, count, config.hot_bidders_ratio), hot_bidder, _random_person(config, n, rng)
    )
    price = _prices(rng, count)
    channel = np.where(
        rng.integers(0, 2, count) > 0,
        rng.integers(0, len(HOT_CHANNELS), count),
        len(HOT_CHANNELS) + rng.integers(0, CHANNELS, count),
    )
    picked = pa.array(channel)
    extra = vocab.padding.padding(rng, np.full(count, 32), config.avg_bid_bytes)
    columns = [
        pa.array(auction + FIRST_AUCTION_ID),
        pa.array(bidder + FIRST_PERSON_ID),
        pa.array(price),
        vocab.channels.take(picked),
        vocab.urls.take(picked),
        date_time,
        extra,
    ]
    return pa.Table.from_arrays(columns, schema=BID_SCHEMA)


def generate(config: NexmarkConfig) -> Iterator[NexmarkChunk]:
    """The events of ``config``, ``config.chunk_events`` event numbers at a time."""
    vocab = _Vocabulary.build(config)
    total = config.total_proportion
    p, a = config.person_proportion, config.auction_proportion
    for index, start in enumerate(range(0, config.events, config.chunk_events)):
        end = min(start + config.chunk_events, config.events)
        rng = np.random.default_rng([config.seed, index])
        n = np.arange(start, end, dtype=np.int64)
        offset = n % total
        person_n = n[offset < p]
        auction_n = n[(offset >= p) & (offset < p + a)]
        bid_n = n[offset >= p + a]
        yield NexmarkChunk(
            first_event=start,
            events=end - start,
            person=_persons(config, person_n, rng, vocab),
            auction=_auctions(config, auction_n, rng, vocab),
            bid=_bids(config, bid_n, rng, vocab),
        )


def generate_tables(config: NexmarkConfig) -> NexmarkTables:
    """Every row of ``config`` as Arrow tables: the rows :func:`load` writes, in event order."""
    chunks = list(generate(config))
    parts = {
        stream: pa.concat_tables([c.table(stream) for c in chunks])
        if chunks
        else schema.empty_table()
        for stream, schema in STREAMS.items()
    }
    return NexmarkTables(**parts)


def side_input_table(rows: int = SIDE_INPUT_ROWS) -> pa.Table:
    """The side input of query 13: ``key`` 0..rows-1 and ``value``, the key as text."""
    keys = pa.array(np.arange(rows, dtype=np.int64))
    return pa.table({"key": keys, "value": keys.cast(pa.string())})


# -- JSON --------------------------------------------------------------------------------------


def _int_fields(key: str, values: pa.Array) -> pa.Array:
    """``"key":123`` per value; through a lookup when the values span a narrow range (ids)."""
    array = values.to_numpy()
    prefix = f'"{key}":'
    if len(array) == 0:
        return pa.array([], pa.string())
    lo, hi = int(array.min()), int(array.max())
    if hi - lo < len(array):
        lookup = pa.array(np.arange(lo, hi + 1, dtype=np.int64)).cast(pa.string())
        return _join(prefix, lookup).take(pa.array(array - lo))
    return _join(prefix, values.cast(pa.string()))


_MILLIS = pa.array([f".{i:03d}" for i in range(1000)], pa.string())


def _time_fields(key: str, values: pa.Array) -> pa.Array:
    """``"key":"YYYY-MM-DD HH:MM:SS.mmm"`` per timestamp[ms] value (Flink's SQL format).

    Times of a chunk of events span a few seconds: their text is made once per millisecond of
    the span and looked up.
    """
    ms = values.cast(pa.int64()).to_numpy()
    if len(ms) == 0:
        return pa.array([], pa.string())
    lo, hi = int(ms.min()), int(ms.max())
    narrow = hi - lo < 2 * len(ms)
    wanted = np.arange(lo, hi + 1, dtype=np.int64) if narrow else ms
    seconds = wanted // 1000
    first, last = int(seconds[0] if narrow else seconds.min()), int(seconds.max())
    if last - first < len(seconds):
        stamps = pa.array(np.arange(first, last + 1, dtype=np.int64), pa.timestamp("s"))
        text = pc.strftime(stamps, "%Y-%m-%d %H:%M:%S").take(pa.array(seconds - first))
    else:
        text = pc.strftime(pa.array(seconds, pa.timestamp("s")), "%Y-%m-%d %H:%M:%S")
    millis = _MILLIS.take(pa.array(wanted - seconds * 1000))
    fields = _join(f'"{key}":"', text, millis, '"')
    return fields.take(pa.array(ms - lo)) if narrow else fields


def json_values(table: pa.Table) -> pa.Array:
    """One JSON object per row, as a binary array, for tables of int, string and timestamp columns.

    Strings are written as they are: callers pass strings that need no escaping (as every string
    this module generates). Timestamps are written as ``"YYYY-MM-DD HH:MM:SS.mmm"``.
    """
    fields: list[pa.Array] = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        values = column.combine_chunks()
        kind = values.type
        if pa.types.is_integer(kind):
            fields.append(_int_fields(name, values))
        elif pa.types.is_timestamp(kind):
            fields.append(_time_fields(name, values))
        elif pa.types.is_string(kind):
            fields.append(_join(f'"{name}":"', values, '"'))
        else:
            raise TypeError(f"column {name}: cannot write {kind} as JSON here")
    if not fields:
        return pa.array([b"{}"] * table.num_rows, pa.binary())
    objects = pc.binary_join_element_wise(*fields, ",")
    return _join("{", objects, "}").cast(pa.binary())


# -- loading into the log ----------------------------------------------------------------------


@dataclass
class LoadStats:
    """What :func:`load` wrote and how long it took (seconds)."""

    events: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    generate_seconds: float = 0.0
    encode_seconds: float = 0.0
    produce_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "rows": dict(self.rows),
            "bytes": dict(self.bytes),
            "generate_seconds": round(self.generate_seconds, 3),
            "encode_seconds": round(self.encode_seconds, 3),
            "produce_seconds": round(self.produce_seconds, 3),
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second),
        }


def _encoded_chunks(config: NexmarkConfig, stats: LoadStats) -> Iterator[dict[str, list[bytes]]]:
    chunks = generate(config)
    while True:
        started = time.perf_counter()
        chunk = next(chunks, None)
        generated = time.perf_counter()
        stats.generate_seconds += generated - started
        if chunk is None:
            return
        values: dict[str, list[bytes]] = {}
        for stream in STREAMS:
            table = chunk.table(stream)
            if table.num_rows:
                encoded = json_values(table)
                stats.bytes[stream] = stats.bytes.get(stream, 0) + encoded.nbytes
                values[stream] = encoded.to_pylist()
        stats.encode_seconds += time.perf_counter() - generated
        yield values


def load(
    sh: Any,
    config: NexmarkConfig,
    *,
    partitions: int = 1,
    side_input: bool = True,
    compression: str = "lz4",
) -> LoadStats:
    """Generate the events of ``config`` and produce them into topics person, auction and bid.

    Topics are created (with ``partitions`` partitions) when missing. A chunk's rows of a stream
    are spread over the partitions round-robin, one ``sh.produce`` call per partition, so that
    every partition's event time advances alike. Generation and JSON encoding of the next chunk
    overlap with producing the current one (a second thread). ``side_input`` also writes topic
    ``side_input`` (query 13's lookup table), once.
    """
    stats = LoadStats(rows=dict.fromkeys(STREAMS, 0))
    started = time.perf_counter()
    names = [*STREAMS, "side_input"] if side_input else list(STREAMS)
    existing = {t.name for t in sh.topics()}
    for name in names:
        if name not in existing:
            sh.create_topic(name, partitions=partitions if name != "side_input" else 1)
    counts = {name: sh.topic(name).partitions for name in STREAMS}
    if side_input and not _has_records(sh, "side_input"):
        sh.produce("side_input", json_values(side_input_table()).to_pylist(), partition=0)

    ready: queue.Queue[dict[str, list[bytes]] | BaseException | None] = queue.Queue(maxsize=2)

    def work() -> None:
        try:
            for values in _encoded_chunks(config, stats):
                ready.put(values)
            ready.put(None)
        except BaseException as exc:  # handed to the producing thread, which raises it
            ready.put(exc)

    worker = threading.Thread(target=work, name="nexmark-generator", daemon=True)
    worker.start()
    producers = ThreadPoolExecutor(32, thread_name_prefix="nexmark-produce")
    while (item := ready.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        produce_started = time.perf_counter()
        for stream, values in item.items():
            parts = counts[stream]
            slices = [(p, values[p::parts] if parts > 1 else values) for p in range(parts)]
            # The partitions' appends go together, so the writer puts them in one flush (each
            # produce call returns once durable: one after the other, 1,000 partitions would
            # wait for 1,000 flushes).
            pending = [
                producers.submit(sh.produce, stream, part, partition=p, compression=compression)
                for p, part in slices
                if part
            ]
            for future in pending:
                future.result()
            stats.rows[stream] += len(values)
        stats.produce_seconds += time.perf_counter() - produce_started
    producers.shutdown()
    worker.join()
    stats.events = config.events
    stats.seconds = time.perf_counter() - started
    log.info(
        "loaded %d events (%s) in %.2f s: %.0f events/s",
        stats.events,
        ", ".join(f"{k}={v}" for k, v in stats.rows.items()),
        stats.seconds,
        stats.events_per_second,
    )
    return stats


def _has_records(sh: Any, topic: str) -> bool:
    info = sh.topic(topic)
    return any(sh.log.offsets(topic, p).high_watermark > 0 for p in range(info.partitions))
