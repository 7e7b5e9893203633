"""Wire formats and the validating decoder: round-trips, every reject reason, sniffing, type normalisation."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from stream.codec import (
    ARROW_CONTENT_TYPE,
    ARROW_HEADERS,
    BAD_LABEL,
    CONTENT_TYPE_HEADER,
    INVALID_ARROW,
    INVALID_JSON,
    JSON_HEADERS,
    MISSING_FIELD,
    NON_FINITE,
    OVERSIZE,
    REJECT_REASONS,
    WRONG_TYPE,
    RawMessage,
    count_events,
    decode_messages,
    encode_arrow_batch,
    encode_json_event,
    event_time_range,
    is_arrow,
    table_to_json_events,
)
from stream.events import EventSchema
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import SYNTHETIC_EVENT_SCHEMA

MAX_BYTES = 1 << 20

SCHEMA = SYNTHETIC_EVENT_SCHEMA


@pytest.fixture(scope="module")
def log() -> pa.Table:
    return generate_synthetic_log(SyntheticLogConfig(events=500, seed=3, users=50, initial_items=40))


def normalised(table: pa.Table) -> pa.Table:
    """What the decoder should make of a synthetic table: ints as strings in categorical fields."""
    user, item = table.column("user"), table.column("item")
    return pa.Table.from_arrays(
        [
            *(table.column(n).combine_chunks() for n in ("event_id", "ts", "user_id", "item_id", "label")),
            pa.nulls(table.num_rows, pa.string()),  # item_key: integer ids are their own index ids
            pa.StructArray.from_arrays(
                [pc.cast(pc.struct_field(user, n), pa.string()).combine_chunks() for n in ("user_id", "segment", "age_bucket", "device")],
                names=["user_id", "segment", "age_bucket", "device"],
            ),
            pa.StructArray.from_arrays(
                [
                    pc.cast(pc.struct_field(item, "item_id"), pa.string()).combine_chunks(),
                    pc.struct_field(item, "category").combine_chunks(),
                    pc.struct_field(item, "tags").combine_chunks(),
                    pc.struct_field(item, "price").combine_chunks(),
                ],
                names=["item_id", "category", "tags", "price"],
            ),
        ],
        schema=SCHEMA.arrow_schema(),
    )


def msg(value: bytes, offset: int = 0, partition: int = 0, headers: list[tuple[str, bytes]] | None = None) -> RawMessage:
    return RawMessage(partition, offset, value, headers if headers is not None else [], 0)


def good_event(**changes: object) -> dict:
    event = {
        "event_id": "e1",
        "ts": 1_700_000_000_000,
        "user_id": 7,
        "item_id": 9,
        "label": 1,
        "user": {"user_id": 7, "segment": "seg1", "age_bucket": 2, "device": "ios"},
        "item": {"item_id": 9, "category": "cat3", "tags": ["tag1", "tag2"], "price": 12.5},
    }
    event.update(changes)
    return event


def raw_json(event: dict) -> bytes:
    return json.dumps(event).encode()  # allow_nan: NaN/Infinity literals, as a sloppy producer writes


def decode(*messages: RawMessage, max_bytes: int = MAX_BYTES):
    return decode_messages(list(messages), SCHEMA, max_bytes)


# ----------------------------------------------------------------- round-trips


def test_json_round_trip_equals_source(log: pa.Table) -> None:
    messages = [msg(v, i, headers=JSON_HEADERS) for i, v in enumerate(table_to_json_events(log, chunk_rows=128))]
    decoded = decode(*messages)
    assert decoded.rejects == []
    assert decoded.table.schema == SCHEMA.arrow_schema()
    assert decoded.table.equals(normalised(log))


def test_arrow_round_trip_equals_source(log: pa.Table) -> None:
    messages = [msg(encode_arrow_batch(log.slice(s, 128)), i, headers=ARROW_HEADERS) for i, s in enumerate(range(0, log.num_rows, 128))]
    decoded = decode(*messages)
    assert decoded.rejects == []
    assert decoded.table.equals(normalised(log))


def test_mixed_formats_keep_message_order(log: pa.Table) -> None:
    json_rows = list(table_to_json_events(log.slice(0, 10)))
    messages = [msg(v, i) for i, v in enumerate(json_rows[:5])]
    messages.append(msg(encode_arrow_batch(log.slice(5, 100)), 5))
    messages += [msg(v, 6 + i) for i, v in enumerate(table_to_json_events(log.slice(105, 5)))]
    decoded = decode(*messages)
    assert decoded.table.column("event_id").to_pylist() == log.column("event_id").to_pylist()[:110]


def test_encode_json_event_is_compact_json() -> None:
    encoded = encode_json_event(good_event())
    assert b" " not in encoded
    assert json.loads(encoded) == good_event()


def test_empty_input_gives_empty_table_with_the_schema() -> None:
    decoded = decode()
    assert decoded.table.num_rows == 0 and decoded.table.schema == SCHEMA.arrow_schema()


# ----------------------------------------------------------------- format detection


def test_sniffing_without_headers(log: pa.Table) -> None:
    arrow = msg(encode_arrow_batch(log.slice(0, 3)))
    json_msg = msg(b"  \n" + raw_json(good_event()))
    assert is_arrow(arrow) and not is_arrow(json_msg)
    decoded = decode(arrow, json_msg)
    assert decoded.rejects == [] and decoded.table.num_rows == 4


def test_header_wins_over_sniffing(log: pa.Table) -> None:
    arrow_bytes = encode_arrow_batch(log.slice(0, 3))
    as_json = msg(arrow_bytes, headers=[(CONTENT_TYPE_HEADER, b"application/json")])
    assert not is_arrow(as_json)
    assert [r.reason for r in decode(as_json).rejects] == [INVALID_JSON]
    with_params = msg(arrow_bytes, headers=[("Content-Type", ARROW_CONTENT_TYPE + b"; charset=binary")])
    assert is_arrow(with_params)


def test_count_events(log: pa.Table) -> None:
    assert count_events(msg(encode_arrow_batch(log.slice(0, 37))), MAX_BYTES) == 37
    assert count_events(msg(raw_json(good_event())), MAX_BYTES) == 1
    assert count_events(msg(b"\xff\xff\xff\xffjunk"), MAX_BYTES) == 1


def test_event_time_range_reads_only_ts(log: pa.Table) -> None:
    part = log.slice(0, 37)
    ts = part.column("ts").to_pylist()
    assert event_time_range(msg(encode_arrow_batch(part)), MAX_BYTES) == (min(ts), max(ts))
    event = good_event()
    assert event_time_range(msg(raw_json(event)), MAX_BYTES) == (event["ts"], event["ts"])
    assert event_time_range(msg(raw_json({**event, "ts": "soon"})), MAX_BYTES) is None  # no usable ts: no limit
    assert event_time_range(msg(b"{not json"), MAX_BYTES) is None
    assert event_time_range(msg(encode_arrow_batch(part.drop_columns(["ts"]))), MAX_BYTES) is None
    assert event_time_range(msg(raw_json(event)), 10) is None  # oversize: never parsed


# ----------------------------------------------------------------- reject reasons, JSON


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", INVALID_JSON),
        (b"[1, 2, 3]", INVALID_JSON),
        (b"\xff\xfe garbage", INVALID_JSON),
        (raw_json({k: v for k, v in good_event().items() if k != "ts"}), MISSING_FIELD),
        (raw_json({k: v for k, v in good_event().items() if k != "user"}), MISSING_FIELD),
        (raw_json(good_event(item=None)), MISSING_FIELD),
        (raw_json(good_event(event_id="")), MISSING_FIELD),
        (raw_json(good_event(label=None)), MISSING_FIELD),
        (raw_json(good_event(ts="1700000000000")), WRONG_TYPE),
        (raw_json(good_event(ts=1.7e12)), WRONG_TYPE),
        (raw_json(good_event(user_id=True)), WRONG_TYPE),
        (raw_json(good_event(item_id=2**64)), WRONG_TYPE),
        (raw_json(good_event(event_id=17)), WRONG_TYPE),
        (raw_json(good_event(user=["not", "an", "object"])), WRONG_TYPE),
        (raw_json(good_event(user={"segment": {"nested": 1}})), WRONG_TYPE),
        (raw_json(good_event(user={"segment": True})), WRONG_TYPE),
        (raw_json(good_event(user={"segment": 1.5})), WRONG_TYPE),
        (raw_json(good_event(item={"tags": "tag1"})), WRONG_TYPE),
        (raw_json(good_event(item={"tags": ["ok", ["nested"]]})), WRONG_TYPE),
        (raw_json(good_event(item={"price": "12.5"})), WRONG_TYPE),
        (raw_json(good_event(item={"price": True})), WRONG_TYPE),
        (raw_json(good_event(context="ios")), None),  # context is not in this schema: ignored
        (raw_json(good_event(label=2)), BAD_LABEL),
        (raw_json(good_event(label="1")), BAD_LABEL),
        (raw_json(good_event(label=True)), BAD_LABEL),
        (raw_json(good_event(label=1.0)), BAD_LABEL),
        (raw_json(good_event(label=-1)), BAD_LABEL),
        (raw_json(good_event(item={"price": math.nan})), NON_FINITE),
        (raw_json(good_event(item={"price": -math.inf})), NON_FINITE),
        (raw_json(good_event(ts=math.inf)), NON_FINITE),
        (raw_json(good_event(label=math.nan)), NON_FINITE),
        (raw_json(good_event(user={"segment": math.nan})), NON_FINITE),
    ],
)
def test_json_reject_reasons(value: bytes, reason: str | None) -> None:
    decoded = decode(msg(value, offset=41, partition=3))
    if reason is None:
        assert decoded.rejects == [] and decoded.table.num_rows == 1
        return
    assert decoded.table.num_rows == 0
    [reject] = decoded.rejects
    assert (reject.reason, reject.partition, reject.offset, reject.payload) == (reason, 3, 41, value)
    assert reject.detail and "\n" not in reject.detail
    assert reject.reason in REJECT_REASONS


def test_infinity_literal_in_ts_is_non_finite() -> None:
    value = raw_json(good_event()).replace(b'"ts": 1700000000000', b'"ts": Infinity')
    assert b"Infinity" in value
    assert [r.reason for r in decode(msg(value)).rejects] == [NON_FINITE]


def test_oversize_is_checked_before_parsing() -> None:
    value = b"{" + b" " * 200 + b"not json"
    [reject] = decode(msg(value), max_bytes=100).rejects
    assert reject.reason == OVERSIZE and reject.payload == value


def test_bad_json_between_good_ones_only_drops_itself() -> None:
    good = [raw_json(good_event(event_id=f"e{i}")) for i in range(3)]
    decoded = decode(msg(good[0], 0), msg(b"{oops", 1), msg(good[1], 2), msg(raw_json(good_event(label=5)), 3), msg(good[2], 4))
    assert decoded.table.column("event_id").to_pylist() == ["e0", "e1", "e2"]
    assert [(r.reason, r.offset) for r in decoded.rejects] == [(INVALID_JSON, 1), (BAD_LABEL, 3)]


# ----------------------------------------------------------------- type normalisation


def test_categorical_int_and_string_decode_to_the_same_string() -> None:
    as_int = raw_json(good_event(user={"segment": 42, "device": "ios"}, item={"item_id": 9, "tags": [1, "2"]}))
    as_str = raw_json(good_event(user={"segment": "42", "device": "ios"}, item={"item_id": "9", "tags": ["1", "2"]}))
    table = decode(msg(as_int, 0), msg(as_str, 1)).table
    user, item = table.column("user"), table.column("item")
    assert pc.struct_field(user, "segment").to_pylist() == ["42", "42"]
    assert pc.struct_field(item, "item_id").to_pylist() == ["9", "9"]
    assert pc.struct_field(item, "tags").to_pylist() == [["1", "2"], ["1", "2"]]


def test_missing_and_null_features_are_null_not_rejected() -> None:
    event = good_event(user={"segment": None}, item={"tags": None, "price": 3})
    table = decode(msg(raw_json(event))).table
    assert table.num_rows == 1
    row = table.to_pylist()[0]
    assert row["user"] == {"user_id": None, "segment": None, "age_bucket": None, "device": None}
    assert row["item"] == {"item_id": None, "category": None, "tags": None, "price": 3.0}


def test_arrow_categorical_int_column_becomes_decimal_strings(log: pa.Table) -> None:
    decoded = decode(msg(encode_arrow_batch(log.slice(0, 20))))
    expected = [str(v) for v in pc.struct_field(log.column("user"), "age_bucket").to_pylist()[:20]]
    assert pc.struct_field(decoded.table.column("user"), "age_bucket").to_pylist() == expected


def test_context_struct_only_when_the_schema_uses_it() -> None:
    schema = EventSchema.of([("segment", "categorical", "user"), ("hour", "numeric", "context"), ("category", "categorical", "item")])
    assert schema.arrow_schema().names[-3:] == ["user", "item", "context"]
    with_context = raw_json(good_event(context={"hour": 13}))
    without = raw_json(good_event())
    decoded = decode_messages([msg(with_context, 0), msg(without, 1)], schema, MAX_BYTES)
    assert decoded.rejects == []
    assert pc.struct_field(decoded.table.column("context"), "hour").to_pylist() == [13.0, None]
    bad = decode_messages([msg(raw_json(good_event(context=[1])))], schema, MAX_BYTES)
    assert [r.reason for r in bad.rejects] == [WRONG_TYPE]


# ----------------------------------------------------------------- Arrow rejects


def test_invalid_arrow_bytes() -> None:
    value = b"\xff\xff\xff\xff" + b"\x10\x00\x00\x00not a flatbuffer at all"
    [reject] = decode(msg(value, 5, 1)).rejects
    assert (reject.reason, reject.partition, reject.offset, reject.payload) == (INVALID_ARROW, 1, 5, value)


def test_arrow_message_missing_a_column_is_rejected_whole(log: pa.Table) -> None:
    value = encode_arrow_batch(log.slice(0, 10).drop_columns(["item"]))
    decoded = decode(msg(value, 8))
    assert decoded.table.num_rows == 0
    assert [(r.reason, r.offset, r.payload) for r in decoded.rejects] == [(MISSING_FIELD, 8, value)]


def test_arrow_message_with_a_wrongly_typed_column_is_rejected_whole(log: pa.Table) -> None:
    small = log.slice(0, 10)
    as_float = small.set_column(small.schema.get_field_index("ts"), "ts", pc.cast(small.column("ts"), pa.float64()))
    price_as_string = small.set_column(
        small.schema.get_field_index("item"),
        "item",
        pa.StructArray.from_arrays(
            [pc.struct_field(small.column("item"), "price").cast(pa.string()).combine_chunks()], names=["price"]
        ),
    )
    for table in (as_float, price_as_string):
        [reject] = decode(msg(encode_arrow_batch(table))).rejects
        assert reject.reason == WRONG_TYPE


def test_arrow_bad_rows_rejected_individually_good_rows_survive(log: pa.Table) -> None:
    small = log.slice(0, 10).combine_chunks()
    labels = small.column("label").to_pylist()
    labels[2] = 2  # bad_label
    ts = small.column("ts").to_pylist()
    ts[4] = None  # missing_field
    item = small.column("item").to_pylist()
    item[7]["price"] = math.nan  # non_finite
    item[8]["price"] = math.inf
    users = small.column("user").to_pylist()
    users[9] = None  # missing_field (null struct)
    bad = pa.Table.from_arrays(
        [
            small.column("event_id"),
            pa.array(ts, pa.int64()),
            small.column("user_id"),
            small.column("item_id"),
            pa.array(labels, pa.int8()),
            pa.array(users, small.schema.field("user").type),
            pa.array(item, small.schema.field("item").type),
        ],
        schema=small.schema,
    )
    decoded = decode(msg(encode_arrow_batch(bad), offset=77, partition=2))
    ids = small.column("event_id").to_pylist()
    assert decoded.table.column("event_id").to_pylist() == [ids[i] for i in (0, 1, 3, 5, 6)]
    got = [(r.reason, r.partition, r.offset) for r in decoded.rejects]
    assert got == [(BAD_LABEL, 2, 77), (MISSING_FIELD, 2, 77), (NON_FINITE, 2, 77), (NON_FINITE, 2, 77), (MISSING_FIELD, 2, 77)]
    payloads = [json.loads(r.payload) for r in decoded.rejects]  # valid JSON, NaN written as a string
    assert [p["event_id"] for p in payloads] == [ids[i] for i in (2, 4, 7, 8, 9)]
    assert payloads[2]["item"]["price"] == "NaN" and payloads[3]["item"]["price"] == "Infinity"


def test_arrow_with_other_integer_widths_and_missing_members(log: pa.Table) -> None:
    small = log.slice(0, 5)
    narrowed = small.set_column(small.schema.get_field_index("label"), "label", pc.cast(small.column("label"), pa.int64()))
    narrowed = narrowed.set_column(
        narrowed.schema.get_field_index("user"),
        "user",
        pa.StructArray.from_arrays([pc.struct_field(small.column("user"), "device").combine_chunks()], names=["device"]),
    )
    decoded = decode(msg(encode_arrow_batch(narrowed)))
    assert decoded.rejects == [] and decoded.table.num_rows == 5
    assert decoded.table.schema == SCHEMA.arrow_schema()
    assert pc.struct_field(decoded.table.column("user"), "segment").null_count == 5
