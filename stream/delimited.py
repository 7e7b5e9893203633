"""Column-wise parsing of delimited text files with errors that name the bad line.

Fast paths (numpy / pandas C parsers) handle whole columns; only when one fails is the
file walked value by value, which is what pins down the line number for the message.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stream.clicklog import ClickLogError

#: Stands in for a multi-character separator ("::") so pandas' fast C parser can split.
FAST_PATH_SEPARATOR = "\t"
#: Longest excerpt of a bad line quoted in an error message (keeps it to one line).
MAX_QUOTED_CHARS = 80
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


class DataFormatError(ClickLogError):
    """An input file is missing or malformed; the one-line message names file and line."""




@dataclass(frozen=True)
class Lines:
    """The non-blank lines of one file with their 1-based line numbers, for error messages."""

    file: str
    text: list[str]
    number: np.ndarray  # int64, same length as text

    def error(self, row: int, message: str) -> DataFormatError:
        """An error about row ``row`` (index into ``text``), quoting the line."""
        quoted = self.text[row]
        if len(quoted) > MAX_QUOTED_CHARS:
            quoted = quoted[:MAX_QUOTED_CHARS] + "..."
        return DataFormatError(f"{self.file} line {int(self.number[row])}: {message}: {quoted!r}")


def read_lines(path: Path, encoding: str) -> Lines:
    """Read ``path`` as lines of ``encoding``, skipping blank ones but keeping their numbering.

    Splits on "\\n" only (and strips a trailing "\\r"): `str.splitlines` would also split
    on "\\x85", which is a legal Latin-1 character in a title.
    """
    try:
        raw = path.read_text(encoding=encoding)
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    lines = [line.rstrip("\r") for line in raw.split("\n")]
    keep = [i for i, line in enumerate(lines) if line.strip()]
    return Lines(path.name, [lines[i] for i in keep], np.asarray(keep, dtype=np.int64) + 1)


def split_fields(lines: Lines, sep: str, expected: int, spec: str) -> list[np.ndarray]:
    """Split every line on ``sep`` into ``expected`` string columns, or name the bad line."""
    rows = [line.split(sep) for line in lines.text]
    if not rows:
        return [np.array([], dtype=str) for _ in range(expected)]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    wrong = lengths != expected
    if wrong.any():
        row = int(np.argmax(wrong))
        raise lines.error(row, f"expected {expected} fields {spec!r}, got {int(lengths[row])}")
    return [np.asarray(column, dtype=str) for column in zip(*rows)]


def parse_int(lines: Lines, values: np.ndarray, what: str) -> np.ndarray:
    """Convert a string column to int64; on failure find the first bad line and name it.

    The fast path is numpy's C conversion of the whole column; only when it fails do we
    fall back to checking value by value, which is what pins down the line number.
    """
    try:
        return np.char.strip(values).astype(np.int64)
    except (ValueError, OverflowError):
        pass
    parsed = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values.tolist()):
        try:
            number = int(value)
        except ValueError:
            raise lines.error(i, f"{what} must be an integer, got {value!r}") from None
        if not INT64_MIN <= number <= INT64_MAX:
            raise lines.error(i, f"{what} {number} does not fit in 64 bits")
        parsed[i] = number
    return parsed


def parse_int_fields(lines: Lines, sep: str, spec: str, what: tuple[str, ...]) -> list[np.ndarray]:
    """Split and parse an all-integer file (the ratings) into int64 columns, one per ``what``.

    Fast path: pandas' C parser over the non-blank lines (so row i is still line
    ``lines.number[i]``). Anything it rejects or bends goes through the exact path,
    `split_fields` + `parse_int`, which finds and names the first bad line.
    """
    if lines.text:
        text = "\n".join(lines.text)
        if len(sep) > 1:
            text = text.replace(sep, FAST_PATH_SEPARATOR)
        try:
            frame = pd.read_csv(
                io.StringIO(text), sep=sep if len(sep) == 1 else FAST_PATH_SEPARATOR, header=None,
                names=list(range(len(what))), dtype=np.int64, engine="c", quoting=csv.QUOTE_NONE,
                skip_blank_lines=False, na_filter=False,
            )
        except (ValueError, TypeError, OverflowError, pd.errors.ParserError):
            frame = None
        if frame is not None and frame.shape == (len(lines.text), len(what)):
            return [frame[k].to_numpy(dtype=np.int64) for k in range(len(what))]
    columns = split_fields(lines, sep, len(what), spec)
    return [parse_int(lines, column, name) for column, name in zip(columns, what)]


def check_unique(lines: Lines, ids: np.ndarray, what: str) -> None:
    """Reject a second row with the same id: the join would be ambiguous."""
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup_value = ids[first[np.argmax(counts > 1)]]
        repeat = int(np.flatnonzero(ids == dup_value)[1])
        raise lines.error(repeat, f"duplicate {what} {int(dup_value)}")


def lookup(keys: np.ndarray, wanted: np.ndarray, lines: Lines, what: str, source: str) -> np.ndarray:
    """Row index in ``keys`` of each ``wanted`` id; name the first rating line with an unknown id."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    pos = np.searchsorted(sorted_keys, wanted)
    pos_clipped = np.minimum(pos, max(len(sorted_keys) - 1, 0))
    found = (pos < len(sorted_keys)) & (sorted_keys[pos_clipped] == wanted) if len(keys) else np.zeros(len(wanted), bool)
    if not found.all():
        row = int(np.argmin(found))
        raise lines.error(row, f"{what} {int(wanted[row])} is not in {source}")
    return order[pos_clipped]
