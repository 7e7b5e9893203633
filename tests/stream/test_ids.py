"""Caller ids -> index ids: stable across processes, integers kept, strings hashed into 56 bits."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from stream.clicklog import ClickLogError, read_click_log, write_click_log
from stream.ids import ID_LIMIT, to_index_id, to_index_ids
from tests.conftest import make_synthetic_like_table


def test_small_integers_and_their_decimal_strings_are_themselves() -> None:
    assert to_index_ids([0, 7, 42, ID_LIMIT - 1]).tolist() == [0, 7, 42, ID_LIMIT - 1]
    assert to_index_ids(["0", "7", "42"]).tolist() == [0, 7, 42]
    assert to_index_ids(pa.array([1, 2], pa.int32())).tolist() == [1, 2]


def test_non_canonical_strings_and_out_of_range_integers_are_hashed_into_range() -> None:
    values = ["042", "+42", " 42", "abc", "1fbe01fe", "B00005N7P0", "", str(ID_LIMIT)]
    ids = to_index_ids(values)
    assert ((ids >= 0) & (ids < ID_LIMIT)).all()
    assert 42 not in ids.tolist()
    assert len(set(ids.tolist())) == len(values)
    big = to_index_ids(pa.array([-1, 2**62], pa.int64()))
    assert ((big >= 0) & (big < ID_LIMIT)).all()
    assert big.tolist() == to_index_ids(["-1", str(2**62)]).tolist()  # an integer and its decimal string agree


def test_every_input_form_agrees() -> None:
    strings = ["u-1", "u-2", "u-1", "99"]
    expected = to_index_ids(strings)
    assert expected[0] == expected[2] and expected[3] == 99
    for form in (
        pa.array(strings),
        pa.array(strings, pa.large_string()),
        pa.array(strings).dictionary_encode(),
        pa.chunked_array([strings[:2], strings[2:]]),
        np.array(strings, dtype=object),
    ):
        assert to_index_ids(form).tolist() == expected.tolist()
    assert to_index_ids(["u-1", 99]).tolist() == [expected[0], 99]  # mixed Python types
    assert to_index_id("u-2") == expected[1]


def test_hash_is_stable_across_processes() -> None:
    """The id of a string never depends on the process (no salted hash())."""
    code = "from stream.ids import to_index_id; print(to_index_id('a99f214a'), to_index_id('B00005N7P0'))"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert runs == {f"{to_index_id('a99f214a')} {to_index_id('B00005N7P0')}\n"}


@pytest.mark.parametrize("bad", [[None, "a"], pa.array([1.5, 2.0]), pa.array([True])])
def test_nulls_and_other_types_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        to_index_ids(bad)


def test_click_log_with_string_ids_reads_as_index_ids(tmp_path) -> None:
    table = make_synthetic_like_table(20)
    users = pa.array([f"user-{u}" for u in table.column("user_id").to_pylist()])
    items = pa.array([f"ASIN{i:06d}" for i in table.column("item_id").to_pylist()])
    table = table.set_column(2, "user_id", users).set_column(3, "item_id", items)
    path = write_click_log(table, tmp_path / "strings.parquet")
    as_written = read_click_log(path, index_ids=False)
    assert as_written.column("item_id").to_pylist() == items.to_pylist()  # replay sends the caller's ids
    trained = read_click_log(path)
    assert trained.schema.field("item_id").type == pa.int64()
    assert trained.column("item_id").to_pylist() == to_index_ids(items).tolist()
    assert trained.column("user_id").to_pylist() == to_index_ids(users).tolist()


def test_click_log_with_float_ids_is_refused(tmp_path) -> None:
    table = make_synthetic_like_table(5)
    table = table.set_column(3, "item_id", pa.array([1.0] * 5))
    with pytest.raises(ClickLogError, match="item_id.*expected integers or strings"):
        write_click_log(table, tmp_path / "bad.parquet")


def test_empty_input_is_empty() -> None:
    assert to_index_ids([]).dtype == np.int64 and to_index_ids([]).size == 0
    assert to_index_ids(np.array([], dtype=object)).size == 0
