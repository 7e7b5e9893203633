"""Validation of JSON click events into columns: a compiled fast path and a reference check.

A JSON message is one event object (see `stream.codec` for the format and the reject
reasons). Python's ``json`` plus a field-by-field check in Python cost ~25 us an event
(~35k events/s on one core), CPU the consumer thread takes from the training step on a
small machine, so `JsonColumns.add_messages` reads each message in two tiers (together
~4x faster on good messages; ``python -m bench.stream_throughput`` shows both):

* **fast path**: msgspec decodes the bytes straight into typed structs built from the
  schema (`plan_json`), validating every field in C. It accepts a *subset* of what the
  reference check accepts, with the same values, so it never changes an outcome: any
  message it refuses, or that might parse differently in Python's ``json`` (not UTF-8,
  deeply nested, an integer literal past Python's digit limit), goes to the reference path.
* **reference path**: ``json.loads`` and the field-by-field check (event_id, ts, user_id,
  item_id, label, then each struct's features in schema order; the first failing check
  names the reason). It alone decides every reject reason and detail.

`JsonColumns.to_table` turns the accepted events into a table with the schema's Arrow
schema, with one vectorised step per column: categorical integers become their decimal
strings, and caller ids become index ids (`stream.ids.to_index_ids`) once per batch.
Null feature values and null elements inside a multi-categorical list are allowed, and
unknown keys are ignored.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from stream.events import REQUIRED_STRUCTS, EventSchema
from stream.ids import caller_keys, id_array, to_index_ids
from stream.wire import (
    BAD_LABEL,
    ID_FIELDS,
    INT64_MAX,
    INT64_MIN,
    INVALID_JSON,
    MISSING_FIELD,
    NON_FINITE,
    UINT64_MAX,
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


# --------------------------------------------------------------------------- reference checks


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
    return [_categorical(name, element) for element in v]


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

# --------------------------------------------------------------------------- fast-path types

_NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
_Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
_CallerId = _Int64 | _NonEmptyStr  # msgspec bounds ints to int64: ids past it take the reference path
_FEATURE_TYPES: dict[str, Any] = {
    "categorical": str | int | None,
    # A tuple, not a list: the collector untracks tuples of strings, so a batch's values do
    # not pile up in the old generation (a full collection of the trainer's heap takes ~0.1 s).
    "multi_categorical": tuple[str | int | None, ...] | None,
    "numeric": float | None,  # msgspec refuses NaN/Infinity literals and overflowing numbers
}
#: Whether `JsonColumns` tries the fast path at all. Production leaves it on; benchmarks and
#: tests turn it off (before building a `JsonColumns`) to measure or cross-check the
#: reference path.
USE_FAST_PATH = True
#: Longer messages are scanned for what Python's json refuses but msgspec takes (see `_fast_path_safe`).
_SCAN_FROM_BYTES = 1000
#: Python's json nests up to ~990 levels (its recursion limit); msgspec a few more.
_MAX_FAST_BRACKETS = 500


@dataclass(frozen=True)
class StructPlan:
    """How one struct (``user``, ``item``, ``context``) of a JSON event is read."""

    name: str
    required: bool
    fields: tuple[tuple[str, str, Callable[[str, Any], Any]], ...]  # (key, "struct.key", converter)
    kinds: tuple[str, ...]
    struct_type: type[msgspec.Struct]  # fields f0, f1, ... renamed to the schema's keys


@dataclass(frozen=True)
class JsonPlan:
    """Everything `JsonColumns` needs for one schema, built once (`plan_json` caches it)."""

    structs: tuple[StructPlan, ...]
    event_type: type[msgspec.Struct]
    decoder: msgspec.json.Decoder
    label_optional: bool = False  # impressions (`stream.joiner`): an absent label is null, not missing


@functools.lru_cache(maxsize=32)
def plan_json(schema: EventSchema, label_optional: bool = False) -> JsonPlan:
    """The reference checks and the msgspec types of ``schema``'s events (cached: schemas are few).

    ``label_optional``: an event without ``label`` is an impression awaiting its click
    (`stream.joiner`); its label decodes as null. A present label is checked as ever.
    """
    structs = []
    for struct in schema.structs:
        fields = schema.struct_fields(struct)
        struct_type = msgspec.defstruct(
            f"{struct.capitalize()}Features",
            [(f"f{i}", _FEATURE_TYPES[f.kind], None) for i, f in enumerate(fields)],
            rename={f"f{i}": f.name for i, f in enumerate(fields)},
            gc=False,
        )
        structs.append(StructPlan(
            struct, struct in REQUIRED_STRUCTS,
            tuple((f.name, f"{struct}.{f.name}", _CONVERTERS[f.kind]) for f in fields),
            tuple(f.kind for f in fields), struct_type,
        ))
    top: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("event_id", _NonEmptyStr), ("ts", _Int64), ("user_id", _CallerId), ("item_id", _CallerId),
    ]
    if not label_optional:
        top.append(("label", Literal[0, 1]))
    for s in structs:
        top.append((s.name, s.struct_type) if s.required else (s.name, s.struct_type | None, None))
    if label_optional:  # fields with defaults come last
        top.append(("label", Literal[0, 1] | None, None))
    event_type = msgspec.defstruct("ClickEvent", top, gc=False)
    return JsonPlan(tuple(structs), event_type, msgspec.json.Decoder(event_type), label_optional)


@functools.lru_cache(maxsize=4)
def _long_digit_run(limit: int) -> re.Pattern[bytes]:
    return re.compile(rb"[0-9]{%d}" % (limit + 1))


def _fast_path_safe(value: bytes) -> bool:
    """Whether msgspec and Python's json agree on ``value`` whenever msgspec accepts it.

    msgspec does not check the UTF-8 of values it skips (unknown keys), nests a few levels
    deeper, and has no limit on the digits of an integer; Python's json refuses those.
    """
    if not value.isascii():
        try:
            value.decode()
        except UnicodeDecodeError:
            return False
    if len(value) < _SCAN_FROM_BYTES:
        return True
    if value.count(b"[") + value.count(b"{") > _MAX_FAST_BRACKETS:
        return False
    digits = sys.get_int_max_str_digits()
    return digits == 0 or len(value) <= digits or _long_digit_run(digits).search(value) is None


class JsonColumns:
    """Accepted events of one run of JSON messages, in order; a rejected event leaves no trace."""

    def __init__(self, plan: JsonPlan) -> None:
        self.plan = plan
        self.events: list[msgspec.Struct] = []
        self._decode = plan.decoder.decode
        self._fast = USE_FAST_PATH

    @property
    def rows(self) -> int:
        return len(self.events)

    def add_messages(self, values: Sequence[bytes]) -> list[tuple[int, str, str]]:
        """Parse and validate JSON messages, keeping the good ones; (index in values, reason, detail) of the rest.

        One call per run of messages keeps the per-message Python work to a few lookups.
        """
        problems: list[tuple[int, str, str]] = []
        keep, decode, fast = self.events.append, self._decode, self._fast
        for index, value in enumerate(values):
            if fast and (len(value) < _SCAN_FROM_BYTES and value.isascii() or _fast_path_safe(value)):
                try:
                    keep(decode(value))
                    continue
                except (msgspec.DecodeError, RecursionError):
                    pass  # the reference path decides (and names the reason)
            problem = self._add_checked(value)
            if problem is not None:
                problems.append((index, *problem))
        return problems

    def _add_checked(self, value: bytes) -> tuple[str, str] | None:
        """The reference path for one message: keep it or return (reason, detail)."""
        try:
            event = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            return INVALID_JSON, f"not valid JSON: {exc}"
        except RecursionError:
            return INVALID_JSON, "not valid JSON: nested too deeply"
        if type(event) is not dict:
            return INVALID_JSON, f"a JSON event must be an object, got {type(event).__name__}"
        try:
            self.events.append(self._validate(event))
        except _Problem as problem:
            return problem.reason, problem.detail
        return None

    def _validate(self, event: dict[str, Any]) -> msgspec.Struct:
        """The reference check of a parsed event; the event as the fast path would have decoded it."""
        get = event.get
        event_id = get("event_id")
        if event_id is None:
            raise _Problem(MISSING_FIELD, "missing event_id")
        if type(event_id) is not str:
            raise _Problem(WRONG_TYPE, f"event_id must be a string, got {type(event_id).__name__} {show_value(event_id)}")
        if not event_id:
            raise _Problem(MISSING_FIELD, "empty event_id")
        ts = _checked_ts(get("ts"))
        user_id, item_id = (_checked_id(name, get(name)) for name in ID_FIELDS)
        label = get("label")
        if label is None:
            if not self.plan.label_optional:
                raise _Problem(MISSING_FIELD, "missing label")
        elif type(label) is not int or (label != 0 and label != 1):
            if type(label) is float and label - label != 0.0:
                raise _Problem(NON_FINITE, f"label is {show_value(label)}")
            raise _Problem(BAD_LABEL, f"label must be the integer 0 or 1, got {type(label).__name__} {show_value(label)}")
        structs = []
        for struct in self.plan.structs:
            obj = get(struct.name)
            if obj is None:
                if struct.required:
                    raise _Problem(MISSING_FIELD, f"missing {struct.name} object")
                obj = {}
            elif type(obj) is not dict:
                raise _Problem(WRONG_TYPE, f"{struct.name} must be an object, got {type(obj).__name__}")
            oget = obj.get
            structs.append(struct.struct_type(*(convert(qualified, oget(key)) for key, qualified, convert in struct.fields)))
        row = self.plan.event_type(
            event_id=event_id, ts=ts, user_id=user_id, item_id=item_id, label=label,
            **{struct.name: value for struct, value in zip(self.plan.structs, structs)},
        )
        _refuse_unpaired_surrogates(row)
        return row

    def to_table(self, target: pa.Schema) -> pa.Table:
        """The events added so far as a table with schema ``target`` (the schema's `arrow_schema()`).

        Transposed column by column (``map(attrgetter)``), not row by row: no per-event
        tuples, so a batch leaves little for the garbage collector to trace.
        """
        events = self.events

        def column(rows: list[msgspec.Struct], name: str) -> list[Any]:
            return list(map(attrgetter(name), rows))

        item_ids = id_array(column(events, "item_id"))
        item_index_ids = to_index_ids(item_ids)
        arrays: list[pa.Array] = [
            pa.array(column(events, "event_id"), pa.string()),
            pa.array(column(events, "ts"), pa.int64()),
            pa.array(to_index_ids(column(events, "user_id")), pa.int64()),
            pa.array(item_index_ids, pa.int64()),
            pa.array(column(events, "label"), pa.int8()),
            caller_keys(item_ids, item_index_ids),
        ]
        for struct in self.plan.structs:
            values = column(events, struct.name)
            if not struct.required:  # an absent or null ``context`` has every feature missing
                empty = struct.struct_type()
                values = [empty if v is None else v for v in values]
            children = [_feature_array(kind, column(values, f"f{i}")) for i, kind in enumerate(struct.kinds)]
            arrays.append(struct_array(children, target.field(struct.name).type, len(events)))
        return pa.Table.from_arrays(arrays, schema=target)


def _checked_ts(v: Any) -> int:
    if type(v) is int and INT64_MIN <= v <= INT64_MAX:
        return v
    if v is None:
        raise _Problem(MISSING_FIELD, "missing ts")
    if type(v) is float and v - v != 0.0:
        raise _Problem(NON_FINITE, f"ts is {show_value(v)}")
    if type(v) is int:
        raise _Problem(WRONG_TYPE, f"ts {v} is outside int64")
    raise _Problem(WRONG_TYPE, f"ts must be an integer, got {type(v).__name__} {show_value(v)}")


def _checked_id(name: str, v: Any) -> int | str:
    """A caller id: a non-empty string, or an integer that fits 64 bits (int64 or uint64)."""
    tv = type(v)
    if tv is str:
        if not v:
            raise _Problem(MISSING_FIELD, f"empty {name}")
        return v
    if tv is int:
        if not INT64_MIN <= v <= UINT64_MAX:
            raise _Problem(WRONG_TYPE, f"{name} {show_value(v)} does not fit 64 bits: send such ids as strings")
        return v
    if v is None:
        raise _Problem(MISSING_FIELD, f"missing {name}")
    if tv is float and v - v != 0.0:
        raise _Problem(NON_FINITE, f"{name} is {show_value(v)}")
    raise _Problem(WRONG_TYPE, f"{name} must be a string or an integer, got {tv.__name__} {show_value(v)}")


def _refuse_unpaired_surrogates(row: msgspec.Struct) -> None:
    r"""Python's json turns ``"\ud800"`` into a string that is not Unicode; Arrow cannot hold it."""
    stack: list[Any] = [row]
    while stack:
        value = stack.pop()
        if isinstance(value, msgspec.Struct):
            stack.extend(msgspec.structs.astuple(value))
        elif type(value) is list:
            stack.extend(value)
        elif type(value) is str and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise _Problem(INVALID_JSON, f"not valid JSON text: unpaired surrogate in {show_value(value)}") from None


# --------------------------------------------------------------------------- columns


def _feature_array(kind: str, values: Sequence[Any]) -> pa.Array:
    if kind == "numeric":
        return pa.array(values, pa.float64())
    target = pa.string() if kind == "categorical" else pa.list_(pa.string())
    try:
        return pa.array(values, target)  # all strings (or null): the common case, no inference
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    try:
        array = pa.array(values)  # integers (lists of them): cast to their decimal strings
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # strings and integers mixed, or huge
        if kind == "categorical":
            return pa.array([str(v) if type(v) is int else v for v in values], target)
        return pa.array([None if vs is None else [str(v) if type(v) is int else v for v in vs] for vs in values], target)
    return pc.cast(array, target)
