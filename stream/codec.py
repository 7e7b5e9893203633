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

``oversize``      the message is longer than ``max_message_bytes`` (checked before parsing)
``invalid_json``  not parseable JSON (or a JSON message that is not an object)
``invalid_arrow`` not a readable Arrow IPC stream
``missing_field`` a required top-level field (identity column, ``user``, ``item``) is
                  absent or null, or ``event_id`` is empty
``wrong_type``    a value of the wrong type: ``event_id`` not a string, ``ts``/``user_id``/
                  ``item_id`` not an integer (floats and bools included) or outside int64,
                  a struct that is not an object, a categorical that is not a string or
                  integer, a multi-categorical that is not a list of them, a numeric that
                  is not a number (strings and bools included)
``bad_label``     ``label`` is present but not the integer 0 or 1. Deliberately strict
                  and uniform: ``true``, ``1.0`` and ``"1"`` are all ``bad_label``
``non_finite``    NaN or +-Infinity anywhere a number is read (Python's ``json.loads``
                  accepts the ``NaN``/``Infinity`` literals, so they are checked)

Null feature values are allowed (missing), as are null elements inside a
multi-categorical list; unknown keys are ignored. Categorical integers become their
decimal string (so 42 and "42" are one value for the model's hashing).

Arrow messages: an unreadable stream is one ``invalid_arrow`` reject. A readable stream
whose *schema* is unusable (a required column missing, or of a type that cannot hold the
field; identity columns must be a string type for ``event_id`` and integer types for
``ts``, ``user_id``, ``item_id`` and ``label``, so a float label *column* is a
``wrong_type`` message) is one ``missing_field``/``wrong_type`` reject for the whole
message. Row-level problems (a null identity value or ``user``/``item`` struct, a label
not 0/1, a non-finite numeric feature) reject that row alone: its payload is the row as JSON (non-finite numbers written as the strings
"NaN", "Infinity", "-Infinity" so the payload stays valid JSON), with the message's
partition and offset; the message's good rows pass. Arrow validation is vectorised with
pyarrow.compute, so good rows never go through Python one by one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stream.events import EventField, EventSchema, REQUIRED_STRUCTS

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
#: Top-level integer fields of an event, in the order they are checked.
INTEGER_FIELDS: tuple[str, ...] = ("ts", "user_id", "item_id")
#: Characters of a value quoted in a reject's detail.
DETAIL_VALUE_CHARS = 60
_COMPACT = (",", ":")


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


# --------------------------------------------------------------------------- encoding


def encode_json_event(row: dict[str, Any]) -> bytes:
    """One event as a compact JSON message (NaN/Infinity would be written as their literals)."""
    return json.dumps(row, separators=_COMPACT).encode()


def table_to_json_events(table: pa.Table, chunk_rows: int = 8192) -> Iterator[bytes]:
    """Every row of a click-log table as a JSON message, in table order (chunked to bound memory)."""
    dumps = json.dumps
    for start in range(0, table.num_rows, chunk_rows):
        for row in table.slice(start, chunk_rows).to_pylist():
            yield dumps(row, separators=_COMPACT).encode()


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


# --------------------------------------------------------------------------- decoding


def decode_messages(messages: Sequence[RawMessage], schema: EventSchema, max_message_bytes: int) -> Decoded:
    """Validate and decode ``messages`` (any mix of JSON and Arrow) into valid rows and rejects.

    Pure function, safe to call from any thread. Valid rows keep message order (rows of
    one Arrow message keep their order); rejects are listed in message order too.
    """
    target = schema.arrow_schema()
    plan = _plan(schema)
    rejects: list[Reject] = []
    parts: list[pa.Table] = []
    columns = _JsonColumns(plan)
    for message in messages:
        if len(message.value) > max_message_bytes:
            rejects.append(
                Reject(OVERSIZE, message.partition, message.offset, message.value,
                       f"{len(message.value)} bytes > max_message_bytes {max_message_bytes}")
            )
        elif is_arrow(message):
            if columns.rows:
                parts.append(columns.to_table(target))
                columns = _JsonColumns(plan)
            table = _decode_arrow(message, schema, target, rejects)
            if table is not None and table.num_rows:
                parts.append(table)
        else:
            problem = columns.add(message.value)
            if problem is not None:
                rejects.append(Reject(problem[0], message.partition, message.offset, message.value, problem[1]))
    if columns.rows or not parts:
        parts.append(columns.to_table(target))
    table = parts[0] if len(parts) == 1 else pa.concat_tables(parts).combine_chunks()
    return Decoded(table, rejects)


# ---- JSON


class _Problem(Exception):
    """Internal: a JSON event fails a check (reason, detail)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= DETAIL_VALUE_CHARS else text[: DETAIL_VALUE_CHARS - 3] + "..."


def _categorical(name: str, v: Any) -> str | None:
    tv = type(v)
    if tv is str:
        return v
    if tv is int:
        return str(v)
    if v is None:
        return None
    if tv is float and v - v != 0.0:
        raise _Problem(NON_FINITE, f"{name} is {_show(v)}")
    raise _Problem(WRONG_TYPE, f"{name} must be a string or integer, got {tv.__name__} {_show(v)}")


def _multi_categorical(name: str, v: Any) -> list[str | None] | None:
    if v is None:
        return None
    if type(v) is not list:
        raise _Problem(WRONG_TYPE, f"{name} must be a list, got {type(v).__name__} {_show(v)}")
    out: list[str | None] = []
    for element in v:
        te = type(element)
        if te is str:
            out.append(element)
        elif te is int:
            out.append(str(element))
        else:
            out.append(_categorical(name, element))
    return out


def _numeric(name: str, v: Any) -> float | None:
    tv = type(v)
    if tv is float:
        if v - v != 0.0:
            raise _Problem(NON_FINITE, f"{name} is {_show(v)}")
        return v
    if tv is int:
        try:
            return float(v)
        except OverflowError:
            raise _Problem(WRONG_TYPE, f"{name} is too large for a float") from None
    if v is None:
        return None
    raise _Problem(WRONG_TYPE, f"{name} must be a number, got {tv.__name__} {_show(v)}")


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "categorical": _categorical,
    "multi_categorical": _multi_categorical,
    "numeric": _numeric,
}


class _StructPlan(NamedTuple):
    name: str
    required: bool
    fields: tuple[tuple[str, str, Callable[[str, Any], Any]], ...]  # (key, "struct.key", converter)


def _plan(schema: EventSchema) -> tuple[_StructPlan, ...]:
    return tuple(
        _StructPlan(
            struct,
            struct in REQUIRED_STRUCTS,
            tuple((f.name, f"{struct}.{f.name}", _CONVERTERS[f.kind]) for f in schema.struct_fields(struct)),
        )
        for struct in schema.structs
    )


class _JsonColumns:
    """Column lists filled event by event; a rejected event leaves no trace in them."""

    def __init__(self, plan: tuple[_StructPlan, ...]) -> None:
        self.plan = plan
        self.rows = 0
        self.event_id: list[str] = []
        self.ts: list[int] = []
        self.user_id: list[int] = []
        self.item_id: list[int] = []
        self.label: list[int] = []
        self.features: list[list[Any]] = [[] for s in plan for _ in s.fields]

    def add(self, value: bytes) -> tuple[str, str] | None:
        """Parse and validate one JSON message; append it or return (reason, detail)."""
        try:
            event = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            return INVALID_JSON, f"not valid JSON: {exc}"
        except RecursionError:
            return INVALID_JSON, "not valid JSON: nested too deeply"
        if type(event) is not dict:
            return INVALID_JSON, f"a JSON event must be an object, got {type(event).__name__}"
        try:
            row = self._validate(event)
        except _Problem as problem:
            return problem.reason, problem.detail
        event_id, ts, user_id, item_id, label, values = row
        self.event_id.append(event_id)
        self.ts.append(ts)
        self.user_id.append(user_id)
        self.item_id.append(item_id)
        self.label.append(label)
        for column, v in zip(self.features, values):
            column.append(v)
        self.rows += 1
        return None

    def _validate(self, event: dict[str, Any]) -> tuple[str, int, int, int, int, list[Any]]:
        get = event.get
        event_id = get("event_id")
        if event_id is None:
            raise _Problem(MISSING_FIELD, "missing event_id")
        if type(event_id) is not str:
            raise _Problem(WRONG_TYPE, f"event_id must be a string, got {type(event_id).__name__} {_show(event_id)}")
        if not event_id:
            raise _Problem(MISSING_FIELD, "empty event_id")
        ints = []
        for name in INTEGER_FIELDS:
            v = get(name)
            if type(v) is not int or not INT64_MIN <= v <= INT64_MAX:
                ints.append(_bad_integer(name, v))
            else:
                ints.append(v)
        label = get("label")
        if label is None:
            raise _Problem(MISSING_FIELD, "missing label")
        if type(label) is not int or (label != 0 and label != 1):
            if type(label) is float and label - label != 0.0:
                raise _Problem(NON_FINITE, f"label is {_show(label)}")
            raise _Problem(BAD_LABEL, f"label must be the integer 0 or 1, got {type(label).__name__} {_show(label)}")
        values: list[Any] = []
        for struct in self.plan:
            obj = get(struct.name)
            if obj is None:
                if struct.required:
                    raise _Problem(MISSING_FIELD, f"missing {struct.name} object")
                obj = {}
            elif type(obj) is not dict:
                raise _Problem(WRONG_TYPE, f"{struct.name} must be an object, got {type(obj).__name__}")
            oget = obj.get
            for key, qualified, convert in struct.fields:
                v = oget(key)
                # Fast paths for the common well-typed values; the converters handle the rest.
                tv = type(v)
                if tv is str and convert is _categorical:
                    values.append(v)
                elif tv is float and convert is _numeric and v - v == 0.0:
                    values.append(v)
                else:
                    values.append(convert(qualified, v))
        return event_id, ints[0], ints[1], ints[2], label, values

    def to_table(self, target: pa.Schema) -> pa.Table:
        arrays: list[pa.Array] = [
            pa.array(self.event_id, pa.string()),
            pa.array(self.ts, pa.int64()),
            pa.array(self.user_id, pa.int64()),
            pa.array(self.item_id, pa.int64()),
            pa.array(self.label, pa.int8()),
        ]
        columns = iter(self.features)
        for struct in self.plan:
            struct_type = target.field(struct.name).type
            children = [pa.array(next(columns), struct_type.field(i).type) for i in range(len(struct.fields))]
            arrays.append(_struct(children, struct_type, self.rows))
        return pa.Table.from_arrays(arrays, schema=target)


def _bad_integer(name: str, v: Any) -> int:
    """Raise the right problem for a top-level integer field that is not a valid int64."""
    if v is None:
        raise _Problem(MISSING_FIELD, f"missing {name}")
    if type(v) is float and v - v != 0.0:
        raise _Problem(NON_FINITE, f"{name} is {_show(v)}")
    if type(v) is int:
        raise _Problem(WRONG_TYPE, f"{name} {v} is outside int64")
    raise _Problem(WRONG_TYPE, f"{name} must be an integer, got {type(v).__name__} {_show(v)}")


def _struct(children: list[pa.Array], struct_type: pa.StructType, rows: int) -> pa.Array:
    if not children:  # a struct with no fields still needs its length
        return pa.array([{}] * rows, struct_type)
    return pa.StructArray.from_arrays(children, fields=list(struct_type))


# ---- Arrow


class _MessageProblem(Exception):
    """Internal: an Arrow message's schema cannot be used (reason, detail)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def _decode_arrow(message: RawMessage, schema: EventSchema, target: pa.Schema, rejects: list[Reject]) -> pa.Table | None:
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(message.value))
        source = reader.read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        rejects.append(Reject(INVALID_ARROW, message.partition, message.offset, message.value, f"not an Arrow IPC stream: {exc}"))
        return None
    try:
        return _validate_arrow(source, message, schema, target, rejects)
    except _MessageProblem as problem:
        rejects.append(Reject(problem.reason, message.partition, message.offset, message.value, problem.detail))
    except (pa.ArrowException, ValueError, TypeError) as exc:
        # A cast that cannot hold the values (uint64 ids beyond int64, ...): the message's types are unusable.
        rejects.append(Reject(WRONG_TYPE, message.partition, message.offset, message.value, f"Arrow values cannot be converted: {exc}"))
    return None


def _column(source: pa.Table, name: str, kind: str, check: Callable[[pa.DataType], bool]) -> pa.Array:
    if name not in source.column_names:
        raise _MessageProblem(MISSING_FIELD, f"Arrow message has no column {name!r}")
    column = source.column(name)
    if not check(column.type):
        raise _MessageProblem(WRONG_TYPE, f"Arrow column {name!r} has type {column.type}, expected {kind}")
    return _single_chunk(column)


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0)
    if column.num_chunks == 0:
        return pa.array([], column.type)
    return column.combine_chunks()


def _is_string(tp: pa.DataType) -> bool:
    return pa.types.is_string(tp) or pa.types.is_large_string(tp)


def _is_categorical(tp: pa.DataType) -> bool:
    if pa.types.is_dictionary(tp):
        tp = tp.value_type
    return _is_string(tp) or pa.types.is_integer(tp) or pa.types.is_null(tp)


def _is_multi(tp: pa.DataType) -> bool:
    return (pa.types.is_list(tp) or pa.types.is_large_list(tp)) and _is_categorical(tp.value_type)


def _is_number(tp: pa.DataType) -> bool:
    return pa.types.is_integer(tp) or pa.types.is_floating(tp) or pa.types.is_null(tp)


_FIELD_CHECKS: dict[str, tuple[str, Callable[[pa.DataType], bool]]] = {
    "categorical": ("a string or integer type", _is_categorical),
    "multi_categorical": ("a list of strings or integers", _is_multi),
    "numeric": ("an integer or floating type", _is_number),
}


def _or(a: pa.Array | None, b: pa.Array) -> pa.Array:
    return b if a is None else pc.or_(a, b)


def _invalid(values: pa.Array) -> pa.Array | None:
    return pc.is_null(values) if values.null_count else None


def _non_finite(values: pa.Array) -> pa.Array | None:
    """Mask of non-finite floats (null where the value is null -> treated as False)."""
    if not pa.types.is_floating(values.type):
        return None
    mask = pc.invert(pc.is_finite(values))
    return pc.fill_null(mask, False) if values.null_count else mask


def _validate_arrow(
    source: pa.Table, message: RawMessage, schema: EventSchema, target: pa.Schema, rejects: list[Reject]
) -> pa.Table:
    """Normalise one Arrow message to ``target`` and drop (reject) its bad rows, vectorised."""
    rows = source.num_rows
    event_id = _column(source, "event_id", "a string type", _is_string)
    integers = {name: _column(source, name, "an integer type", pa.types.is_integer) for name in INTEGER_FIELDS}
    label = _column(source, "label", "an integer type", pa.types.is_integer)
    structs: dict[str, pa.Array | None] = {}
    for struct in schema.structs:
        if struct not in source.column_names:
            if struct in REQUIRED_STRUCTS:
                raise _MessageProblem(MISSING_FIELD, f"Arrow message has no struct column {struct!r}")
            structs[struct] = None
            continue
        structs[struct] = _column(source, struct, "a struct", pa.types.is_struct)

    # Row masks, by reason (the first failing check in REASON order wins per row).
    missing: pa.Array | None = None
    for values in (event_id, *integers.values(), label):
        mask = _invalid(values)
        if mask is not None:
            missing = _or(missing, mask)
    empty_id = pc.fill_null(pc.equal(pc.binary_length(event_id), 0), False)
    if pc.any(empty_id).as_py():
        missing = _or(missing, empty_id)
    for struct in REQUIRED_STRUCTS:
        mask = _invalid(structs[struct])  # type: ignore[arg-type]
        if mask is not None:
            missing = _or(missing, mask)
    bad_label = pc.fill_null(pc.invert(pc.is_in(label, pa.array([0, 1], label.type))), False)
    bad_label = bad_label if pc.any(bad_label).as_py() else None

    children: dict[str, list[pa.Array]] = {}
    non_finite: pa.Array | None = None
    for struct in schema.structs:
        array = structs[struct]
        out: list[pa.Array] = []
        for f in schema.struct_fields(struct):
            values = _struct_child(array, f, rows)
            mask = _non_finite(values) if f.kind == "numeric" else None
            if mask is not None and pc.any(mask).as_py():
                non_finite = _or(non_finite, mask)
            out.append(_normalise(values, f))
        children[struct] = out

    columns: list[pa.Array] = [
        pc.cast(event_id, pa.string()),
        *(pc.cast(integers[name], pa.int64()) for name in INTEGER_FIELDS),
    ]
    # label may hold values other than 0/1 in rows about to be rejected: cast without overflow checks.
    columns.append(pc.cast(label, pa.int8(), safe=False))
    for struct in schema.structs:
        columns.append(_struct(children[struct], target.field(struct).type, rows))
    table = pa.Table.from_arrays(columns, schema=target)

    bad = None
    for mask in (missing, bad_label, non_finite):
        if mask is not None:
            bad = _or(bad, mask)
    if bad is None or not pc.any(bad).as_py():
        return table
    _reject_rows(source, message, missing, bad_label, non_finite, rejects)
    return table.filter(pc.invert(bad))


def _struct_child(array: pa.Array | None, f: EventField, rows: int) -> pa.Array:
    """Values of field ``f`` from a struct column; all-null if the struct or the member is absent."""
    if array is None or array.type.get_field_index(f.name) < 0:
        return pa.nulls(rows, f.arrow_type)
    child_type = array.type.field(f.name).type
    kind, check = _FIELD_CHECKS[f.kind]
    if not check(child_type):
        raise _MessageProblem(WRONG_TYPE, f"Arrow field {f.struct}.{f.name} has type {child_type}, expected {kind}")
    return pc.struct_field(array, f.name)


def _normalise(values: pa.Array, f: EventField) -> pa.Array:
    if values.type == f.arrow_type:
        return values
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if f.kind == "multi_categorical" and pa.types.is_dictionary(values.type.value_type):
        values = pc.cast(values, pa.list_(values.type.value_type.value_type))
    # Numeric: int64 -> float64 may round huge ids; that is fine for a numeric feature.
    return pc.cast(values, f.arrow_type, safe=f.kind != "numeric")


def _reject_rows(
    source: pa.Table,
    message: RawMessage,
    missing: pa.Array | None,
    bad_label: pa.Array | None,
    non_finite: pa.Array | None,
    rejects: list[Reject],
) -> None:
    """One Reject per bad row (only bad rows are converted to Python)."""
    rows = source.num_rows
    reason_of = np.full(rows, "", dtype=object)
    # Fill in reverse priority so the highest-priority reason is written last.
    for reason, mask in ((NON_FINITE, non_finite), (BAD_LABEL, bad_label), (MISSING_FIELD, missing)):
        if mask is not None:
            reason_of[mask.to_numpy(zero_copy_only=False)] = reason
    indices = np.flatnonzero(reason_of != "")
    bad_rows = source.take(pa.array(indices)).to_pylist()
    for index, row in zip(indices.tolist(), bad_rows):
        reason = reason_of[index]
        rejects.append(
            Reject(reason, message.partition, message.offset, _row_json(row), f"row {index} of {rows}: {_row_detail(reason, row)}")
        )


def _row_detail(reason: str, row: dict[str, Any]) -> str:
    if reason == MISSING_FIELD:
        absent = [k for k in ("event_id", *INTEGER_FIELDS, "label", *REQUIRED_STRUCTS) if row.get(k) in (None, "")]
        return f"missing {', '.join(absent)}"
    if reason == BAD_LABEL:
        return f"label must be the integer 0 or 1, got {_show(row.get('label'))}"
    return "a numeric feature is NaN or infinite"


def _finite_json(value: Any) -> Any:
    """Replace non-finite floats by their names so the JSON stays valid."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _row_json(row: dict[str, Any]) -> bytes:
    return json.dumps(_finite_json(row), separators=_COMPACT, default=str, allow_nan=False).encode()
