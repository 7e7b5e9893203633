"""The msgspec fast path of the JSON decoder never changes an outcome: it agrees with the reference path."""

from __future__ import annotations

import json
import math

import pytest

import stream.json_events as json_events
from stream.codec import INVALID_JSON, MISSING_FIELD, RawMessage, decode_messages
from tests.conftest import SYNTHETIC_EVENT_SCHEMA
from tests.stream.test_codec import good_event, raw_json

SCHEMA = SYNTHETIC_EVENT_SCHEMA
MAX_BYTES = 1 << 20


def body(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":"))[1:-1].encode()  # the members, without braces


EDGE_CASES: dict[str, bytes] = {
    "plain": raw_json(good_event()),
    "string ids": raw_json(good_event(user_id="u-1", item_id="B00005N7P0")),
    "uint64 id": raw_json(good_event(item_id=2**64 - 1)),
    "negative id": raw_json(good_event(user_id=-7)),
    "huge categorical int": raw_json(good_event(user={"segment": 10**30, "device": "ios"})),
    "huge tag int": raw_json(good_event(item={"tags": [10**30, "a", 1]})),
    "categorical ints and strings mixed": raw_json(good_event(user={"segment": 4, "age_bucket": "3"})),
    "numeric int": raw_json(good_event(item={"price": 12})),
    "numeric beyond float": raw_json(good_event(item={"price": 10**400})),
    "numeric overflowing literal": raw_json(good_event()).replace(b'"price": 12.5', b'"price": 1e400'),
    "numeric underflowing literal": raw_json(good_event()).replace(b'"price": 12.5', b'"price": 1e-400'),
    "NaN literal": raw_json(good_event(item={"price": math.nan})),
    "non-ASCII strings": raw_json(good_event(user_id="ümlaut", user={"segment": "日本"})),
    "raw UTF-8": json.dumps(good_event(user={"segment": "日本"}), ensure_ascii=False).encode(),
    "invalid UTF-8 in an unknown key": raw_json(good_event()).replace(b'{"event_id"', b'{"x":"\xff","event_id"'),
    "surrogate bytes in an unknown key": raw_json(good_event()).replace(b'{"event_id"', b'{"x":"\xed\xa0\x80","event_id"'),
    "surrogate escape in an unknown key": raw_json(good_event()).replace(b'{"event_id"', b'{"x":"\\ud800","event_id"'),
    "surrogate escape in a feature": raw_json(good_event()).replace(b'"seg1"', b'"seg\\ud800"'),
    "surrogate escape in an id": raw_json(good_event(user_id="u")).replace(b'"u"', b'"\\udfff"'),
    "UTF-8 BOM": b"\xef\xbb\xbf" + raw_json(good_event()),
    "UTF-16": json.dumps(good_event()).encode("utf-16"),
    "duplicate key, last good": b'{"label":5,' + body(good_event()) + b"}",
    "duplicate key, last bad": b"{" + body(good_event()) + b',"label":5}',
    "duplicate struct": b"{" + body(good_event()) + b',"user":null}',
    "nested 400 deep": b'{"x":' + b"[" * 400 + b"]" * 400 + b"," + body(good_event()) + b"}",
    "nested 995 deep": b'{"x":' + b"[" * 995 + b"]" * 995 + b"," + body(good_event()) + b"}",
    "5000-digit integer in an unknown key": b'{"x":' + b"1" * 5000 + b"," + body(good_event()) + b"}",
    "5000-digit float in an unknown key": b'{"x":0.' + b"1" * 5000 + b"," + body(good_event()) + b"}",
    "escaped key": raw_json(good_event()).replace(b'"label"', b'"l\\u0061bel"'),
    "whitespace around": b" \n\t" + raw_json(good_event()) + b"\r\n",
    "trailing garbage": raw_json(good_event()) + b"x",
    "two objects": raw_json(good_event()) + raw_json(good_event()),
    "not an object": b'"just a string"',
    "empty": b"",
    "null context": raw_json(good_event(context=None)),
    "null struct": raw_json(good_event(user=None)),
    "label true": raw_json(good_event(label=True)),
    "label 1.0": raw_json(good_event(label=1.0)),
    "ts float": raw_json(good_event(ts=1.7e12)),
    "ts beyond int64": raw_json(good_event(ts=2**63)),
    "event_id empty": raw_json(good_event(event_id="")),
    "tags not a list": raw_json(good_event(item={"tags": "a"})),
    "tags with a float": raw_json(good_event(item={"tags": ["a", 1.5]})),
    "tags with null": raw_json(good_event(item={"tags": ["a", None]})),
    "empty tags": raw_json(good_event(item={"tags": []})),
}


def decode_with(fast: bool, values: list[bytes], monkeypatch: pytest.MonkeyPatch):
    with monkeypatch.context() as patch:
        patch.setattr(json_events, "USE_FAST_PATH", fast)
        return decode_messages([RawMessage(0, i, v, [], 0) for i, v in enumerate(values)], SCHEMA, MAX_BYTES)


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_fast_and_reference_paths_agree(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    value = EDGE_CASES[name]
    fast, reference = (decode_with(f, [value], monkeypatch) for f in (True, False))
    assert fast.rejects == reference.rejects
    assert fast.table.equals(reference.table)


def test_fast_and_reference_paths_agree_on_a_mixed_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    values = list(EDGE_CASES.values()) * 2
    fast, reference = (decode_with(f, values, monkeypatch) for f in (True, False))
    assert fast.rejects == reference.rejects
    assert fast.table.equals(reference.table)
    assert fast.table.num_rows > 20 and len(fast.rejects) > 20


def test_well_formed_messages_never_reach_pythons_json(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the reference path was taken for a well-formed message")

    monkeypatch.setattr(json_events.json, "loads", refuse)
    values = [raw_json(good_event(event_id=f"e{i}", user_id=f"u{i}", item={"tags": [i, "x"], "price": i})) for i in range(50)]
    decoded = decode_messages([RawMessage(0, i, v, [], 0) for i, v in enumerate(values)], SCHEMA, MAX_BYTES)
    assert decoded.rejects == [] and decoded.table.num_rows == 50


def test_duplicate_keys_count_with_their_last_value() -> None:
    last_good = EDGE_CASES["duplicate key, last good"]
    last_bad = EDGE_CASES["duplicate key, last bad"]
    decoded = decode_messages([RawMessage(0, 0, last_good, [], 0), RawMessage(0, 1, last_bad, [], 0)], SCHEMA, MAX_BYTES)
    assert decoded.table.column("label").to_pylist() == [1]
    assert [r.offset for r in decoded.rejects] == [1]
    duplicate_struct = decode_messages([RawMessage(0, 0, EDGE_CASES["duplicate struct"], [], 0)], SCHEMA, MAX_BYTES)
    assert [r.reason for r in duplicate_struct.rejects] == [MISSING_FIELD]


@pytest.mark.parametrize("name", ["surrogate escape in a feature", "surrogate escape in an id"])
def test_unpaired_surrogates_are_invalid_json_not_a_crash(name: str) -> None:
    [reject] = decode_messages([RawMessage(0, 0, EDGE_CASES[name], [], 0)], SCHEMA, MAX_BYTES).rejects
    assert reject.reason == INVALID_JSON and "surrogate" in reject.detail
