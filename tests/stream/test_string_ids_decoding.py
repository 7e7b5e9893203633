"""Caller ids on the wire: JSON and Arrow messages may carry string or integer user/item ids."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from stream.codec import (
    MISSING_FIELD,
    NON_FINITE,
    WRONG_TYPE,
    RawMessage,
    decode_messages,
    encode_arrow_batch,
)
from stream.ids import ID_LIMIT, to_index_ids
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import SYNTHETIC_EVENT_SCHEMA

SCHEMA = SYNTHETIC_EVENT_SCHEMA
MAX_BYTES = 1 << 20
USERS = ["3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b9c", "u-17", "42"]
ITEMS = ["B00005N7P0", "1fbe01fe", "ümlaut-item"]


def msg(value: bytes, offset: int = 0) -> RawMessage:
    return RawMessage(0, offset, value, [], 0)


def event(i: int = 0, **changes: object) -> dict:
    row = {
        "event_id": f"e{i}",
        "ts": 1_700_000_000_000 + i,
        "user_id": USERS[i % len(USERS)],
        "item_id": ITEMS[i % len(ITEMS)],
        "label": i % 2,
        "user": {"segment": "seg1", "device": "ios"},
        "item": {"category": "cat3", "tags": ["t1"], "price": 1.5},
    }
    row.update(changes)
    return row


def json_msg(row: dict, offset: int = 0) -> RawMessage:
    return msg(json.dumps(row).encode(), offset)


def decode(*messages: RawMessage):
    return decode_messages(list(messages), SCHEMA, MAX_BYTES)


@pytest.fixture(scope="module")
def log() -> pa.Table:
    return generate_synthetic_log(SyntheticLogConfig(events=30, seed=5, users=10, initial_items=8))


def with_ids(table: pa.Table, users: pa.Array, items: pa.Array) -> pa.Table:
    table = table.set_column(table.schema.get_field_index("user_id"), "user_id", users)
    return table.set_column(table.schema.get_field_index("item_id"), "item_id", items)


# ----------------------------------------------------------------- JSON


def test_json_string_ids_decode_to_their_index_ids() -> None:
    decoded = decode(*(json_msg(event(i), i) for i in range(3)))
    assert decoded.rejects == []
    assert decoded.table.schema == SCHEMA.arrow_schema()
    assert decoded.table.column("user_id").to_pylist() == to_index_ids(USERS).tolist()
    assert decoded.table.column("item_id").to_pylist() == to_index_ids(ITEMS).tolist()
    assert decoded.table.column("user_id").to_pylist()[2] == 42


def test_json_integer_and_decimal_string_are_one_id() -> None:
    table = decode(json_msg(event(0, user_id=42, item_id="7"), 0), json_msg(event(1, user_id="42", item_id=7), 1)).table
    assert table.column("user_id").to_pylist() == [42, 42]
    assert table.column("item_id").to_pylist() == [7, 7]


@pytest.mark.parametrize("value", [-1, ID_LIMIT, 2**63 - 1, 2**64 - 1, -(2**63)])
def test_json_integer_ids_outside_the_index_range_are_hashed_not_rejected(value: int) -> None:
    decoded = decode(json_msg(event(0, user_id=value)))
    assert decoded.rejects == []
    [index_id] = decoded.table.column("user_id").to_pylist()
    assert index_id == to_index_ids([str(value)])[0]
    assert 0 <= index_id < ID_LIMIT


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1.5, WRONG_TYPE),
        (42.0, WRONG_TYPE),
        (True, WRONG_TYPE),
        (False, WRONG_TYPE),
        (None, MISSING_FIELD),
        ("", MISSING_FIELD),
        ([1], WRONG_TYPE),
        (["u-1"], WRONG_TYPE),
        ({"id": 1}, WRONG_TYPE),
        (2**64, WRONG_TYPE),  # beyond 64 bits: must be sent as a string
        (-(2**63) - 1, WRONG_TYPE),
        (math.nan, NON_FINITE),
        (math.inf, NON_FINITE),
    ],
)
@pytest.mark.parametrize("field", ["user_id", "item_id"])
def test_json_malformed_ids_are_rejected_with_their_reason(field: str, value: object, reason: str) -> None:
    payload = json.dumps(event(0, **{field: value})).encode()
    decoded = decode(msg(payload, 9))
    assert decoded.table.num_rows == 0
    [reject] = decoded.rejects
    assert (reject.reason, reject.offset, reject.payload) == (reason, 9, payload)
    assert field in reject.detail


def test_json_absent_id_is_missing_field() -> None:
    row = event(0)
    del row["item_id"]
    [reject] = decode(json_msg(row)).rejects
    assert reject.reason == MISSING_FIELD and "item_id" in reject.detail


def test_json_mixed_batch_keeps_good_rows_in_order() -> None:
    rows = [
        event(0),  # string ids
        event(1, user_id=1.5),
        event(2, user_id=5, item_id=6),  # integer ids
        event(3, item_id=""),
        event(4, user_id="5", item_id=None),
        event(5, user_id=-3, item_id="x-9"),
        event(6, user_id=False),
    ]
    decoded = decode(*(json_msg(r, i) for i, r in enumerate(rows)))
    assert decoded.table.column("event_id").to_pylist() == ["e0", "e2", "e5"]
    assert decoded.table.column("user_id").to_pylist() == to_index_ids([USERS[0], 5, "-3"]).tolist()
    assert decoded.table.column("item_id").to_pylist() == to_index_ids([ITEMS[0], 6, "x-9"]).tolist()
    assert [(r.reason, r.offset) for r in decoded.rejects] == [
        (WRONG_TYPE, 1), (MISSING_FIELD, 3), (MISSING_FIELD, 4), (WRONG_TYPE, 6)
    ]


def test_ts_stays_integer_only() -> None:
    assert [r.reason for r in decode(json_msg(event(0, ts="1700000000000"))).rejects] == [WRONG_TYPE]
    assert [r.reason for r in decode(json_msg(event(0, ts=2**63))).rejects] == [WRONG_TYPE]


# ----------------------------------------------------------------- Arrow


@pytest.mark.parametrize(
    "id_type", [pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())], ids=["string", "large_string", "dictionary"]
)
def test_arrow_string_id_columns_decode_to_their_index_ids(log: pa.Table, id_type: pa.DataType) -> None:
    n = log.num_rows
    users = [USERS[i % 3] for i in range(n)]
    items = [f"item-{i % 5}" for i in range(n)]
    table = with_ids(log, pa.array(users).cast(id_type), pa.array(items).cast(id_type))
    decoded = decode(msg(encode_arrow_batch(table)))
    assert decoded.rejects == []
    assert decoded.table.schema == SCHEMA.arrow_schema()
    assert decoded.table.column("user_id").to_pylist() == to_index_ids(users).tolist()
    assert decoded.table.column("item_id").to_pylist() == to_index_ids(items).tolist()


def test_arrow_and_json_agree_on_ids(log: pa.Table) -> None:
    rows = [event(i) for i in range(3)]
    arrow_table = with_ids(log.slice(0, 3), pa.array(USERS), pa.array(ITEMS))
    from_arrow = decode(msg(encode_arrow_batch(arrow_table))).table
    from_json = decode(*(json_msg(r, i) for i, r in enumerate(rows))).table
    for name in ("user_id", "item_id"):
        assert from_arrow.column(name).to_pylist() == from_json.column(name).to_pylist()


def test_arrow_integer_ids_of_any_width_and_range(log: pa.Table) -> None:
    small = log.slice(0, 3)
    table = with_ids(small, pa.array([1, 42, 7], pa.int32()), pa.array([2**64 - 1, 2**63, 5], pa.uint64()))
    decoded = decode(msg(encode_arrow_batch(table)))
    assert decoded.rejects == []
    assert decoded.table.column("user_id").to_pylist() == [1, 42, 7]
    assert decoded.table.column("item_id").to_pylist() == to_index_ids([str(2**64 - 1), str(2**63), "5"]).tolist()


def test_arrow_bad_id_rows_are_rejected_alone_with_the_callers_ids(log: pa.Table) -> None:
    small = log.slice(0, 5)
    users = pa.array(["u-0", None, "u-2", "", "u-4"])
    items = pa.array(["i-0", "i-1", "", "i-3", "i-4"], pa.large_string())
    decoded = decode(msg(encode_arrow_batch(with_ids(small, users, items)), 3))
    ids = small.column("event_id").to_pylist()
    assert decoded.table.column("event_id").to_pylist() == [ids[0], ids[4]]
    assert decoded.table.column("user_id").to_pylist() == to_index_ids(["u-0", "u-4"]).tolist()
    assert [r.reason for r in decoded.rejects] == [MISSING_FIELD] * 3
    payloads = [json.loads(r.payload) for r in decoded.rejects]
    assert [p["event_id"] for p in payloads] == [ids[1], ids[2], ids[3]]
    assert payloads[1]["item_id"] == "" and payloads[0]["item_id"] == "i-1"
    assert "user_id" in decoded.rejects[0].detail and "item_id" in decoded.rejects[1].detail


@pytest.mark.parametrize("id_type", [pa.float64(), pa.bool_(), pa.list_(pa.int64()), pa.binary()])
def test_arrow_id_column_of_another_type_rejects_the_message(log: pa.Table, id_type: pa.DataType) -> None:
    small = log.slice(0, 3)
    values = {
        pa.float64(): pa.array([1.0, 2.0, 3.0]),
        pa.bool_(): pa.array([True, False, True]),
        pa.list_(pa.int64()): pa.array([[1], [2], [3]]),
        pa.binary(): pa.array([b"a", b"b", b"c"]),
    }[id_type]
    table = with_ids(small, values, small.column("item_id"))
    decoded = decode(msg(encode_arrow_batch(table)))
    assert decoded.table.num_rows == 0
    [reject] = decoded.rejects
    assert reject.reason == WRONG_TYPE and "user_id" in reject.detail


def test_arrow_null_ids_in_an_integer_column_are_missing_field(log: pa.Table) -> None:
    small = log.slice(0, 4)
    table = with_ids(small, pa.array([1, None, 3, 4], pa.int64()), small.column("item_id"))
    decoded = decode(msg(encode_arrow_batch(table)))
    assert decoded.table.column("user_id").to_pylist() == [1, 3, 4]
    assert [r.reason for r in decoded.rejects] == [MISSING_FIELD]
    assert decoded.table.column("user_id").null_count == 0



def test_decoded_batches_carry_the_callers_item_ids_where_they_differ() -> None:
    """item_key: the caller's item id for string ids, null for integer ids (what readers answer with)."""
    rows = [event(0, item_id="B00005N7P0"), event(1, item_id=42), event(2, item_id="42")]
    decoded = decode(*(json_msg(r, i) for i, r in enumerate(rows)))
    assert decoded.table.column("item_key").to_pylist() == ["B00005N7P0", None, None]
    assert decoded.table.column("item_id").to_pylist() == [to_index_ids(["B00005N7P0"])[0], 42, 42]
    table = pa.Table.from_pylist([dict(r, item_id=str(r["item_id"])) for r in rows])
    decoded = decode(msg(encode_arrow_batch(table)))
    assert decoded.table.column("item_key").to_pylist() == ["B00005N7P0", None, None]
