"""The click-log contract shared by Parquet logs, JSON messages and Arrow IPC batches.

One row is one impression with its label. Identity columns are top-level; the features
of each tower live in a struct column named after the tower (``user``, ``item``), so a
row maps one-to-one onto the JSON event of DESIGN.md. Which struct members are features,
and of which kind, is decided by the feature spec in the config, never here.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stream.ids import is_id_type, to_index_ids

#: Top-level columns every click log carries, with their Arrow types.
IDENTITY_COLUMNS: dict[str, pa.DataType] = {
    "event_id": pa.string(),
    "ts": pa.int64(),  # event time, milliseconds since the Unix epoch
    "user_id": pa.int64(),  # index id; a log may carry the caller's string ids instead
    "item_id": pa.int64(),
    "label": pa.int8(),  # 0 or 1
}
#: Identity columns that a log may hold as strings or integers of any width (caller ids,
#: mapped to int64 index ids by `stream.ids.to_index_ids` where the trainer needs them).
ID_COLUMNS: tuple[str, ...] = ("user_id", "item_id")
TOWER_COLUMNS: tuple[str, ...] = ("user", "item")
OPTIONAL_TOWER_COLUMNS: tuple[str, ...] = ("context",)  # user-tower side, optional


def click_log_schema(user: pa.StructType, item: pa.StructType) -> pa.Schema:
    """The identity columns followed by the two tower structs, as every log writer uses."""
    return pa.schema([*IDENTITY_COLUMNS.items(), ("user", user), ("item", item)])


class ClickLogError(ValueError):
    """A click-log file does not follow the contract; the message names file and column."""


def validate_schema(schema: pa.Schema, source: str) -> None:
    """Raise `ClickLogError` naming ``source`` if ``schema`` breaks the contract."""
    for name, expected in IDENTITY_COLUMNS.items():
        if name not in schema.names:
            raise ClickLogError(f"{source}: missing column {name!r} (expected {expected})")
        actual = schema.field(name).type
        if name in ID_COLUMNS:
            if not is_id_type(actual):
                raise ClickLogError(f"{source}: column {name!r} has type {actual}, expected integers or strings")
        elif actual != expected:
            raise ClickLogError(f"{source}: column {name!r} has type {actual}, expected {expected}")
    for name in TOWER_COLUMNS:
        if name not in schema.names or not pa.types.is_struct(schema.field(name).type):
            raise ClickLogError(f"{source}: missing struct column {name!r} (the {name} tower's fields)")


def write_click_log(table: pa.Table, path: str | Path) -> Path:
    """Validate and write ``table`` to Parquet atomically (temp file, then rename)."""
    path = Path(path)
    validate_schema(table.schema, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return path


def read_click_log(path: str | Path, index_ids: bool = True) -> pa.Table:
    """Read and validate a Parquet click log written by `write_click_log` or by a user.

    With ``index_ids`` (the default) string or non-int64 id columns are mapped to int64
    index ids (`with_index_ids`), as the trainer needs; ``index_ids=False`` keeps the
    caller's ids (replay sends those, so that readers can answer in them).
    """
    path = Path(path)
    if not path.is_file():
        raise ClickLogError(f"{path}: no such click-log file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ClickLogError(f"{path}: not a readable Parquet file ({exc})") from exc
    validate_schema(table.schema, str(path))
    if index_ids:
        try:
            table = with_index_ids(table)
        except ValueError as exc:
            raise ClickLogError(f"{path}: {exc}") from None
    return table


def with_index_ids(table: pa.Table) -> pa.Table:
    """``table`` with ``user_id``/``item_id`` as int64 index ids (`stream.ids.to_index_ids`).

    Raises ValueError naming the column on a null or unusable id.
    """
    for name in ID_COLUMNS:
        try:
            ids = to_index_ids(table.column(name))
        except ValueError as exc:
            raise ValueError(f"column {name!r}: {exc}") from None
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(ids, pa.int64()))
    return table
