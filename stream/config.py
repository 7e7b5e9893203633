"""Typed settings of the Kafka side of the trainer: where to read, how to batch, how to connect.

`StreamConfig` is a frozen dataclass in the style of the other packages' configs, so the
application's TOML loader can fill it with range checks taken from the field metadata.
`kafka_client_options` turns it into the keyword arguments that kafka-python's consumer,
producer and admin client all accept, so the three are always configured alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from stream.event_time import parse_event_time

#: The named ``start_at`` values (anything else is an event time).
START_AT_NAMES: tuple[str, ...] = ("earliest", "latest", "committed")
_START_AT_FORMS = (
    '"earliest", "latest", "committed", an event time in epoch milliseconds (an integer >= 0) '
    'or an ISO-8601 time such as "2026-11-30T12:00:00Z" (UTC when it has no zone offset)'
)

#: kafka-python's default fetch size per partition; the consumer never asks for less.


@dataclass(frozen=True)
class StreamConfig:
    """Where the click stream lives and how the consumer cuts it into batches.

    ``assignment``: ``"group"`` joins consumer group ``group_id`` and lets Kafka assign
    partitions (one trainer, or failover); ``"static"`` reads exactly the partitions given
    to `ClickStreamConsumer` (one share per worker in multi-worker training, so each
    worker's checkpointed offsets stay exact). Offsets are committed to ``group_id`` in
    both modes, for lag monitoring only: the checkpoint is the source of truth.

    A batch closes at ``max_batch_events`` events or ``max_batch_ms`` milliseconds after
    its first message, whichever comes first, and, when ``max_batch_span_ms`` is set,
    before the next message would make its events span more than that much *event* time
    (``ts``): a replay at full speed then trains with the staleness live traffic at that
    rate would have. A message is never split, so one Arrow message's own span is the
    finest grain. ``max_message_bytes`` is the largest
    message accepted (bigger ones are dead-lettered as ``oversize``); topics on Apache
    Kafka need ``max.message.bytes`` at least that large for Arrow replay.

    ``session_timeout_ms`` / ``heartbeat_interval_ms``: the group join takes about half
    the session timeout on Tansu; tests use 2000/500. ``startup_timeout_s`` bounds how
    long start-up retries an unreachable broker before `BrokerUnavailableError`.

    ``check_crcs``: verify each fetched record batch's CRC-32C. True/False force it; None
    (default) verifies when the native ``crc32c`` package is importable and skips it
    otherwise (the broker already validated the CRC on produce and TCP checksums the
    transfer; the pure-Python check would cap a consumer at ~15k JSON messages/s here).

    ``start_at``: where a partition starts when it has no position of its own (neither a
    checkpoint's ``start_offsets`` entry nor, after a rebalance, the consumer's own next
    offset: those always win). ``"earliest"`` (default): its earliest offset.
    ``"latest"``: its end when first assigned (only events produced after that are read).
    ``"committed"``: the group's committed offset, else earliest. An event time (epoch
    milliseconds, or an ISO-8601 string; parsed once into ``start_at_ms``): its first event
    in offset order whose ``ts`` is at least that time; `stream.consumer` says how.

    The ``security_*``, ``sasl_*`` and ``ssl_*`` settings are passed to kafka-python
    unchanged (only those that are set).
    """

    bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    topic: str = "clicks"
    dead_letter_topic: str = "clicks.dead-letter"
    group_id: str = "inttower-trainer"
    assignment: Literal["group", "static"] = "group"
    # Kafka client library of the consumer: confluent-kafka (librdkafka: record parsing in
    # C, which leaves the training step more CPU) or kafka-python (pure Python, no native
    # library: the fallback where librdkafka >= 2.2 cannot be installed).
    client: Literal["kafka-python", "confluent"] = "confluent"
    max_batch_events: int = field(default=2048, metadata={"ge": 1})
    max_batch_ms: int = field(default=200, metadata={"ge": 1})
    # Close a batch before its events span more than this much event time (ms); 0: no limit.
    max_batch_span_ms: int = field(default=0, metadata={"ge": 0})
    max_message_bytes: int = field(default=4_194_304, metadata={"ge": 1024})
    # Bytes fetched per partition per request. Small values interleave partitions, so a
    # backlog (a replay, a restart) is consumed in roughly event-time order across
    # partitions instead of one partition's whole history after another. A message
    # larger than this is still returned whole (the protocol returns the first batch).
    max_partition_fetch_bytes: int = field(default=65_536, metadata={"ge": 1024})
    # Bytes per fetch response over all partitions (soft, like the per-partition limit).
    # Tansu fills a response from the first partition up to this limit, so it must stay
    # small for the interleaving above to happen there.
    fetch_max_bytes: int = field(default=131_072, metadata={"ge": 1024})
    # What librdkafka (client "confluent") fetches ahead of the consumer, in KiB
    # (queued.max.messages.kbytes). Its default, 64 MiB, kept ~60-80 MiB more resident
    # in the joined-feedback soak than 4 MiB with no loss of streaming throughput
    # (bench.soak --feedback, bench.stream_throughput); kafka-python fetches on demand.
    client_queue_kbytes: int = field(default=4096, metadata={"ge": 64})
    session_timeout_ms: int = field(default=6000, metadata={"ge": 1000})
    heartbeat_interval_ms: int = field(default=1000, metadata={"ge": 100})
    request_timeout_ms: int = field(default=30000, metadata={"ge": 1000})
    startup_timeout_s: float = field(default=30.0, metadata={"gt": 0.0})
    prefetch_batches: int = field(default=4, metadata={"ge": 1})
    # "earliest" | "latest" | "committed" | an event time: epoch ms, or ISO-8601 (see above).
    start_at: str | int = "earliest"
    # None: verify record CRCs only when the C implementation (package ``crc32c``) is
    # installed; kafka-python's pure-Python CRC-32C costs about half the consumer's time.
    check_crcs: bool | None = None
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: ``start_at`` as an event time in epoch ms; None when it names a start (set by __post_init__).
    start_at_ms: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        try:
            object.__setattr__(self, "start_at_ms", parse_start_at(self.start_at))
        except ValueError as exc:
            problems.append(str(exc))
        if not self.bootstrap_servers or any(not s.strip() for s in self.bootstrap_servers):
            problems.append(f"bootstrap_servers must list at least one host:port, got {self.bootstrap_servers!r}")
        if not self.topic:
            problems.append("topic must not be empty")
        if not self.dead_letter_topic or self.dead_letter_topic == self.topic:
            problems.append(f"dead_letter_topic must be set and differ from topic, got {self.dead_letter_topic!r}")
        if not self.group_id:
            problems.append("group_id must not be empty (offsets are committed to it)")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            problems.append(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                f"session_timeout_ms ({self.session_timeout_ms})"
            )
        if self.request_timeout_ms <= self.session_timeout_ms:
            # kafka-python refuses a consumer otherwise; say so at config time.
            problems.append(
                f"request_timeout_ms ({self.request_timeout_ms}) must exceed "
                f"session_timeout_ms ({self.session_timeout_ms})"
            )
        if problems:
            raise ValueError("; ".join(problems))


def parse_start_at(value: object) -> int | None:
    """``start_at`` as epoch milliseconds, or None for "earliest"/"latest"/"committed".

    An integer (or a string of digits) is epoch ms, >= 0 (Kafka record timestamps are not
    negative); another string is one of the names or an ISO-8601 time
    (``datetime.fromisoformat``: a zone offset is honoured, a time without one is UTC, as
    `stream.event_time.parse_event_time` reads them), truncated to whole milliseconds.
    Anything else is a ValueError naming the field and the accepted forms.
    """
    if isinstance(value, str) and value in START_AT_NAMES:
        return None
    if isinstance(value, (str, int)):
        try:
            ms = parse_event_time(value)
        except ValueError:
            ms = -1
        if 0 <= ms < 2**63:
            return ms
    raise ValueError(f"start_at must be {_START_AT_FORMS}; got {value!r}")


#: Security settings passed through to kafka-python when they are not None.
_SECURITY_OPTIONS: tuple[str, ...] = (
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
)


def native_crc32c_available() -> bool:
    """Whether kafka-python computes CRC-32C in C (the ``crc32c`` package) rather than in Python."""
    from kafka.record import util

    return util.crc32c_c is not None


def resolve_check_crcs(config: StreamConfig) -> bool:
    """``config.check_crcs``, with None resolved by `native_crc32c_available`."""
    return native_crc32c_available() if config.check_crcs is None else config.check_crcs


def kafka_client_options(config: StreamConfig) -> dict[str, Any]:
    """Keyword arguments shared by KafkaConsumer, KafkaProducer and KafkaAdminClient.

    Bootstrap servers, request timeout and security settings; security options left at
    None are omitted so kafka-python keeps its own defaults.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": list(config.bootstrap_servers),
        "request_timeout_ms": config.request_timeout_ms,
        "security_protocol": config.security_protocol,
    }
    for name in _SECURITY_OPTIONS:
        value = getattr(config, name)
        if value is not None:
            options[name] = value
    return options


@dataclass(frozen=True)
class FeedbackConfig:
    """How labels reach the trainer: on each event, or joined from impressions and later clicks.

    ``mode = "labelled"`` (default): every event carries its ``label`` (DESIGN.md's click
    event). ``"joined"``: the topic also carries impressions (the click event without
    ``label``) and clicks (``type = "click"``, the impression's ``event_id``, the click's
    own ``ts``); `stream.joiner` labels each impression once the event-time watermark has
    passed its ``ts`` + ``label_window_s``: 1 if a click with ``ts`` within the window
    joined it, else 0. Labelled events may share the topic and pass straight through.

    ``late_click_policy``: what a click after the window (but within
    ``click_horizon_s`` of its impression) does: ``"drop"`` counts it; ``"fnw"`` trains a
    duplicate positive of the impression, and every joined example is weighted by the
    fake-negative-weighted loss (Ktena et al., RecSys 2019). ``max_pending``: impressions
    held at once (waiting for their window, or for late clicks under fnw); beyond it the
    oldest are emitted early (or forgotten, if already emitted) and counted.
    ``dedup_ids``: event ids remembered to drop a message sent twice (a producer retry),
    for labelled events and impressions alike. ``idle_partition_s``: a partition with no
    new message for that long (wall time) stops holding the watermark back.

    ``clicks_topic``: where clicks arrive when not on ``[stream] topic`` ("": the same
    topic). It must have as many partitions as the impressions' topic, and a click must
    go to the partition number of its impression (same key, same partitioner).
    """

    # The defaults are bench.delayed_feedback's best trade-off (README, "Delayed feedback"):
    # FNW after a window at about the median click delay.
    mode: Literal["labelled", "joined"] = "labelled"
    label_window_s: float = field(default=300.0, metadata={"ge": 0.0})
    late_click_policy: Literal["drop", "fnw"] = "fnw"
    click_horizon_s: float = field(default=3_600.0, metadata={"ge": 0.0})
    max_pending: int = field(default=1_000_000, metadata={"ge": 1})
    dedup_ids: int = field(default=100_000, metadata={"ge": 0})
    idle_partition_s: float = field(default=30.0, metadata={"gt": 0.0})
    clicks_topic: str = ""

    def __post_init__(self) -> None:
        if self.click_horizon_s < self.label_window_s:
            raise ValueError(
                f"click_horizon_s ({self.click_horizon_s}) must be at least label_window_s ({self.label_window_s})"
            )

    @property
    def joined(self) -> bool:
        return self.mode == "joined"
