"""Validation of JSON click events, one message at a time, into column lists.

A JSON message is one event object (see `stream.codec` for the format and the reject
reasons). `JsonColumns.add` parses and checks it field by field (event_id, ts,
user_id, item_id, label, then each struct's features in schema order; the first failing
check names the reason) and appends a valid event to per-column lists;
`JsonColumns.to_table` turns them into a table with the schema's Arrow schema. Null
feature values and null elements inside a multi-categorical list are allowed, unknown
keys are ignored, and categorical integers become their decimal string.

Used by `stream.codec.decode_messages`; `plan_structs` precomputes, once per call, how
each struct's fields are read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import pyarrow as pa

from stream.events import REQUIRED_STRUCTS, EventSchema
from stream.wire import (
    BAD_LABEL,
    INT64_MAX,
    INT64_MIN,
    INTEGER_FIELDS,
    INVALID_JSON,
    MISSING_FIELD,
    NON_FINITE,
    WRONG_TYPE,
    show_value,
    struct_array,
)


class _Problem(Exception):
    """Internal: a JSON event fails a check (reason, detail)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def _categorical(name: str, v: Any) -> str | None:
    tv = type(v)
    if tv is str:
        return v
    if tv is int:
        return str(v)
    if v is None:
        return None
    if tv is float and v - v != 0.0:
        raise _Problem(NON_FINITE, f"{name} is {show_value(v)}")
    raise _Problem(WRONG_TYPE, f"{name} must be a string or integer, got {tv.__name__} {show_value(v)}")


def _multi_categorical(name: str, v: Any) -> list[str | None] | None:
    if v is None:
        return None
    if type(v) is not list:
        raise _Problem(WRONG_TYPE, f"{name} must be a list, got {type(v).__name__} {show_value(v)}")
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
            raise _Problem(NON_FINITE, f"{name} is {show_value(v)}")
        return v
    if tv is int:
        try:
            return float(v)
        except OverflowError:
            raise _Problem(WRONG_TYPE, f"{name} is too large for a float") from None
    if v is None:
        return None
    raise _Problem(WRONG_TYPE, f"{name} must be a number, got {tv.__name__} {show_value(v)}")


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "categorical": _categorical,
    "multi_categorical": _multi_categorical,
    "numeric": _numeric,
}


class StructPlan(NamedTuple):
    """How one struct (``user``, ``item``, ``context``) of a JSON event is read."""

    name: str
    required: bool
    fields: tuple[tuple[str, str, Callable[[str, Any], Any]], ...]  # (key, "struct.key", converter)


def plan_structs(schema: EventSchema) -> tuple[StructPlan, ...]:
    """Each struct of ``schema`` with its fields' keys, qualified names and converters, in schema order."""
    return tuple(
        StructPlan(
            struct,
            struct in REQUIRED_STRUCTS,
            tuple((f.name, f"{struct}.{f.name}", _CONVERTERS[f.kind]) for f in schema.struct_fields(struct)),
        )
        for struct in schema.structs
    )


class JsonColumns:
    """Column lists filled event by event; a rejected event leaves no trace in them."""

    def __init__(self, plan: tuple[StructPlan, ...]) -> None:
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
            raise _Problem(WRONG_TYPE, f"event_id must be a string, got {type(event_id).__name__} {show_value(event_id)}")
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
                raise _Problem(NON_FINITE, f"label is {show_value(label)}")
            raise _Problem(BAD_LABEL, f"label must be the integer 0 or 1, got {type(label).__name__} {show_value(label)}")
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
        """The events added so far as a table with schema ``target`` (the schema's `arrow_schema()`)."""
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
            arrays.append(struct_array(children, struct_type, self.rows))
        return pa.Table.from_arrays(arrays, schema=target)


def _bad_integer(name: str, v: Any) -> int:
    """Raise the right problem for a top-level integer field that is not a valid int64."""
    if v is None:
        raise _Problem(MISSING_FIELD, f"missing {name}")
    if type(v) is float and v - v != 0.0:
        raise _Problem(NON_FINITE, f"{name} is {show_value(v)}")
    if type(v) is int:
        raise _Problem(WRONG_TYPE, f"{name} {v} is outside int64")
    raise _Problem(WRONG_TYPE, f"{name} must be an integer, got {type(v).__name__} {show_value(v)}")
