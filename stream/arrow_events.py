"""Validation of Arrow click-log messages, vectorised with pyarrow.compute.

An Arrow message is one Arrow IPC stream of many events in the click-log schema of
`stream.clicklog` (see `stream.codec` for the format and the reject reasons).
`decode_arrow_message` reads one such message and normalises it to the schema's Arrow
schema, so good rows never go through Python one by one:

- an unreadable stream is one ``invalid_arrow`` reject;
- an unusable *schema* (a required column missing, or of a type that cannot hold the
  field: ``event_id`` must be a string type, ``ts``/``label`` integer types,
  ``user_id``/``item_id`` integer or string types, dictionary-encoded too) is one
  ``missing_field``/``wrong_type`` reject for the whole message;
- row-level problems (a null identity value or ``user``/``item`` struct, an empty string
  ``event_id``/``user_id``/``item_id``, a label not 0/1, a non-finite numeric feature)
  reject that row alone, with the first of missing_field, bad_label, non_finite. Its
  payload is the row as JSON with the caller's ids (non-finite numbers written as "NaN",
  "Infinity", "-Infinity" so it stays valid JSON) with the message's partition and
  offset; the message's good rows pass.

Caller ids become int64 index ids with `stream.ids.to_index_ids`, one call per column of
a message (integer ids in [0, 2**56) stay themselves; other integers and strings hash).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stream.events import REQUIRED_STRUCTS, EventField, EventSchema
from stream.ids import caller_keys, is_id_type, to_index_ids
from stream.wire import (
    BAD_LABEL,
    COMPACT_SEPARATORS,
    ID_FIELDS,
    INTEGER_FIELDS,
    INVALID_ARROW,
    MISSING_FIELD,
    NON_FINITE,
    WRONG_TYPE,
    RawMessage,
    Reject,
    show_value,
    struct_array,
)


class _MessageProblem(Exception):
    """Internal: an Arrow message's schema cannot be used (reason, detail)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def decode_arrow_message(
    message: RawMessage, schema: EventSchema, target: pa.Schema, rejects: list[Reject], label_optional: bool = False,
) -> pa.Table | None:
    """One Arrow message's valid rows as a ``target`` table; its rejects are appended to ``rejects``.

    None when the whole message is rejected (unreadable stream or unusable schema).
    ``label_optional``: impressions (`stream.joiner`): a null or absent ``label`` stays null.
    """
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(message.value))
        source = reader.read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        rejects.append(Reject(INVALID_ARROW, message.partition, message.offset, message.value, f"not an Arrow IPC stream: {exc}"))
        return None
    try:
        return _validate_arrow(source, message, schema, target, rejects, label_optional)
    except _MessageProblem as problem:
        rejects.append(Reject(problem.reason, message.partition, message.offset, message.value, problem.detail))
    except (pa.ArrowException, ValueError, TypeError) as exc:
        # A cast that cannot hold the values (a uint64 ts beyond int64, ...): the message's types are unusable.
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


def _empty_string(values: pa.Array) -> pa.Array | None:
    """Mask of empty strings (an empty id is a missing one); None if there are none."""
    if pa.types.is_dictionary(values.type):
        if not _is_string(values.type.value_type):
            return None
        values = values.dictionary_decode()
    elif not _is_string(values.type):
        return None
    mask = pc.fill_null(pc.equal(pc.binary_length(values), 0), False)
    return mask if pc.any(mask).as_py() else None


def _filled(values: pa.Array) -> pa.Array:
    """Null ids replaced by a placeholder: their rows are rejected as missing_field anyway."""
    if values.null_count:
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        values = pc.fill_null(values, pa.scalar("" if _is_string(values.type) else 0, values.type))
    return values


def _non_finite(values: pa.Array) -> pa.Array | None:
    """Mask of non-finite floats (null where the value is null -> treated as False)."""
    if not pa.types.is_floating(values.type):
        return None
    mask = pc.invert(pc.is_finite(values))
    return pc.fill_null(mask, False) if values.null_count else mask


def _validate_arrow(
    source: pa.Table, message: RawMessage, schema: EventSchema, target: pa.Schema, rejects: list[Reject],
    label_optional: bool = False,
) -> pa.Table:
    """Normalise one Arrow message to ``target`` and drop (reject) its bad rows, vectorised."""
    rows = source.num_rows
    event_id = _column(source, "event_id", "a string type", _is_string)
    integers = {name: _column(source, name, "an integer type", pa.types.is_integer) for name in INTEGER_FIELDS}
    ids = {name: _column(source, name, "an integer or string type", is_id_type) for name in ID_FIELDS}
    if label_optional and "label" not in source.column_names:
        label = pa.nulls(rows, pa.int8())
    else:
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
    for values in (event_id, *integers.values(), *ids.values(), *(() if label_optional else (label,))):
        mask = _invalid(values)
        if mask is not None:
            missing = _or(missing, mask)
    for values in (event_id, *ids.values()):
        mask = _empty_string(values)
        if mask is not None:
            missing = _or(missing, mask)
    for struct in REQUIRED_STRUCTS:
        mask = _invalid(structs[struct])  # type: ignore[arg-type]
        if mask is not None:
            missing = _or(missing, mask)
    allowed = pa.array([0, 1, None] if label_optional else [0, 1], label.type)
    bad_label = pc.fill_null(pc.invert(pc.is_in(label, allowed)), False)
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

    caller_ids = {name: _filled(ids[name]) for name in ID_FIELDS}
    index_ids = {name: to_index_ids(caller_ids[name]) for name in ID_FIELDS}
    columns: list[pa.Array] = [
        pc.cast(event_id, pa.string()),
        *(pc.cast(integers[name], pa.int64()) for name in INTEGER_FIELDS),
        *(pa.array(index_ids[name], pa.int64()) for name in ID_FIELDS),
        # label may hold values other than 0/1 in rows about to be rejected: cast without overflow checks.
        pc.cast(label, pa.int8(), safe=False),
        caller_keys(caller_ids["item_id"], index_ids["item_id"]),
    ]
    for struct in schema.structs:
        columns.append(struct_array(children[struct], target.field(struct).type, rows))
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
        absent = [k for k in ("event_id", *INTEGER_FIELDS, *ID_FIELDS, "label", *REQUIRED_STRUCTS) if row.get(k) in (None, "")]
        return f"missing {', '.join(absent)}"
    if reason == BAD_LABEL:
        return f"label must be the integer 0 or 1, got {show_value(row.get('label'))}"
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
    return json.dumps(_finite_json(row), separators=COMPACT_SEPARATORS, default=str, allow_nan=False).encode()
