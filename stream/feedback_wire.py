"""The wire format of delayed feedback: impressions, clicks and watermarks on the click topic.

With ``[feedback] mode = "joined"`` a message is one of:

* an **event**: DESIGN.md's click event. Without ``label`` it is an *impression*
  awaiting its click; with ``label`` a labelled event, as in ``"labelled"`` mode.
* a **click**: ``{"type": "click", "event_id": <the impression's event_id>, "ts": <the
  click's event time, ms>, "kind": <optional string>}``.
* a **watermark**: ``{"type": "watermark", "ts": <ms>}``: the producer promises no
  later message on this partition has a smaller ``ts`` (a replay ends each partition
  with one, so the last impressions get their labels without waiting for new traffic).

Which one: header ``inttower-type`` (``impression``, ``event``, ``click``, ``watermark``),
else a JSON object's ``type`` field (absent: an event). Arrow messages are events,
unless the header says ``click``: then an Arrow IPC stream with columns ``event_id``
(string), ``ts`` (integer) and optional ``kind`` (string), one click per row.

`decode_feedback` splits a batch's messages, decodes the events with optional labels
(`stream.codec.decode_messages`), validates the clicks, and reports per partition the
largest event time seen, what the joiner's watermark needs. A bad click is a `Reject`
with the codec's reasons; an unknown ``type`` is ``wrong_type``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stream.codec import decode_messages, is_arrow
from stream.events import EventSchema
from stream.wire import (
    COMPACT_SEPARATORS,
    INT64_MAX,
    INT64_MIN,
    INVALID_ARROW,
    INVALID_JSON,
    MISSING_FIELD,
    WRONG_TYPE,
    RawMessage,
    Reject,
    show_value,
)

TYPE_HEADER = "inttower-type"
EVENT_TYPES = ("event", "impression")
CLICK_TYPE = "click"
WATERMARK_TYPE = "watermark"
#: The decoded clicks' columns: the impression answered, the click's event time, its kind.
CLICK_SCHEMA = pa.schema([("event_id", pa.string()), ("ts", pa.int64()), ("kind", pa.string()),
                          ("partition", pa.int32()), ("offset", pa.int64())])


class _TypeOnly(msgspec.Struct):
    type: Any = None


_type_decoder = msgspec.json.Decoder(_TypeOnly)


@dataclass
class FeedbackDecoded:
    """A batch of joined-mode messages, decoded: events (label null for impressions), clicks, watermarks."""

    events: pa.Table
    event_partitions: np.ndarray  # int32, the partition of each events row
    clicks: pa.Table  # CLICK_SCHEMA, message order
    rejects: list[Reject]
    max_ts: dict[int, int] = field(default_factory=dict)  # per partition: largest ts of any message in the batch
    events_by_partition: dict[int, int] = field(default_factory=dict)


def message_type(message: RawMessage) -> str:
    """``event``, ``click``, ``watermark``, or the unknown type named (header first, then JSON ``type``)."""
    for key, value in message.headers:
        if key == TYPE_HEADER:
            named = value.decode("utf-8", "replace")
            return "event" if named in EVENT_TYPES else named
    if is_arrow(message) or b'"type"' not in message.value:
        return "event"
    try:
        named = _type_decoder.decode(message.value).type
    except (msgspec.DecodeError, RecursionError):
        return "event"  # the event decoder names what is wrong with it
    if named is None or named in EVENT_TYPES:
        return "event"
    return named if isinstance(named, str) else repr(named)


def decode_feedback(
    messages: Sequence[RawMessage], schema: EventSchema, max_message_bytes: int,
) -> FeedbackDecoded:
    """Split and decode one batch (see the module docstring). Pure: safe on the consumer thread."""
    events: list[RawMessage] = []
    clicks: list[tuple[str, int, str | None, int, int]] = []
    rejects: list[Reject] = []
    max_ts: dict[int, int] = {}

    def saw(partition: int, ts: int) -> None:
        if ts > max_ts.get(partition, INT64_MIN):
            max_ts[partition] = ts

    for message in messages:
        if len(message.value) > max_message_bytes:
            events.append(message)  # the event decoder rejects it as oversize, in message order
            continue
        kind = message_type(message)
        if kind == "event":
            events.append(message)
        elif kind == CLICK_TYPE:
            for click in _clicks_of(message, rejects):
                clicks.append(click)
                saw(message.partition, click[1])
        elif kind == WATERMARK_TYPE:
            ts = _watermark_of(message, rejects)
            if ts is not None:
                saw(message.partition, ts)
        else:
            rejects.append(Reject(WRONG_TYPE, message.partition, message.offset, message.value,
                                  f"type must be one of event, impression, click, watermark; got {show_value(kind)}"))
    # Decoded one partition at a time: each partition's largest event ts comes from its valid rows.
    by_partition: dict[int, list[RawMessage]] = defaultdict(list)
    for message in events:
        by_partition[message.partition].append(message)
    tables: list[pa.Table] = []
    partitions: list[np.ndarray] = []
    counts: dict[int, int] = {}
    for partition, group in by_partition.items():
        decoded = decode_messages(group, schema, max_message_bytes, label_optional=True)
        rejects.extend(decoded.rejects)
        if decoded.table.num_rows:
            saw(partition, int(pc.max(decoded.table.column("ts")).as_py()))
            tables.append(decoded.table)
            partitions.append(np.full(decoded.table.num_rows, partition, dtype=np.int32))
            counts.update(decoded.events_by_partition)
    if not tables:
        tables.append(decode_messages((), schema, max_message_bytes, label_optional=True).table)
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables).combine_chunks()
    event_partitions = np.concatenate(partitions) if partitions else np.zeros(0, dtype=np.int32)
    rejects.sort(key=lambda r: (r.partition, r.offset))
    return FeedbackDecoded(table, event_partitions, click_table(clicks), rejects, max_ts, counts)


def click_table(clicks: Sequence[tuple[str, int, str | None, int, int]]) -> pa.Table:
    """Clicks as (impression event_id, ts, kind, partition, offset) tuples -> a `CLICK_SCHEMA` table."""
    columns = list(zip(*clicks)) if clicks else [()] * len(CLICK_SCHEMA)
    return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, CLICK_SCHEMA)], schema=CLICK_SCHEMA)


def _problem_reason(problem: str) -> str:
    return MISSING_FIELD if problem.startswith("missing") else WRONG_TYPE


def _click_detail(problem: str, message: RawMessage) -> Reject:
    return Reject(_problem_reason(problem), message.partition, message.offset, message.value, problem)


_NOT_JSON = object()


def _parse_json(message: RawMessage, rejects: list[Reject]) -> Any:
    """The message's JSON value, or `_NOT_JSON` (an ``invalid_json`` reject is added)."""
    try:
        return json.loads(message.value)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        rejects.append(Reject(INVALID_JSON, message.partition, message.offset, message.value, f"not valid JSON: {exc}"))
        return _NOT_JSON


def _clicks_of(message: RawMessage, rejects: list[Reject]) -> list[tuple[str, int, str | None, int, int]]:
    """The valid clicks of one click message (JSON: one; Arrow: one per row)."""
    if is_arrow(message):
        return _arrow_clicks(message, rejects)
    body = _parse_json(message, rejects)
    if body is _NOT_JSON:
        return []
    if type(body) is not dict:
        rejects.append(Reject(INVALID_JSON, message.partition, message.offset, message.value, "a click must be a JSON object"))
        return []
    problem = _click_problem(body.get("event_id"), body.get("ts"), body.get("kind"))
    if problem is not None:
        rejects.append(_click_detail(problem, message))
        return []
    return [(body["event_id"], body["ts"], body.get("kind"), message.partition, message.offset)]


def _click_problem(event_id: Any, ts: Any, kind: Any) -> str | None:
    if event_id is None or event_id == "":
        return "missing event_id (the impression the click answers)"
    if type(event_id) is not str:
        return f"event_id must be a string, got {type(event_id).__name__} {show_value(event_id)}"
    if ts is None:
        return "missing ts"
    if type(ts) is not int or not INT64_MIN <= ts <= INT64_MAX:
        return f"ts must be an integer (epoch ms), got {type(ts).__name__} {show_value(ts)}"
    if kind is not None and type(kind) is not str:
        return f"kind must be a string, got {type(kind).__name__} {show_value(kind)}"
    return None


def _arrow_clicks(message: RawMessage, rejects: list[Reject]) -> list[tuple[str, int, str | None, int, int]]:
    try:
        table = pa.ipc.open_stream(pa.py_buffer(message.value)).read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        rejects.append(Reject(INVALID_ARROW, message.partition, message.offset, message.value, f"not an Arrow IPC stream: {exc}"))
        return []
    for name, check in (("event_id", pa.types.is_string), ("ts", pa.types.is_integer)):
        if name not in table.column_names or not check(table.schema.field(name).type):
            rejects.append(Reject(MISSING_FIELD if name not in table.column_names else WRONG_TYPE,
                                  message.partition, message.offset, message.value,
                                  f"an Arrow click message needs column {name!r} ({'string' if name == 'event_id' else 'integer'})"))
            return []
    kinds = table.column("kind").to_pylist() if "kind" in table.column_names else [None] * table.num_rows
    out = []
    for row, (event_id, ts, kind) in enumerate(zip(table.column("event_id").to_pylist(), table.column("ts").to_pylist(), kinds)):
        problem = _click_problem(event_id, ts, None if kind is None else str(kind))
        if problem is None:
            out.append((event_id, ts, kind, message.partition, message.offset))
        else:
            payload = json.dumps({"event_id": event_id, "ts": ts, "kind": kind}, default=str).encode()
            rejects.append(Reject(_problem_reason(problem), message.partition, message.offset, payload,
                                  f"row {row}: {problem}"))
    return out


def _watermark_of(message: RawMessage, rejects: list[Reject]) -> int | None:
    body = _parse_json(message, rejects)
    if body is _NOT_JSON:
        return None
    ts = body.get("ts") if type(body) is dict else None
    if type(ts) is not int or not INT64_MIN <= ts <= INT64_MAX:
        rejects.append(_click_detail("missing ts" if ts is None else f"ts must be an integer, got {show_value(ts)}", message))
        return None
    return ts


def encode_click(event_id: str, ts: int, kind: str | None = None) -> bytes:
    """One JSON click message (what `stream.replay` and tests produce)."""
    body: dict[str, Any] = {"type": CLICK_TYPE, "event_id": event_id, "ts": ts}
    if kind is not None:
        body["kind"] = kind
    return json.dumps(body, separators=COMPACT_SEPARATORS).encode()


def encode_watermark(ts: int) -> bytes:
    return json.dumps({"type": WATERMARK_TYPE, "ts": ts}, separators=COMPACT_SEPARATORS).encode()


__all__ = [
    "CLICK_SCHEMA", "CLICK_TYPE", "FeedbackDecoded", "TYPE_HEADER", "WATERMARK_TYPE",
    "click_table", "decode_feedback", "encode_click", "encode_watermark", "message_type",
]
