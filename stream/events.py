"""The event schema the decoder validates against: which feature fields exist, of which kind.

The feature spec lives in the TOML config (the model package owns it); the application
turns it into an `EventSchema` so this package never imports the model. The schema fixes
the decoded table's Arrow schema, whatever the wire format (JSON or Arrow IPC) and
whatever types a producer used, so every `Batch` the consumer hands out has one schema:

* the five identity columns of `stream.clicklog.IDENTITY_COLUMNS` (``user_id`` and
  ``item_id`` as int64 index ids, `stream.ids`), then ``item_key``: the caller's item id
  as a string where it differs from the index id (string ids), null otherwise;
* struct columns ``user`` and ``item`` (and ``context`` only if a field uses it), each
  holding exactly the schema's fields of that struct, in schema order;
* categorical values as strings (the model hashes a value's string form, so the integer
  42 and the string "42" are one value), multi-categorical values as lists of strings,
  numeric values as float64.

Feature values may be null (missing); the structs themselves are never null in decoded
tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import pyarrow as pa

from stream.clicklog import IDENTITY_COLUMNS

FieldKind = Literal["categorical", "multi_categorical", "numeric"]
StructName = Literal["user", "item", "context"]

#: Decoded tables' column of the caller's item ids where they are not their own index ids.
ITEM_KEY_COLUMN = "item_key"
#: Struct columns in the order they appear in decoded tables.
STRUCT_ORDER: tuple[StructName, ...] = ("user", "item", "context")
#: Structs every event must carry; ``context`` is optional.
REQUIRED_STRUCTS: tuple[StructName, ...] = ("user", "item")

#: The Arrow type a decoded value of each kind has.
KIND_TYPES: dict[str, pa.DataType] = {
    "categorical": pa.string(),
    "multi_categorical": pa.list_(pa.string()),
    "numeric": pa.float64(),
}


@dataclass(frozen=True)
class EventField:
    """One feature field: its name inside struct ``struct`` and how its values are typed."""

    name: str
    kind: FieldKind
    struct: StructName

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("event field name must not be empty")
        if self.kind not in get_args(FieldKind):
            raise ValueError(f"event field {self.name!r}: unknown kind {self.kind!r} (expected one of {get_args(FieldKind)})")
        if self.struct not in STRUCT_ORDER:
            raise ValueError(f"event field {self.name!r}: unknown struct {self.struct!r} (expected one of {STRUCT_ORDER})")

    @property
    def arrow_type(self) -> pa.DataType:
        return KIND_TYPES[self.kind]


@dataclass(frozen=True)
class EventSchema:
    """The feature fields events must carry (values may be null), grouped by struct."""

    fields: tuple[EventField, ...]

    def __post_init__(self) -> None:
        seen: set[tuple[str, str]] = set()
        for f in self.fields:
            if (f.struct, f.name) in seen:
                raise ValueError(f"event field {f.struct}.{f.name} is declared twice")
            seen.add((f.struct, f.name))

    @classmethod
    def of(cls, fields: Iterable[tuple[str, FieldKind, StructName]]) -> EventSchema:
        """Build from ``(name, kind, struct)`` triples, e.g. derived from a feature spec."""
        return cls(tuple(EventField(name, kind, struct) for name, kind, struct in fields))

    @classmethod
    def infer(cls, schema: pa.Schema) -> EventSchema:
        """Guess a schema from a click log's Arrow schema (for tools and tests, not production).

        Every member of the ``user``/``item``/``context`` structs becomes a field: strings,
        integers and dictionaries are categorical, lists multi-categorical, floats numeric.
        Members of other types are skipped. The feature spec remains the authority: an
        integer column meant as a number is guessed wrong here.
        """
        fields: list[EventField] = []
        for struct in STRUCT_ORDER:
            if struct not in schema.names or not pa.types.is_struct(schema.field(struct).type):
                continue
            for child in schema.field(struct).type:
                kind = _guess_kind(child.type)
                if kind is not None:
                    fields.append(EventField(child.name, kind, struct))
        return cls(tuple(fields))

    def struct_fields(self, struct: StructName) -> tuple[EventField, ...]:
        """The fields of one struct, in schema order."""
        return tuple(f for f in self.fields if f.struct == struct)

    @property
    def structs(self) -> tuple[StructName, ...]:
        """Struct columns of decoded tables: ``user``, ``item``, and ``context`` if used."""
        return tuple(s for s in STRUCT_ORDER if s in REQUIRED_STRUCTS or self.struct_fields(s))

    def struct_type(self, struct: StructName) -> pa.StructType:
        return pa.struct([pa.field(f.name, f.arrow_type) for f in self.struct_fields(struct)])

    def arrow_schema(self) -> pa.Schema:
        """The fixed schema of every decoded table (see the module docstring)."""
        columns = [pa.field(name, tp) for name, tp in IDENTITY_COLUMNS.items()]
        columns.append(pa.field(ITEM_KEY_COLUMN, pa.string()))
        columns += [pa.field(s, self.struct_type(s)) for s in self.structs]
        return pa.schema(columns)


def _guess_kind(tp: pa.DataType) -> FieldKind | None:
    if pa.types.is_dictionary(tp):
        tp = tp.value_type
    if pa.types.is_string(tp) or pa.types.is_large_string(tp) or pa.types.is_integer(tp):
        return "categorical"
    if pa.types.is_list(tp) or pa.types.is_large_list(tp):
        return "multi_categorical"
    if pa.types.is_floating(tp):
        return "numeric"
    return None
