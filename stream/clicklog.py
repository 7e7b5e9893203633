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

#: Top-level columns every click log carries, with their Arrow types.
IDENTITY_COLUMNS: dict[str, pa.DataType] = {
    "event_id": pa.string(),
    "ts": pa.int64(),  # event time, milliseconds since the Unix epoch
    "user_id": pa.int64(),
    "item_id": pa.int64(),
    "label": pa.int8(),  # 0 or 1
}
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
        if actual != expected:
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


def read_click_log(path: str | Path) -> pa.Table:
    """Read and validate a Parquet click log written by `write_click_log` or by a user."""
    path = Path(path)
    if not path.is_file():
        raise ClickLogError(f"{path}: no such click-log file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ClickLogError(f"{path}: not a readable Parquet file ({exc})") from exc
    validate_schema(table.schema, str(path))
    return table
