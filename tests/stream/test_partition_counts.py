"""Decoded batches say how many valid events each source partition contributed."""

from stream.codec import ARROW_HEADERS, JSON_HEADERS, RawMessage, decode_messages, encode_arrow_batch, encode_json_event
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import SYNTHETIC_EVENT_SCHEMA


def test_valid_events_are_counted_per_partition():
    table = generate_synthetic_log(SyntheticLogConfig(events=30, seed=0))
    rows = table.to_pylist()
    messages = [RawMessage(0, i, encode_json_event(row), list(JSON_HEADERS), 0) for i, row in enumerate(rows[:10])]
    messages.append(RawMessage(0, 10, b"{broken", list(JSON_HEADERS), 0))
    messages.append(RawMessage(1, 0, encode_arrow_batch(table.slice(10, 20)), list(ARROW_HEADERS), 0))
    decoded = decode_messages(messages, SYNTHETIC_EVENT_SCHEMA, 1 << 20)
    assert decoded.events_by_partition == {0: 10, 1: 20}
    assert decoded.table.num_rows == 30 and len(decoded.rejects) == 1
