"""The click-log contract shared by Parquet logs, JSON messages and Arrow IPC batches.

One row is one impression with its label. Identity columns are top-level; the features
of each tower live in a struct column named after the tower (``user``, ``item``), so a
row maps one-to-one onto the JSON event of DESIGN.md. Which struct members are features,
and of which kind, is decided by the feature spec in the config, never here.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
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
#: Rows per Parquet row group of the logs written here: a reader holds at least one row
#: group in memory, so smaller groups keep `ClickLogScan`'s chunks the bound on memory.
ROW_GROUP_EVENTS = 131_072
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
    pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_EVENTS)
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


@dataclass(frozen=True)
class ClickLogScan:
    """Rows of a click log (a Parquet file, or a directory of them) with ``since_ms <= ts < until_ms``.

    Read in chunks of about ``chunk_rows`` rows through a pyarrow dataset, so memory is
    bounded by the chunk, not the log. Files of a directory are read in path order and
    each file in row order: the log must be in event-time order, as `inttower data`
    writes it (a directory of daily files named by date is). ``rows`` counts the matching
    rows without reading the columns.
    """

    path: Path
    chunk_rows: int = 262_144
    since_ms: int | None = None
    until_ms: int | None = None

    def _dataset(self) -> ds.Dataset:
        if not self.path.exists():
            raise ClickLogError(f"{self.path}: no such click-log file or directory")
        try:
            dataset = ds.dataset(self.path, format="parquet")
        except (pa.ArrowInvalid, OSError) as exc:
            raise ClickLogError(f"{self.path}: not a readable Parquet file or directory ({exc})") from exc
        if not dataset.files:
            raise ClickLogError(f"{self.path}: no Parquet files in it")
        validate_schema(dataset.schema, str(self.path))
        return dataset

    def _filter(self) -> ds.Expression | None:
        conditions = []
        if self.since_ms is not None:
            conditions.append(ds.field("ts") >= self.since_ms)
        if self.until_ms is not None:
            conditions.append(ds.field("ts") < self.until_ms)
        return functools.reduce(operator.and_, conditions) if conditions else None

    def rows(self) -> int:
        return self._dataset().count_rows(filter=self._filter())

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[pa.Table]:
        """Matching rows ``[start, stop)`` in log order, as tables of up to ``chunk_rows`` with index ids."""
        scanner = self._dataset().scanner(filter=self._filter(), batch_size=self.chunk_rows, use_threads=False,
                                         batch_readahead=0, fragment_readahead=0)
        seen, pending, pending_rows = 0, [], 0
        for batch in scanner.to_batches():
            lo, hi = max(start - seen, 0), len(batch) if stop is None else min(len(batch), stop - seen)
            seen += len(batch)
            if hi > lo:
                pending.append(batch.slice(lo, hi - lo))
                pending_rows += hi - lo
            if pending_rows >= self.chunk_rows:
                yield self._table(pending)
                pending, pending_rows = [], 0
            if stop is not None and seen >= stop:
                break
        if pending:
            yield self._table(pending)

    def _table(self, batches: list[pa.RecordBatch]) -> pa.Table:
        try:
            return with_index_ids(pa.Table.from_batches(batches))
        except ValueError as exc:
            raise ClickLogError(f"{self.path}: {exc}") from None
