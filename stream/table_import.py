"""Import a user's own click log (CSV, Parquet or JSON lines) into the click-log contract.

Real logs come in their owner's schema: Avazu has ``click``, ``hour`` as YYMMDDHH and
hashed hex ids; a product log may carry ISO-8601 times and star ratings. `TableImport`
says which source column plays which part of the contract (`stream.clicklog`): event
id, event time, user and item ids, label, and the columns that go into the ``user``,
``item`` and optional ``context`` structs. Columns not named are dropped. Ids are written
as the caller had them (strings stay strings); the trainer maps them to index ids later
(`stream.ids`).

CSV is read with every column as a string: ids such as Avazu's 20-digit ``id`` overflow
int64 and hex ids like ``1fbe01fe`` must never become numbers. Time, label, rating and
the ``numeric`` struct fields are then converted explicitly (`stream.table_values`), and a
value that does not convert is reported with its file, line (CSV and JSON lines) or row,
and column.

Memory: the whole file is read at once (Arrow columns, roughly the file's size for CSV);
split files larger than memory and import the parts.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from stream.clicklog import ClickLogError
from stream.ids import is_id_type
from stream.table_values import (
    TIME_FORMATS,
    column_values,
    converted,
    event_time_ms,
    labels_from_column,
    labels_from_ratings,
    quoted,
    require_values,
    to_float,
)

FileFormat = Literal["csv", "parquet", "jsonl"]

EXTENSIONS: dict[str, FileFormat] = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
}
#: Compression suffixes Arrow decompresses by itself (CSV and JSON lines only).
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
MAX_LISTED_COLUMNS = 30


class TableImportError(ClickLogError):
    """The file or one of its values cannot become a click log; one line naming file, row, column."""


def parse_field(spec: str) -> tuple[str, str]:
    """``"src"`` or ``"src:dst"`` (rename) -> (source column, struct field name).

    The last ":" separates the new name, so a source name holding ":" needs a rename.
    """
    source, sep, target = spec.rpartition(":")
    if not sep:
        source, target = spec, spec
    if not source or not target:
        raise ValueError(f"field {spec!r}: expected 'column' or 'column:new_name'")
    return source, target


@dataclass(frozen=True)
class TableImport:
    """Which columns of a user's log become the click-log contract, and how to parse them.

    ``time_format``: "epoch_s", "epoch_ms", "iso8601" (a zone offset is honoured, a time
    without one is UTC) or a strptime format such as "%y%m%d%H" (read as UTC). Parquet
    timestamp and date columns are used as they are. ``event_id_column`` unset: each
    event gets ``"<file stem>:<row>"`` (1-based data row in file order), stable across
    re-imports of the same file but not unique across files that share a stem.

    Labels come from ``label_column`` (0/1, booleans, or "true"/"false"), or, when
    ``rating_column`` is set, from ratings: ``>= positive_min_rating`` is a click,
    ``<= negative_max_rating`` a non-click, and ratings between are dropped.

    ``user_fields``/``item_fields``/``context_fields`` list source columns for each
    struct, ``"src:dst"`` to rename; ``context`` is written only when it lists any.
    ``numeric`` names struct fields (after renaming) cast to float64; the other fields
    keep their type (strings, for CSV). ``delimiter`` unset means tab for .tsv files and
    comma otherwise; ``encoding`` applies to CSV (JSON lines are UTF-8).
    """

    format: Literal["auto", "csv", "parquet", "jsonl"] = "auto"
    delimiter: str | None = None
    encoding: str = "utf-8"
    event_id_column: str | None = None
    time_column: str = "ts"
    time_format: str = "epoch_ms"
    user_id_column: str = "user_id"
    item_id_column: str = "item_id"
    label_column: str = "label"
    rating_column: str | None = None
    positive_min_rating: float = 4.0
    negative_max_rating: float = 2.0
    user_fields: tuple[str, ...] = ()
    item_fields: tuple[str, ...] = ()
    context_fields: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError(f"delimiter must be one character, got {self.delimiter!r}")
        if self.time_format not in TIME_FORMATS and "%" not in self.time_format:
            raise ValueError(
                f"time_format must be one of {', '.join(TIME_FORMATS)} or a strptime format "
                f"such as '%y%m%d%H', got {self.time_format!r}"
            )
        if self.negative_max_rating >= self.positive_min_rating:
            raise ValueError(
                f"negative_max_rating ({self.negative_max_rating}) must be below "
                f"positive_min_rating ({self.positive_min_rating}): a rating cannot be both"
            )
        targets: set[str] = set()
        for struct, specs in self.structs().items():
            names = [parse_field(spec)[1] for spec in specs]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{struct}_fields: field names repeated: {', '.join(repeated)}")
            targets.update(names)
        unknown = [name for name in self.numeric if name not in targets]
        if unknown:
            raise ValueError(f"numeric: {', '.join(unknown)} is not a field of user_fields, item_fields or context_fields")

    def structs(self) -> dict[str, tuple[str, ...]]:
        """Struct column name -> its field specs, in output order (empty context omitted)."""
        out = {"user": self.user_fields, "item": self.item_fields}
        if self.context_fields:
            out["context"] = self.context_fields
        return out

    def source_columns(self) -> dict[str, str]:
        """Every source column the import reads -> the option that asks for it (for messages)."""
        wanted: dict[str, str] = {}
        if self.event_id_column is not None:
            wanted[self.event_id_column] = "event_id_column"
        wanted.setdefault(self.time_column, "time_column")
        wanted.setdefault(self.user_id_column, "user_id_column")
        wanted.setdefault(self.item_id_column, "item_id_column")
        if self.rating_column is not None:
            wanted.setdefault(self.rating_column, "rating_column")
        else:
            wanted.setdefault(self.label_column, "label_column")
        for struct, specs in self.structs().items():
            for spec in specs:
                wanted.setdefault(parse_field(spec)[0], f"{struct}_fields")
        return wanted


# --------------------------------------------------------------------------- reading


def detect_format(path: Path, options: TableImport) -> FileFormat:
    if options.format != "auto":
        return options.format
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    found = EXTENSIONS.get(suffixes[-1] if suffixes else "")
    if found is None:
        raise TableImportError(
            f"{path}: cannot tell the format from the name (known: {', '.join(EXTENSIONS)}); "
            f"set [data.table] format to csv, parquet or jsonl"
        )
    return found


@dataclass(frozen=True)
class _Source:
    """The file being imported: locates a data row for error messages."""

    path: Path
    format: FileFormat
    delimiter: str
    encoding: str

    def where(self, row: int) -> str:
        """``row`` (0-based data row) as "file line L (row R)" or "file row R"."""
        if self.format == "parquet":
            return f"{self.path} row {row + 1}"
        line = self._line_of(row)
        return f"{self.path} row {row + 1}" if line is None else f"{self.path} line {line} (row {row + 1})"

    def error(self, row: int, column: str, message: str) -> TableImportError:
        return TableImportError(f"{self.where(row)}, column {column!r}: {message}")

    def type_error(self, column: str, arrow_type: pa.DataType, need: str) -> TableImportError:
        return TableImportError(f"{self.path}: column {column!r} has type {arrow_type}; {need}")

    def _line_of(self, row: int) -> int | None:
        """The 1-based line where data row ``row`` starts; only called on the error path."""
        with pa.input_stream(str(self.path), compression="detect") as raw:
            text = io.TextIOWrapper(raw, encoding=self.encoding, newline="")
            if self.format == "jsonl":
                seen = -1
                for number, line in enumerate(text, start=1):
                    seen += bool(line.strip())
                    if seen == row and line.strip():
                        return number
                return None
            reader = csv.reader(text, delimiter=self.delimiter)
            seen, before, header = -1, 0, False  # Arrow skips empty lines, so do we
            for record in reader:
                start, before = before + 1, reader.line_num
                if not record:
                    continue
                if not header:
                    header = True
                    continue
                seen += 1
                if seen == row:
                    return start
        return None


def _check_columns(source: _Source, names: list[str], options: TableImport) -> None:
    for column, option in options.source_columns().items():
        if column not in names:
            listed = ", ".join(names[:MAX_LISTED_COLUMNS]) + (", ..." if len(names) > MAX_LISTED_COLUMNS else "")
            raise TableImportError(
                f"{source.path}: missing column {column!r} (named by [data.table] {option}); "
                f"the file has: {listed}"
            )


def _read(source: _Source, options: TableImport) -> pa.Table:
    """The columns ``options`` needs, CSV as strings; raises on unreadable or empty files."""
    path, wanted = source.path, list(options.source_columns())
    try:
        if source.format == "csv":
            read = pa_csv.ReadOptions(encoding=source.encoding)
            parse = pa_csv.ParseOptions(delimiter=source.delimiter)
            with pa_csv.open_csv(str(path), read_options=read, parse_options=parse) as head:
                names = head.schema.names
            _check_columns(source, names, options)
            convert = pa_csv.ConvertOptions(
                include_columns=wanted,
                column_types={name: pa.string() for name in wanted},
                strings_can_be_null=True,
                null_values=[""],  # only empty cells: "NA" or "null" may be real categories
            )
            table = pa_csv.read_csv(str(path), read_options=read, parse_options=parse, convert_options=convert)
        elif source.format == "parquet":
            _check_columns(source, pq.read_schema(path).names, options)
            table = pq.read_table(path, columns=wanted)
        else:
            table = pa_json.read_json(str(path))
            _check_columns(source, table.column_names, options)
            table = table.select(wanted)
    except TableImportError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        if "Empty" in str(exc):
            raise TableImportError(f"{path}: the file is empty") from None
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = {
            "csv": f"; check [data.table] delimiter ({source.delimiter!r}) and encoding ({source.encoding!r})",
            "jsonl": "; a column must hold one type: quote every id if some are strings" if "changed from" in detail else "",
            "parquet": "",
        }[source.format]
        raise TableImportError(f"{path}: not readable as {source.format} ({detail}){hint}") from None
    if table.num_rows == 0:
        raise TableImportError(f"{path}: no data rows")
    return table.combine_chunks()


# --------------------------------------------------------------------------- columns


def _ids(source: _Source, column: str, values: pa.Array, what: str) -> pa.Array:
    require_values(source, column, values, what)
    if not is_id_type(values.type):
        raise source.type_error(column, values.type, f"{what}s must be strings or integers")
    return values


def _stem(path: Path) -> str:
    """The file name without its format and compression suffixes ("clicks.csv.gz" -> "clicks")."""
    name = path.name
    for suffixes in (COMPRESSION_SUFFIXES, tuple(EXTENSIONS)):
        for suffix in suffixes:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
    return name


def _event_ids(source: _Source, options: TableImport, table: pa.Table) -> pa.Array:
    n = table.num_rows
    if options.event_id_column is None:
        rows = pc.cast(pa.array(np.arange(1, n + 1, dtype=np.int64)), pa.string())
        return pc.binary_join_element_wise(pa.scalar(_stem(source.path)), rows, ":")
    column = options.event_id_column
    values = column_values(table, column)
    values = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    require_values(source, column, values, "event id")
    if len(pc.unique(values)) != n:
        keys = pc.index_in(values, pc.unique(values)).to_numpy()
        first_row: dict[int, int] = {}
        for row, key in enumerate(keys.tolist()):
            if key in first_row:
                raise source.error(row, column, f"event id {quoted(values, row)} repeats the one of {source.where(first_row[key])}")
            first_row[key] = row
    return values


def _struct(source: _Source, table: pa.Table, specs: tuple[str, ...], numeric: tuple[str, ...]) -> pa.StructArray:
    arrays, names = [], []
    for spec in specs:
        column, name = parse_field(spec)
        values = column_values(table, column)
        if name in numeric:
            values = converted(source, column, values, to_float, "a number")
        arrays.append(values)
        names.append(name)
    return pa.StructArray.from_arrays(arrays, names=names)


# --------------------------------------------------------------------------- assembly


def import_table(path: Path, options: TableImport) -> pa.Table:
    """Read the log at ``path`` into a click-log table in event-time order (stable by ts).

    Raises `TableImportError` (one line: file, line or row, column, value) on a missing
    column, an unparsable time, label, rating or numeric value, a missing id or event id,
    a repeated event id, or an empty file. Reads the whole file into memory.
    """
    path = Path(path)
    if not path.is_file():
        raise TableImportError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise TableImportError(f"{path}: the file is empty")
    for struct in ("user", "item"):
        if not options.structs()[struct]:
            raise TableImportError(
                f"{path}: [data.table] {struct}_fields is empty: list the columns of the {struct} tower"
            )
    file_format = detect_format(path, options)
    delimiter = options.delimiter or ("\t" if ".tsv" in [s.lower() for s in path.suffixes] else ",")
    source = _Source(path, file_format, delimiter, options.encoding)
    table = _read(source, options)

    ts = event_time_ms(source, options.time_column, column_values(table, options.time_column), options.time_format)
    keep: np.ndarray | None = None
    if options.rating_column is None:
        labels = labels_from_column(source, options.label_column, column_values(table, options.label_column))
    else:
        labels, keep = labels_from_ratings(
            source, options.rating_column, column_values(table, options.rating_column),
            options.positive_min_rating, options.negative_max_rating,
        )

    columns: dict[str, pa.Array] = {
        "event_id": _event_ids(source, options, table),
        "ts": pa.array(ts, pa.int64()),
        "user_id": _ids(source, options.user_id_column, column_values(table, options.user_id_column), "user id"),
        "item_id": _ids(source, options.item_id_column, column_values(table, options.item_id_column), "item id"),
        "label": pa.array(labels, pa.int8()),
    }
    for struct, specs in options.structs().items():
        columns[struct] = _struct(source, table, specs, options.numeric)
    out = pa.Table.from_pydict(columns)
    if keep is None and bool(np.all(ts[1:] >= ts[:-1])):
        return out  # already in event-time order (logs usually are)
    order = np.arange(out.num_rows) if keep is None else np.flatnonzero(keep)
    order = order[np.argsort(ts[order], kind="stable")]
    return out.take(pa.array(order))
