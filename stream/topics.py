"""What the broker knows about a topic: its partitions, for fixed per-worker shares."""

from __future__ import annotations

import time

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from stream.broker import BrokerUnavailableError, wait_for_broker
from stream.config import StreamConfig, kafka_client_options

RETRY_INTERVAL_S = 0.2


class TopicNotFoundError(LookupError):
    """The topic does not exist (or has no partitions) on the broker."""


def topic_partitions(config: StreamConfig, timeout_s: float | None = None) -> list[int]:
    """The partition ids of ``config.topic``, sorted.

    Waits up to ``timeout_s`` (default ``config.startup_timeout_s``) for the broker to
    answer and the topic to show up, as a worker started just before the topic was
    created needs. Raises `BrokerUnavailableError` or `TopicNotFoundError`.
    """
    timeout_s = config.startup_timeout_s if timeout_s is None else timeout_s
    options = kafka_client_options(config)
    wait_for_broker(config.bootstrap_servers, timeout_s, options)
    deadline = time.monotonic() + timeout_s
    try:
        admin = KafkaAdminClient(**options)
    except KafkaError as exc:
        raise BrokerUnavailableError(f"no Kafka broker answered at {','.join(config.bootstrap_servers)} ({type(exc).__name__})") from None
    try:
        while True:
            described = admin.describe_topics([config.topic])
            if described and not described[0].get("error_code") and described[0].get("partitions"):
                return sorted(int(p["partition"]) for p in described[0]["partitions"])
            if time.monotonic() >= deadline:
                raise TopicNotFoundError(
                    f"topic {config.topic!r} not found at {','.join(config.bootstrap_servers)} within {timeout_s:.0f} s; "
                    "create it first (multi-worker training splits its partitions between the workers)"
                )
            time.sleep(RETRY_INTERVAL_S)
    finally:
        admin.close()
