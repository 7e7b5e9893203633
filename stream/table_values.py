"""Per-column value conversions for the table importer (`stream.table_import`).

Split from the importer so that reading a file and assembling the click log stay apart
from the rules for turning one column's values into the contract's types: event times
(epoch seconds or milliseconds, ISO-8601, strptime formats), labels from a label or a
rating column, and floats. Every conversion reports the first value it rejects through
the caller's `ValueSource`, which knows the file and turns a data row into its line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Named time formats; anything else must be a strptime format (it contains "%").
TIME_FORMATS = ("epoch_s", "epoch_ms", "iso8601")
LABEL_STRINGS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
MAX_QUOTED_CHARS = 80
# An ISO-8601 zone designator after a time of day ("...12:00Z", "...12:00:00+02:00").
_ZONED = r"\d\d:\d\d(:\d\d(\.\d*)?)?\s*(Z|z|[+-]\d\d(:?\d\d)?)$"
_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError)


class ValueSource(Protocol):
    """The file the values came from: builds the importer's errors for a row or a column."""

    def error(self, row: int, column: str, message: str) -> Exception:
        """A value at 0-based data ``row`` of ``column`` is wrong."""
        ...

    def type_error(self, column: str, arrow_type: pa.DataType, need: str) -> Exception:
        """``column`` as a whole has a type the conversion cannot use; ``need`` says what it takes."""
        ...


def column_values(table: pa.Table, name: str) -> pa.Array:
    """Column ``name`` as one plain array (dictionaries decoded, large strings as string)."""
    column = table.column(name)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    if pa.types.is_large_string(array.type) or pa.types.is_string_view(array.type):
        array = array.cast(pa.string())
    return array


def quoted(values: pa.Array, row: int) -> str:
    """``values[row]`` as a repr for an error message, cut to `MAX_QUOTED_CHARS`."""
    text = repr(values[row].as_py())
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS] + "..."


def first_true(mask: np.ndarray | pa.Array) -> int | None:
    """Index of the first true entry of ``mask``, or None when there is none."""
    mask = np.asarray(mask.to_numpy(zero_copy_only=False) if isinstance(mask, pa.Array) else mask, dtype=bool)
    return int(np.argmax(mask)) if mask.any() else None


def _first_failure(values: pa.Array, convert: Callable[[pa.Array], object]) -> int:
    """Index of the first value ``convert`` rejects (it rejects the whole array): bisection."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convert(values.slice(lo, mid - lo))
        except _CONVERSION_ERRORS:
            hi = mid
        else:
            lo = mid
    return lo


def converted(
    source: ValueSource, column: str, values: pa.Array, convert: Callable[[pa.Array], pa.Array], what: str
) -> pa.Array:
    """``convert(values)``; on failure, raises naming the first row it rejects as not ``what``."""
    try:
        return convert(values)
    except _CONVERSION_ERRORS:
        row = _first_failure(values, convert)
        raise source.error(row, column, f"not {what}: {quoted(values, row)}") from None


def require_values(source: ValueSource, column: str, values: pa.Array, what: str) -> None:
    """Raises at the first null (or, for strings, empty) value of ``column``."""
    row = first_true(values.is_null())
    if row is None and pa.types.is_string(values.type):
        row = first_true(pc.equal(values, ""))
    if row is not None:
        raise source.error(row, column, f"missing {what}")


def _trimmed(values: pa.Array) -> pa.Array:
    return pc.utf8_trim_whitespace(values) if pa.types.is_string(values.type) else values


def to_float(values: pa.Array) -> pa.Array:
    """Numbers or numeric strings (whitespace trimmed) -> float64; raises Arrow's error on others."""
    return pc.cast(_trimmed(values), pa.float64())


# --------------------------------------------------------------------------- time


def event_time_ms(source: ValueSource, column: str, values: pa.Array, time_format: str) -> np.ndarray:
    """Event times as int64 milliseconds since the epoch (UTC)."""
    require_values(source, column, values, f"event time ({time_format})")
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):  # Parquet: use as it is
        zone = values.type.tz if pa.types.is_timestamp(values.type) else None  # naive: UTC
        return pc.cast(pc.cast(values, pa.timestamp("ms", zone), safe=False), pa.int64()).to_numpy()
    if time_format in ("epoch_s", "epoch_ms"):
        factor = 1000 if time_format == "epoch_s" else 1
        what = f"a number of {'seconds' if factor == 1000 else 'milliseconds'} since the epoch"
        if pa.types.is_string(values.type):
            try:
                values = pc.cast(_trimmed(values), pa.int64())
            except _CONVERSION_ERRORS:
                values = converted(source, column, values, to_float, what)
        if pa.types.is_integer(values.type):
            scale = lambda v: pc.multiply_checked(pc.cast(v, pa.int64()), factor)  # noqa: E731
            return converted(source, column, values, scale, what + " that fits int64 milliseconds").to_numpy()
        if not pa.types.is_floating(values.type):
            raise source.type_error(column, values.type, f"{time_format} needs numbers")
        numbers = values.to_numpy(zero_copy_only=False).astype(np.float64) * factor
        bad = first_true(~(np.isfinite(numbers) & (np.abs(numbers) < 2.0**63)))
        if bad is not None:
            raise source.error(bad, column, f"not {what}: {quoted(values, bad)}")
        return np.round(numbers).astype(np.int64)
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())  # e.g. Avazu's hour 14102100 stored as an integer
    values = pc.utf8_trim_whitespace(values)
    if time_format == "iso8601":
        return converted(source, column, values, _iso8601_ms, "an ISO-8601 time").to_numpy()
    stamps = pc.strptime(values, format=time_format, unit="ms", error_is_null=True)
    bad = first_true(stamps.is_null())
    if bad is not None:
        raise source.error(bad, column, f"not a time in the format {time_format!r}: {quoted(values, bad)}")
    return pc.cast(stamps, pa.int64()).to_numpy()


def _iso8601_ms(values: pa.Array) -> pa.Array:
    """ISO-8601 strings -> int64 ms since the epoch; a time with a zone offset is converted, others are UTC."""
    zoned = pc.match_substring_regex(values, _ZONED)
    if not pc.any(zoned).as_py():
        return _ns_to_ms(pc.cast(values, pa.timestamp("ns")))
    naive = _ns_to_ms(pc.cast(pc.if_else(zoned, pa.scalar(None, pa.string()), values), pa.timestamp("ns")))
    aware = _ns_to_ms(pc.cast(pc.if_else(zoned, values, pa.scalar(None, pa.string())), pa.timestamp("ns", "UTC")))
    return pc.if_else(zoned, aware, naive)


def _ns_to_ms(stamps: pa.Array) -> pa.Array:
    """Parsed at ns (Python's isoformat() writes microseconds), truncated to whole ms."""
    return pc.cast(pc.cast(stamps, pa.timestamp("ms", stamps.type.tz), safe=False), pa.int64())


# --------------------------------------------------------------------------- labels


def labels_from_column(source: ValueSource, column: str, values: pa.Array) -> np.ndarray:
    """0/1 labels (int8) from 0/1 numbers, booleans or "true"/"false" strings."""
    require_values(source, column, values, "label (0 or 1)")
    if pa.types.is_boolean(values.type):
        return values.to_numpy(zero_copy_only=False).astype(np.int8)
    if pa.types.is_string(values.type):
        index = pc.index_in(pc.utf8_lower(pc.utf8_trim_whitespace(values)), pa.array(list(LABEL_STRINGS)))
        bad = first_true(index.is_null())
        if bad is not None:
            raise source.error(bad, column, f"label must be 0 or 1 (or true/false), got {quoted(values, bad)}")
        return np.asarray(list(LABEL_STRINGS.values()), dtype=np.int8)[index.to_numpy(zero_copy_only=False)]
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        numbers = values.to_numpy(zero_copy_only=False)
        bad = first_true(~np.isin(numbers, (0, 1)))
        if bad is not None:
            raise source.error(bad, column, f"label must be 0 or 1, got {quoted(values, bad)}")
        return numbers.astype(np.int8)
    raise source.type_error(column, values.type, "a label must be 0/1 or a boolean")


def labels_from_ratings(
    source: ValueSource, column: str, values: pa.Array, positive_min: float, negative_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, keep): ``>= positive_min`` is a click, ``<= negative_max`` a non-click; rows between are not kept."""
    require_values(source, column, values, "rating")
    ratings = converted(source, column, values, to_float, "a rating").to_numpy(zero_copy_only=False)
    bad = first_true(~np.isfinite(ratings))
    if bad is not None:
        raise source.error(bad, column, f"not a rating: {quoted(values, bad)}")
    positive = ratings >= positive_min
    return positive.astype(np.int8), positive | (ratings <= negative_max)
