"""Replay a feedback log (`stream.delays`) as the two streams production has: impressions, then clicks.

Each row goes out as an impression (the click event without ``label``) at its ``ts``
and, where ``click_ts`` is set, as a click message at ``click_ts``; all messages in
event-time order (an impression before a click of the same time), JSON, keyed by
``str(user_id)`` so an impression and its clicks land on the same partition (what the
joiner's producer contract asks; `stream.replay` keys labelled events the same way).

At the end every partition gets a watermark message (`stream.feedback_wire`) at
``end_watermark_ms``, by default the log's last event time: the producer's promise that
nothing earlier follows, so the joiner labels what it can without waiting for new
traffic. Pass a later time (tests, benchmarks: past the last impression's window) to
have every impression labelled; never one later than traffic that may still come.
"""

from __future__ import annotations

import heapq
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from stream.clicklog import read_click_log
from stream.codec import JSON_HEADERS, table_to_json_events
from stream.config import StreamConfig
from stream.delays import CLICK_TS_COLUMN, is_feedback_log
from stream.feedback_wire import TYPE_HEADER, encode_click, encode_watermark
from stream.replay import JSON_CHUNK_ROWS, ReplayProducer, ReplaySummary, _due_times, _Pacer, record_timestamp

log = logging.getLogger(__name__)
CLICK_HEADERS = [*JSON_HEADERS, (TYPE_HEADER, b"click")]
WATERMARK_HEADERS = [*JSON_HEADERS, (TYPE_HEADER, b"watermark")]


def replay_feedback(
    source: pa.Table | str | Path,
    config: StreamConfig,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    progress: bool = True,
    stamp_event_times: bool = False,
    end_watermark_ms: int | None = None,
    clicks_topic: str | None = None,
) -> ReplaySummary:
    """Produce impressions, clicks and the closing watermarks of a feedback log (see the module docstring).

    ``rate``/``speedup`` pace by messages / by event time as `stream.replay.replay` does.
    ``clicks_topic``: send the clicks there (same keys, so the same partition numbers
    when both topics have as many partitions); both topics get the closing watermarks.
    Returns the impressions as ``events`` and every message sent as ``messages``.
    """
    table = source if isinstance(source, pa.Table) else read_click_log(source, index_ids=False)
    if not is_feedback_log(table.schema):
        raise ValueError(f"a feedback log needs a {CLICK_TS_COLUMN!r} column (see `inttower data synthetic --delays`)")
    table = table.take(pc.sort_indices(table, sort_keys=[("ts", "ascending")]))
    impressions = table.drop_columns(["label", CLICK_TS_COLUMN])
    ts = table.column("ts").to_numpy()
    click_ts = table.column(CLICK_TS_COLUMN)
    clicked = np.flatnonzero(click_ts.is_valid().to_numpy(zero_copy_only=False))
    click_times = click_ts.to_numpy(zero_copy_only=False)[clicked].astype(np.int64) if len(clicked) else np.zeros(0, np.int64)
    event_ids = table.column("event_id").to_pylist()
    keys = [str(u).encode() for u in table.column("user_id").to_pylist()]
    # Merge by time: (time, 0 = impression / 1 = click, row): an impression precedes a click of its own time.
    order = list(heapq.merge(((int(t), 0, i) for i, t in enumerate(ts)),
                             sorted((int(t), 1, int(i)) for t, i in zip(click_times, clicked))))
    due = _due_times(np.array([t for t, _, _ in order], dtype=np.int64), rate, speedup)
    producer, pacer = ReplayProducer(config), _Pacer()
    bodies = _impression_bodies(impressions)
    bar = tqdm(total=len(order), unit="msg", desc=f"replay feedback -> {config.topic}", disable=not progress)
    try:
        for n, (when, kind, row) in enumerate(order):
            if due is not None:
                pacer.wait(float(due[n]))
            stamp = record_timestamp(when, stamp_event_times)
            if kind == 0:
                producer.send(config.topic, value=bodies[row], key=keys[row], headers=JSON_HEADERS, timestamp_ms=stamp)
            else:
                producer.send(clicks_topic or config.topic, value=encode_click(event_ids[row], when), key=keys[row],
                              headers=CLICK_HEADERS, timestamp_ms=stamp)
            if producer.sent % JSON_CHUNK_ROWS == 0:
                bar.update(JSON_CHUNK_ROWS)
        bar.update(producer.sent % JSON_CHUNK_ROWS)
        last = max(int(ts.max()) if len(ts) else 0, int(click_times.max()) if len(click_times) else 0)
        end = last if end_watermark_ms is None else end_watermark_ms
        for topic in dict.fromkeys((config.topic, clicks_topic or config.topic)):
            for partition in producer.partitions(topic):
                producer.send(topic, value=encode_watermark(end), partition=partition, headers=WATERMARK_HEADERS,
                              timestamp_ms=record_timestamp(end, stamp_event_times))
        producer.flush()
    finally:
        bar.close()
        producer.close()
    seconds = time.monotonic() - pacer.start
    log.info("replayed %d impressions and %d clicks (%d messages) to %s in %.1f s", table.num_rows, len(clicked),
             producer.sent, config.topic, seconds)
    return ReplaySummary(table.num_rows, producer.sent, seconds, table.num_rows / seconds if seconds > 0 else 0.0)


def _impression_bodies(impressions: pa.Table) -> list[bytes]:
    return list(table_to_json_events(impressions, JSON_CHUNK_ROWS))
