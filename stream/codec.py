"""The two wire formats of the click topic, and the decoder that validates both into one table.

**JSON**: one event per message, an object exactly like DESIGN.md's click event
(``event_id``, ``ts``, ``user_id``, ``item_id``, ``label``, ``user{...}``, ``item{...}``,
optional ``context{...}``). **Arrow**: one Arrow IPC *stream* per message holding many
events in the click-log schema of `stream.clicklog` (as Parquet logs store them).

Which one a message is: header ``content-type`` (`JSON_CONTENT_TYPE` /
`ARROW_CONTENT_TYPE`); without a known header, sniff: an Arrow IPC stream starts with the
continuation marker ``ff ff ff ff``, anything else is parsed as JSON.

`decode_messages` turns a sequence of messages into one table of valid events with the
schema's fixed Arrow schema (`EventSchema.arrow_schema`) and a list of `Reject`s. The
reject reasons are exact strings (they become Prometheus label values). ``oversize`` is
checked before parsing; a JSON event is then checked field by field (event_id, ts,
user_id, item_id, label, user, item, context; the first failing check names the reason);
an Arrow row with several problems gets the first of missing_field, bad_label,
non_finite.

**Ids.** ``user_id`` and ``item_id`` are caller ids: a non-empty string (UUID, hex hash,
ASIN, ...) or an integer. Decoded tables hold int64 *index ids*, mapped once per batch
by `stream.ids.to_index_ids` (integers in [0, 2**56) and their canonical decimal strings
are themselves, so 42 and "42" are one id; anything else is hashed). An integer id must
fit 64 bits (int64 or uint64, what an Arrow integer column holds); a longer one is
``wrong_type``: send such ids as strings. An empty string id is ``missing_field``, like
an empty ``event_id``: it names nobody. ``ts`` stays an int64 integer.

``oversize``      the message is longer than ``max_message_bytes`` (checked before parsing)
``invalid_json``  not parseable JSON (or a JSON message that is not an object), or a
                  string with an unpaired surrogate escape (``"\\ud800"``: not Unicode)
``invalid_arrow`` not a readable Arrow IPC stream
``missing_field`` a required top-level field (identity column, ``user``, ``item``) is
                  absent or null, or ``event_id``/``user_id``/``item_id`` is an empty string
``wrong_type``    a value of the wrong type: ``event_id`` not a string, ``ts`` not an
                  integer (floats and bools included) or outside int64, ``user_id``/
                  ``item_id`` neither a string nor an integer (floats, bools, lists and
                  objects included) or an integer beyond 64 bits, a struct that is not
                  an object, a categorical that is not a string or integer, a
                  multi-categorical that is not a list of them, a numeric that is not a
                  number (strings and bools included)
``bad_label``     ``label`` is present but not the integer 0 or 1. Deliberately strict
                  and uniform: ``true``, ``1.0`` and ``"1"`` are all ``bad_label``
``non_finite``    NaN or +-Infinity anywhere a number is read (Python's ``json.loads``
                  accepts the ``NaN``/``Infinity`` literals, so they are checked)

Null feature values are allowed (missing), as are null elements inside a
multi-categorical list; unknown keys are ignored; a repeated key counts with its last
value (as in Python's ``json``). Categorical integers become their decimal string (so 42
and "42" are one value for the model's hashing). JSON is read by msgspec into typed
structs where that gives the same answer, and by Python's ``json`` with field-by-field
checks otherwise; the latter alone names reject reasons (`stream.json_events`).

Arrow messages: an unreadable stream is one ``invalid_arrow`` reject. A readable stream
whose *schema* is unusable (a required column missing, or of a type that cannot hold the
field; identity columns must be a string type for ``event_id``, integer types for ``ts``
and ``label``, and integer, string, large_string or dictionary-of-string types for
``user_id``/``item_id``, so a float label *column* is a ``wrong_type`` message) is one
``missing_field``/``wrong_type`` reject for the whole message. Row-level problems (a null
identity value or ``user``/``item`` struct, an empty string id, a label not 0/1, a
non-finite numeric feature) reject that row alone: its payload is the row as JSON, with
the caller's ids (non-finite numbers written as the strings "NaN", "Infinity",
"-Infinity" so the payload stays valid JSON), with the message's partition and offset;
the message's good rows pass. Arrow validation is vectorised with pyarrow.compute, so
good rows never go through Python one by one.

Layout: this module is the public face of the wire format: the encoders, sniffing
(`is_arrow`, `count_events`) and the `decode_messages` dispatcher, and it re-exports
the types and constants of `stream.wire`. The per-format validation lives in
`stream.json_events` (JSON events, one by one) and `stream.arrow_events` (Arrow
messages, vectorised). Import from `stream.codec`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, NamedTuple

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from stream.arrow_events import decode_arrow_message
from stream.events import EventSchema
from stream.json_events import JsonColumns, JsonPlan, plan_json
from stream.wire import (
    ARROW_CONTENT_TYPE,
    ARROW_HEADERS,
    ARROW_STREAM_MARKER,
    BAD_LABEL,
    COMPACT_SEPARATORS,
    CONTENT_TYPE_HEADER,
    DETAIL_VALUE_CHARS,
    INT64_MAX,
    INT64_MIN,
    ID_FIELDS,
    INTEGER_FIELDS,
    INVALID_ARROW,
    INVALID_JSON,
    JSON_CONTENT_TYPE,
    JSON_HEADERS,
    MISSING_FIELD,
    NON_FINITE,
    OVERSIZE,
    REJECT_REASONS,
    UINT64_MAX,
    WRONG_TYPE,
    Decoded,
    RawMessage,
    Reject,
)

__all__ = [  # the public API: every name other modules import from here
    "ARROW_CONTENT_TYPE",
    "ARROW_HEADERS",
    "ARROW_STREAM_MARKER",
    "BAD_LABEL",
    "CONTENT_TYPE_HEADER",
    "DETAIL_VALUE_CHARS",
    "INT64_MAX",
    "INT64_MIN",
    "ID_FIELDS",
    "INTEGER_FIELDS",
    "UINT64_MAX",
    "INVALID_ARROW",
    "INVALID_JSON",
    "JSON_CONTENT_TYPE",
    "JSON_HEADERS",
    "MISSING_FIELD",
    "NON_FINITE",
    "OVERSIZE",
    "REJECT_REASONS",
    "WRONG_TYPE",
    "Decoded",
    "EventTimes",
    "RawMessage",
    "Reject",
    "count_events",
    "decode_messages",
    "drop_leading_events",
    "event_times",
    "encode_arrow_batch",
    "encode_json_event",
    "is_arrow",
    "table_to_json_events",
]


# --------------------------------------------------------------------------- encoding


def encode_json_event(row: dict[str, Any]) -> bytes:
    """One event as a compact JSON message (NaN/Infinity would be written as their literals)."""
    return json.dumps(row, separators=COMPACT_SEPARATORS).encode()


def table_to_json_events(table: pa.Table, chunk_rows: int = 8192) -> Iterator[bytes]:
    """Every row of a click-log table as a JSON message, in table order (chunked to bound memory)."""
    dumps = json.dumps
    for start in range(0, table.num_rows, chunk_rows):
        for row in table.slice(start, chunk_rows).to_pylist():
            yield dumps(row, separators=COMPACT_SEPARATORS).encode()


def encode_arrow_batch(table: pa.Table) -> bytes:
    """A click-log table as one Arrow IPC stream message (uncompressed: the topic may compress)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def is_arrow(message: RawMessage) -> bool:
    """Whether a message is to be read as Arrow: by its content-type header, else by sniffing."""
    for key, value in message.headers:
        if key == CONTENT_TYPE_HEADER:  # the common case, exactly as this package writes it
            if value == JSON_CONTENT_TYPE:
                return False
            if value == ARROW_CONTENT_TYPE:
                return True
        if value is not None and key.lower() == CONTENT_TYPE_HEADER:
            media = value.split(b";", 1)[0].strip().lower()
            if media == ARROW_CONTENT_TYPE:
                return True
            if media == JSON_CONTENT_TYPE:
                return False
    return message.value[:4] == ARROW_STREAM_MARKER


def count_events(message: RawMessage, max_message_bytes: int) -> int:
    """How many events a message carries (rows of an Arrow stream; 1 otherwise, also when it is bad).

    Cheap (Arrow reads are zero-copy); the consumer uses it to cut batches at message
    boundaries.
    """
    if len(message.value) > max_message_bytes or not is_arrow(message):
        return 1
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(message.value))
        rows = sum(batch.num_rows for batch in reader)
    except (pa.ArrowException, OSError, ValueError):
        return 1
    return max(rows, 1)


class EventTimes(NamedTuple):
    """What `event_times` read from a message: its events, the first at or after a time, the latest."""

    events: int  # as `count_events` counts them
    first_at_or_after: int | None  # index of the first event whose ts >= the time asked for
    max_ts: int | None  # the largest readable ts; None when no event has one


class _TsOnly(msgspec.Struct):
    ts: Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)] | None = None


_TS_ONLY = msgspec.json.Decoder(_TsOnly)


def _json_ts(message: RawMessage) -> int | None:
    """A JSON event's ``ts`` when it is an integer (int64); None otherwise."""
    try:
        return _TS_ONLY.decode(message.value).ts
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _arrow_ts(message: RawMessage) -> tuple[int, pa.ChunkedArray | None]:
    """An Arrow message's events (as `count_events` counts them) and its integer ``ts`` column, if any."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(message.value)).read_all()
    except (pa.ArrowException, OSError, ValueError):
        return 1, None
    if "ts" not in table.column_names or not pa.types.is_integer(table.schema.field("ts").type):
        return max(table.num_rows, 1), None
    return max(table.num_rows, 1), table.column("ts")


def event_times(message: RawMessage, since_ms: int, max_message_bytes: int) -> EventTimes:
    """The event times a message carries, for starting a partition at an event time.

    Reads only ``ts``: a JSON event's ``ts`` when it is an integer (int64), an Arrow
    message's integer ``ts`` column (null rows have none). A message that is oversize or
    unreadable, or lacks a usable ``ts``, has no event at or after any time (one event, as
    `count_events` says). The rest of the event is not validated here: the decoder does
    that for what is kept.
    """
    if len(message.value) > max_message_bytes:
        return EventTimes(1, None, None)
    if not is_arrow(message):
        ts = _json_ts(message)
        return EventTimes(1, None, None) if ts is None else EventTimes(1, 0 if ts >= since_ms else None, ts)
    rows, ts = _arrow_ts(message)
    if ts is None:
        return EventTimes(rows, None, None)
    at_or_after = pc.fill_null(pc.greater_equal(ts, pa.scalar(since_ms, pa.int64())), False)
    first = pc.index(at_or_after, True).as_py()
    return EventTimes(rows, None if first < 0 else first, pc.max(ts).as_py())


def event_span(message: RawMessage, max_message_bytes: int) -> tuple[int, tuple[int, int] | None]:
    """A message's events (as `count_events` counts them) and the earliest and latest ``ts`` they carry.

    One read for both, so cutting batches by event time (``[stream] max_batch_span_ms``)
    costs the consumer no extra parse. Reads only ``ts``, as `event_times` does; the range
    is None when no event has a usable one (such a message does not limit a batch's span:
    the decoder dead-letters what is invalid).
    """
    if len(message.value) > max_message_bytes:
        return 1, None
    if not is_arrow(message):
        ts = _json_ts(message)
        return 1, None if ts is None else (ts, ts)
    rows, ts = _arrow_ts(message)
    if ts is None:
        return rows, None
    low, high = pc.min_max(ts).values()
    return rows, (low.as_py(), high.as_py()) if low.is_valid else None


def event_time_range(message: RawMessage, max_message_bytes: int) -> tuple[int, int] | None:
    """The earliest and latest ``ts`` a message carries (see `event_span`)."""
    return event_span(message, max_message_bytes)[1]


def drop_leading_events(message: RawMessage, count: int) -> RawMessage:
    """``message`` without its first ``count`` events (an Arrow message, re-encoded; same headers and offset)."""
    if count <= 0:
        return message
    table = pa.ipc.open_stream(pa.py_buffer(message.value)).read_all()
    return message._replace(value=encode_arrow_batch(table.slice(count)))


# --------------------------------------------------------------------------- decoding


def decode_messages(
    messages: Sequence[RawMessage], schema: EventSchema, max_message_bytes: int, label_optional: bool = False,
) -> Decoded:
    """Validate and decode ``messages`` (any mix of JSON and Arrow) into valid rows and rejects.

    Pure function, safe to call from any thread. Valid rows keep message order (rows of
    one Arrow message keep their order); rejects are listed in message order too.
    ``label_optional``: events without a label are impressions (`stream.joiner`), their
    label null.
    """
    target = schema.arrow_schema()
    plan = plan_json(schema, label_optional)
    rejects: list[Reject] = []
    parts: list[pa.Table] = []
    valid: Counter[int] = Counter()
    run: list[RawMessage] = []  # consecutive JSON messages, decoded in one call

    def flush_json() -> None:
        if run:
            parts.append(_decode_json_run(run, plan, target, rejects, valid))
            run.clear()

    for message in messages:
        if len(message.value) > max_message_bytes:
            flush_json()  # keeps rejects in message order
            rejects.append(
                Reject(OVERSIZE, message.partition, message.offset, message.value,
                       f"{len(message.value)} bytes > max_message_bytes {max_message_bytes}")
            )
        elif is_arrow(message):
            flush_json()
            table = decode_arrow_message(message, schema, target, rejects, label_optional)
            if table is not None and table.num_rows:
                parts.append(table)
                valid[message.partition] += table.num_rows
        else:
            run.append(message)
    flush_json()
    parts = [part for part in parts if part.num_rows] or [JsonColumns(plan).to_table(target)]
    table = parts[0] if len(parts) == 1 else pa.concat_tables(parts).combine_chunks()
    return Decoded(table, rejects, {partition: n for partition, n in valid.items() if n})


def _decode_json_run(
    run: list[RawMessage], plan: JsonPlan, target: pa.Schema, rejects: list[Reject], valid: Counter[int]
) -> pa.Table:
    """Valid events of consecutive JSON messages as one table; their rejects and valid counts are added."""
    columns = JsonColumns(plan)
    valid.update(message.partition for message in run)
    for index, reason, detail in columns.add_messages([message.value for message in run]):
        message = run[index]
        rejects.append(Reject(reason, message.partition, message.offset, message.value, detail))
        valid[message.partition] -= 1
    return columns.to_table(target)
