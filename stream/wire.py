"""The click topic's wire-format vocabulary, shared by the encoders and both decoders.

Message and result types (`RawMessage`, `Reject`, `Decoded`), the content-type header
constants, the reject reason strings and a few helpers the JSON and Arrow decoders
share. What each reason means is documented in `stream.codec`, which re-exports all of
this; import from there. This module exists so that `stream.codec`,
`stream.json_events` and `stream.arrow_events` can share these names without importing
one another in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa

from stream.clicklog import ID_COLUMNS

# ---- wire-format identification
CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = b"application/json"
ARROW_CONTENT_TYPE = b"application/vnd.apache.arrow.stream"
JSON_HEADERS: list[tuple[str, bytes]] = [(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE)]
ARROW_HEADERS: list[tuple[str, bytes]] = [(CONTENT_TYPE_HEADER, ARROW_CONTENT_TYPE)]
#: The first four bytes of every Arrow IPC stream message (format >= 0.15).
ARROW_STREAM_MARKER = b"\xff\xff\xff\xff"

# ---- reject reasons (exact strings: Prometheus label values)
OVERSIZE = "oversize"
INVALID_JSON = "invalid_json"
INVALID_ARROW = "invalid_arrow"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
BAD_LABEL = "bad_label"
NON_FINITE = "non_finite"
REJECT_REASONS: tuple[str, ...] = (OVERSIZE, INVALID_JSON, INVALID_ARROW, MISSING_FIELD, WRONG_TYPE, BAD_LABEL, NON_FINITE)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Largest integer id a JSON message may carry: an integer id must fit 64 bits (int64 or
#: uint64, what an Arrow integer column holds); a longer one must be sent as a string.
UINT64_MAX = 2**64 - 1
#: Top-level fields that must be integers (int64), in the order they are checked.
INTEGER_FIELDS: tuple[str, ...] = ("ts",)
#: Caller-id fields (integers or strings), checked after `INTEGER_FIELDS`, mapped to int64
#: index ids by `stream.ids.to_index_ids`.
ID_FIELDS: tuple[str, ...] = ID_COLUMNS
#: Characters of a value quoted in a reject's detail.
DETAIL_VALUE_CHARS = 60
#: ``json.dumps`` separators for compact messages and reject payloads.
COMPACT_SEPARATORS = (",", ":")


class RawMessage(NamedTuple):
    """One Kafka message as the decoder needs it (``timestamp_ms``: the broker/producer time)."""

    partition: int
    offset: int
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


@dataclass(frozen=True)
class Reject:
    """One rejected message or Arrow row: what to dead-letter and count.

    ``payload`` is the message bytes, or for a single bad row of an Arrow message that
    row as JSON; ``partition``/``offset`` locate the source message.
    """

    reason: str
    partition: int
    offset: int
    payload: bytes
    detail: str


@dataclass(frozen=True)
class Decoded:
    """Valid events (schema.arrow_schema(), in message order) and the rejects."""

    table: pa.Table
    rejects: list[Reject]
    events_by_partition: dict[int, int] = field(default_factory=dict)  # valid rows per source partition


# ---- helpers shared by the decoders


def show_value(value: Any) -> str:
    """``repr(value)`` for a reject's detail, cut to `DETAIL_VALUE_CHARS`."""
    text = repr(value)
    return text if len(text) <= DETAIL_VALUE_CHARS else text[: DETAIL_VALUE_CHARS - 3] + "..."


def struct_array(children: list[pa.Array], struct_type: pa.StructType, rows: int) -> pa.Array:
    """A struct column of ``rows`` rows from its child arrays (in ``struct_type``'s field order)."""
    if not children:  # a struct with no fields still needs its length
        return pa.array([{}] * rows, struct_type)
    return pa.StructArray.from_arrays(children, fields=list(struct_type))
