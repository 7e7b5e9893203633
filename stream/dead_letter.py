"""Writing rejected input to the dead-letter topic, with the reason and the source location.

The payload is the rejected message (or, for one bad row of an Arrow message, that row
as JSON). Headers carry ``reason``, ``detail``, ``source-topic``, ``source-partition`` and
``source-offset`` (ASCII bytes), the key is ``b"PARTITION:OFFSET"``, so an operator can
find, fix and re-publish what was dropped. Counting for Prometheus is the caller's job
(from its `Reject` list); `counts` here is a convenience for status lines.

A dead-letter failure must never stop training: send errors are logged and counted in
`failed`, never raised.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError

from stream.codec import Reject
from stream.config import StreamConfig, kafka_client_options

log = logging.getLogger(__name__)

#: Longest ``detail`` header written (characters); details are diagnostics, not data.
MAX_DETAIL_CHARS = 1000
#: Room for headers, key and record framing on top of the payload in one produce request.
REQUEST_OVERHEAD_BYTES = 64 * 1024
#: How long `flush` and `close` wait for outstanding sends.
FLUSH_TIMEOUT_S = 10.0
HEADER_TRUNCATED = "payload-truncated-from"


class DeadLetterWriter:
    """Sends `Reject`s to ``config.dead_letter_topic`` through its own KafkaProducer.

    Payloads longer than ``config.max_message_bytes`` (an ``oversize`` message) are
    truncated to that size, with header ``payload-truncated-from`` giving the original
    length, so the dead-letter topic never needs a larger message limit than the source.
    Not thread-safe: call it from one thread (the trainer's loop).
    """

    def __init__(self, config: StreamConfig, producer: KafkaProducer | None = None) -> None:
        self.topic = config.dead_letter_topic
        self.max_payload_bytes = config.max_message_bytes
        self._producer = producer or KafkaProducer(
            acks="all",
            linger_ms=50,
            max_request_size=config.max_message_bytes + REQUEST_OVERHEAD_BYTES,
            **kafka_client_options(config),
        )
        self.counts: collections.Counter[str] = collections.Counter()
        self.failed = 0  # sends that failed; updated from the producer's I/O thread
        self._failed_lock = threading.Lock()

    def write(self, rejects: Sequence[Reject], source_topic: str) -> None:
        """Queue every reject for sending (asynchronous; `flush` waits for delivery)."""
        for reject in rejects:
            payload = reject.payload
            headers = [
                ("reason", reject.reason.encode()),
                ("detail", reject.detail[:MAX_DETAIL_CHARS].encode("utf-8", "replace")),
                ("source-topic", source_topic.encode()),
                ("source-partition", str(reject.partition).encode()),
                ("source-offset", str(reject.offset).encode()),
            ]
            if len(payload) > self.max_payload_bytes:
                headers.append((HEADER_TRUNCATED, str(len(payload)).encode()))
                payload = payload[: self.max_payload_bytes]
            try:
                future = self._producer.send(
                    self.topic, value=payload, key=f"{reject.partition}:{reject.offset}".encode(), headers=headers
                )
            except KafkaError as exc:
                self._failed(reject, exc)
                continue
            future.add_errback(self._failed, reject)
            self.counts[reject.reason] += 1

    def _failed(self, reject: Reject, exc: BaseException) -> None:
        with self._failed_lock:
            self.failed += 1
        log.error(
            "could not dead-letter %s message %d:%d to %s: %s", reject.reason, reject.partition, reject.offset, self.topic, exc
        )

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait (bounded) until queued rejects are delivered; a timeout is logged, not raised."""
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            log.error("dead-letter flush to %s did not finish: %s", self.topic, exc)

    def close(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Flush and close the producer."""
        self.flush(timeout_s)
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> DeadLetterWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
