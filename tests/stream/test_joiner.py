"""The impression/click joiner and its wire format: labels by event time, exactly once, bounded."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from stream.codec import RawMessage, encode_arrow_batch
from stream.config import FeedbackConfig
from stream.feedback_wire import TYPE_HEADER, decode_feedback, encode_click, encode_watermark
from stream.joiner import (
    CLICK_BEFORE_IMPRESSION,
    EXPIRED_IMPRESSION,
    FNW_DUPLICATE,
    JOINED,
    LABELLED,
    UNKNOWN_IMPRESSION,
    FeedbackJoiner,
    Joined,
)
from tests.conftest import SYNTHETIC_EVENT_SCHEMA

SCHEMA = SYNTHETIC_EVENT_SCHEMA
MAX_BYTES = 1 << 20
T0 = 1_700_000_000_000
MODELS = ("inttower", "lr")


def impression(event_id: str, ts: int, label: int | None = None) -> dict:
    event = {
        "event_id": event_id, "ts": ts, "user_id": 7, "item_id": 9,
        "user": {"user_id": 7, "segment": "s", "age_bucket": 2, "device": "ios"},
        "item": {"item_id": 9, "category": "c", "tags": ["t"], "price": 1.5},
    }
    if label is not None:
        event["label"] = label
    return event


def msg(value: bytes | dict, offset: int = 0, partition: int = 0, headers=None) -> RawMessage:
    body = json.dumps(value).encode() if isinstance(value, dict) else value
    return RawMessage(partition, offset, body, headers or [], 0)


class Driver:
    """Feeds messages through decode_feedback and a joiner, batch by batch, with arrival scores = f(event id)."""

    def __init__(self, config: FeedbackConfig, joiner: FeedbackJoiner | None = None) -> None:
        self.config = config
        self.joiner = joiner or FeedbackJoiner(config, SCHEMA.arrow_schema(), MODELS)
        self.out: list[Joined] = []
        self.rejects = []

    def feed(self, messages: list[RawMessage], now: float = 0.0) -> Joined:
        decoded = decode_feedback(messages, SCHEMA, MAX_BYTES)
        self.rejects += decoded.rejects
        ids = decoded.events.column("event_id").to_pylist()
        scores = {m: np.array([score_of(i, m) for i in ids]) for m in MODELS}
        joined = self.joiner.add(decoded.events, scores, decoded.clicks, decoded.max_ts, decoded.event_partitions, now=now)
        self.out.append(joined)
        self.rejects += joined.rejects
        return joined

    def emitted(self) -> list[tuple[str, int, int]]:
        rows = []
        for j in self.out:
            for event_id, label, role in zip(j.table.column("event_id").to_pylist(), j.table.column("label").to_pylist(), j.roles):
                rows.append((event_id, label, int(role)))
        return rows


def score_of(event_id: str, model: str) -> float:
    return (hash((event_id, model)) % 1000) / 1000.0


def config(**changes) -> FeedbackConfig:
    base = dict(mode="joined", label_window_s=1.0, click_horizon_s=10.0, max_pending=1000, dedup_ids=1000,
                late_click_policy="drop")
    base.update(changes)
    return FeedbackConfig(**base)


def test_impressions_wait_for_the_window_then_carry_their_click_and_arrival_scores() -> None:
    d = Driver(config())
    first = d.feed([msg(impression("a", T0), 0), msg(impression("b", T0 + 10), 1), msg(encode_click("a", T0 + 500), 2)])
    assert first.table.num_rows == 0 and d.joiner.pending == 2
    second = d.feed([msg(impression("c", T0 + 2000), 3)])
    assert sorted(d.emitted()) == [("a", 1, JOINED), ("b", 0, JOINED)]
    order = second.table.column("event_id").to_pylist()
    for m in MODELS:
        assert second.scores[m].tolist() == [score_of(i, m) for i in order]
    assert second.counts["joined_clicks"] == 0 and first.counts["joined_clicks"] == 1
    assert first.label_delays_s == [0.5]
    assert d.joiner.pending == 1


def test_labelled_events_pass_straight_through() -> None:
    d = Driver(config())
    out = d.feed([msg(impression("x", T0, label=1)), msg(impression("y", T0, label=0), 1)])
    assert sorted(d.emitted()) == [("x", 1, LABELLED), ("y", 0, LABELLED)]
    assert out.counted.all()


def test_a_click_after_the_window_is_late_drop_counts_it() -> None:
    d = Driver(config(late_click_policy="drop"))
    d.feed([msg(impression("a", T0)), msg(encode_click("a", T0 + 1500), 1), msg(encode_watermark(T0 + 5000), 2)])
    assert d.emitted() == [("a", 0, JOINED)]
    assert d.joiner.totals["late_clicks_dropped"] == 1 and not d.rejects
    d.feed([msg(encode_click("a", T0 + 6000), 3)])  # after emission: still late, dropped, not dead-lettered
    assert d.joiner.totals["late_clicks_dropped"] == 2 and not d.rejects


def test_fnw_trains_one_duplicate_positive_after_the_negative() -> None:
    d = Driver(config(late_click_policy="fnw"))
    d.feed([msg(impression("a", T0)), msg(impression("b", T0)), msg(encode_watermark(T0 + 2000), 2)])
    assert sorted(d.emitted()) == [("a", 0, JOINED), ("b", 0, JOINED)]
    dup = d.feed([msg(encode_click("a", T0 + 3000), 3), msg(encode_click("a", T0 + 3100), 4)])
    assert [(r[0], r[1], r[2]) for r in d.emitted()[2:]] == [("a", 1, FNW_DUPLICATE)]
    assert not dup.counted.any() and dup.counts["duplicate_clicks"] == 1
    d.feed([msg(encode_watermark(T0 + 20_000), 5)])  # past the horizon: forgotten
    assert not d.joiner.entries
    d.feed([msg(encode_click("b", T0 + 21_000), 6)])
    assert [r.reason for r in d.rejects] == [EXPIRED_IMPRESSION]


def test_a_late_click_before_emission_under_fnw_follows_the_negative() -> None:
    d = Driver(config(late_click_policy="fnw"))
    # The watermark stalls on a second partition while a click after the window arrives.
    d.feed([msg(impression("a", T0)), msg(impression("p1", T0, label=0), 0, partition=1),
            msg(encode_click("a", T0 + 1500), 1)])
    assert d.emitted() == [("p1", 0, LABELLED)]
    d.feed([msg(encode_watermark(T0 + 5000), 2), msg(encode_watermark(T0 + 5000), 1, partition=1)])
    assert d.emitted()[1:] == [("a", 0, JOINED), ("a", 1, FNW_DUPLICATE)]


def test_orphan_and_early_clicks_are_dead_lettered_with_reasons() -> None:
    d = Driver(config())
    d.feed([msg(encode_click("nobody", T0), 0), msg(impression("a", T0 + 100), 1), msg(encode_click("a", T0 + 50), 2)])
    assert sorted(r.reason for r in d.rejects) == [CLICK_BEFORE_IMPRESSION, UNKNOWN_IMPRESSION]
    orphan = next(r for r in d.rejects if r.reason == UNKNOWN_IMPRESSION)
    assert json.loads(orphan.payload)["event_id"] == "nobody" and orphan.offset == 0


def test_duplicates_are_dropped_and_counted() -> None:
    d = Driver(config())
    d.feed([msg(impression("a", T0)), msg(impression("a", T0), 1), msg(impression("l", T0, label=1), 2)])
    d.feed([msg(impression("l", T0, label=1), 3), msg(encode_click("a", T0 + 10), 4), msg(encode_click("a", T0 + 20), 5)])
    d.feed([msg(encode_watermark(T0 + 5000), 6), msg(impression("a", T0 + 6000), 7)])  # a released, then resent
    totals = d.joiner.totals
    assert (totals["duplicate_impressions"], totals["duplicate_events"], totals["duplicate_clicks"]) == (2, 1, 1)
    assert sorted(d.emitted()) == [("a", 1, JOINED), ("l", 1, LABELLED)]


def test_pending_never_exceeds_max_pending_and_overflow_goes_out_early() -> None:
    d = Driver(config(max_pending=50, label_window_s=3600.0, click_horizon_s=3600.0, dedup_ids=10))
    for batch in range(20):
        d.feed([msg(impression(f"i{batch}-{k}", T0 + batch * 100 + k), k) for k in range(30)])
        assert len(d.joiner.entries) <= 50
    assert d.joiner.totals["emitted_early"] == 20 * 30 - 50
    assert len({e for e, _, _ in d.emitted()}) == 20 * 30 - 50


def test_an_idle_partition_stops_holding_the_watermark_back() -> None:
    d = Driver(config(idle_partition_s=5.0))
    d.feed([msg(impression("p1", T0, label=0), 0, partition=1)], now=0.0)
    d.feed([msg(impression("a", T0)), msg(impression("b", T0 + 3000), 1)], now=1.0)
    assert [e for e, _, r in d.emitted() if r == JOINED] == []  # partition 1 is at T0
    d.feed([msg(impression("c", T0 + 3100), 2)], now=10.0)  # partition 1 silent for 9 s
    assert [e for e, _, r in d.emitted() if r == JOINED] == ["a"]


def test_wire_rejects_bad_clicks_and_unknown_types_and_reads_arrow_clicks() -> None:
    clicks = pa.table({"event_id": ["a", "b", ""], "ts": [T0 + 1, T0 + 2, T0 + 3], "kind": ["click", None, None]})
    arrow = RawMessage(0, 3, encode_arrow_batch(clicks), [(TYPE_HEADER, b"click")], 0)
    decoded = decode_feedback([
        msg({"type": "click", "event_id": "a"}, 0),
        msg({"type": "purchase", "event_id": "a", "ts": T0}, 1),
        msg({"type": "click", "event_id": 5, "ts": T0}, 2),
        arrow,
        msg(impression("z", T0 + 9), 4),
    ], SCHEMA, MAX_BYTES)
    assert [(r.offset, r.reason) for r in decoded.rejects] == [(0, "missing_field"), (1, "wrong_type"), (2, "wrong_type"),
                                                              (3, "missing_field")]
    assert decoded.clicks.column("event_id").to_pylist() == ["a", "b"]
    assert decoded.clicks.column("kind").to_pylist() == ["click", None]
    assert decoded.events.column("label").to_pylist() == [None]
    assert decoded.max_ts == {0: T0 + 9}


def random_stream(seed: int, impressions: int = 400, partitions: int = 2) -> list[RawMessage]:
    """Impressions and clicks (exponential delays, some beyond the window and horizon), per partition in ts order."""
    rng = random.Random(seed)
    per_partition: dict[int, list[tuple[int, dict | bytes]]] = {p: [] for p in range(partitions)}
    ts = T0
    for i in range(impressions):
        ts += rng.randint(0, 200)
        p = rng.randrange(partitions)
        event_id = f"imp-{i}"
        labelled = rng.random() < 0.1
        per_partition[p].append((ts, impression(event_id, ts, label=rng.randint(0, 1) if labelled else None)))
        if not labelled and rng.random() < 0.4:
            click_ts = ts + int(rng.expovariate(1 / 1500))
            per_partition[p].append((click_ts, encode_click(event_id, click_ts)))
        if rng.random() < 0.02:
            per_partition[p].append((ts, impression(event_id, ts)))  # a producer retry
    messages = []
    for p, items in per_partition.items():
        items.sort(key=lambda x: x[0])
        items.append((ts + 10**9, encode_watermark(ts + 10**9)))
        messages.extend(msg(body, offset, partition=p) for offset, (_, body) in enumerate(items))
    return messages


def interleave(messages: list[RawMessage], seed: int) -> list[RawMessage]:
    """A random merge of the partitions that keeps each partition's order (as a consumer sees them)."""
    rng = random.Random(seed)
    queues = {}
    for m in messages:
        queues.setdefault(m.partition, []).append(m)
    out = []
    while queues:
        p = rng.choice(sorted(queues))
        out.append(queues[p].pop(0))
        if not queues[p]:
            del queues[p]
    return out


@pytest.mark.parametrize("policy", ["drop", "fnw"])
def test_labels_do_not_depend_on_batching_interleaving_or_restarts(policy: str) -> None:
    cfg = config(late_click_policy=policy, label_window_s=2.0, click_horizon_s=6.0, max_pending=10**6)
    messages = random_stream(seed=1)

    def outcome(order_seed: int, batch: int, checkpoints: set[int]) -> tuple[list, list]:
        ordered = interleave(messages, order_seed)
        cuts = list(range(0, len(ordered), batch)) + [len(ordered)]
        d = Driver(cfg)
        emitted, rejects = [], []
        for n, (start, end) in enumerate(zip(cuts, cuts[1:])):
            d.feed(ordered[start:end])
            if n in checkpoints:
                emitted += d.emitted()
                rejects += d.rejects
                d = Driver(cfg, FeedbackJoiner.from_state(d.joiner.state_bytes(), cfg, SCHEMA.arrow_schema(), MODELS))
        emitted += d.emitted()
        rejects += d.rejects
        return sorted(emitted), sorted((r.reason, r.partition, r.offset) for r in rejects)

    reference = outcome(0, 1, set())
    emitted, rejects = reference
    ids = [e for e, _, role in emitted if role != FNW_DUPLICATE]
    assert len(ids) == len(set(ids)) > 300  # each impression or labelled event exactly once
    duplicates = [e for e, _, role in emitted if role == FNW_DUPLICATE]
    assert len(duplicates) == len(set(duplicates))
    assert (len(duplicates) > 0) == (policy == "fnw")
    assert any(label == 1 for _, label, role in emitted if role == JOINED)
    for order_seed, batch, checkpoints in ((1, 7, {3, 10}), (2, 64, {0}), (3, 1000, set()), (4, 13, set(range(0, 200, 5)))):
        assert outcome(order_seed, batch, checkpoints) == reference


def test_a_state_splits_by_partition_for_a_restart_with_other_shares() -> None:
    """One joiner's state, restored as two (one partition each, as two ranks would), ends as the one would have."""
    cfg = config(late_click_policy="fnw", label_window_s=2.0, click_horizon_s=6.0, max_pending=10**6)
    ordered = interleave(random_stream(seed=5), 0)
    half = len(ordered) // 2
    whole = Driver(cfg)
    for start in range(0, len(ordered), 50):
        whole.feed(ordered[start:start + 50])
    first = Driver(cfg)
    for start in range(0, half, 50):
        first.feed(ordered[start:min(start + 50, half)])
    state = first.joiner.state_bytes()
    rest = ordered[half:]
    outputs = first.emitted()
    for partition in (0, 1):
        rank = Driver(cfg, FeedbackJoiner.from_states([state], cfg, SCHEMA.arrow_schema(), MODELS, partitions=[partition]))
        mine = [m for m in rest if m.partition == partition]
        for start in range(0, len(mine), 30):
            rank.feed(mine[start:start + 30])
        outputs += rank.emitted()
    assert sorted(outputs) == sorted(whole.emitted())


@pytest.mark.parametrize("policy", ["drop", "fnw"])
def test_clicks_on_a_topic_of_their_own_label_as_on_one_topic_however_far_ahead_they_are_read(policy: str) -> None:
    """Two topics consumed side by side: clicks may be read long before their impressions."""
    one = config(late_click_policy=policy, label_window_s=2.0, click_horizon_s=6.0, max_pending=10**6)
    two = config(late_click_policy=policy, label_window_s=2.0, click_horizon_s=6.0, max_pending=10**6,
                 clicks_topic="clicks")
    messages = random_stream(seed=3)
    reference = Driver(one)
    for m in interleave(messages, 0):
        reference.feed([m])
    watermarks = [m for m in messages if b'"watermark"' in m.value]
    impressions = [m for m in messages if b'"click"' not in m.value]
    clicks = [m for m in messages if b'"click"' in m.value] + watermarks  # each topic ends with its watermark
    for seed, (imp_batch, click_batch) in enumerate(((5, 50), (40, 3), (1, 1000))):
        rng = random.Random(seed)
        imp_queue, click_queue = interleave(impressions, seed), interleave(clicks, seed + 10)
        d = Driver(two)
        while imp_queue or click_queue:
            take_imp = imp_queue[: rng.randint(0, imp_batch)]
            take_click = click_queue[: rng.randint(0, click_batch)]
            del imp_queue[: len(take_imp)], click_queue[: len(take_click)]
            events = decode_feedback(take_imp, SCHEMA, MAX_BYTES)
            clicked = decode_feedback(take_click, SCHEMA, MAX_BYTES)
            ids = events.events.column("event_id").to_pylist()
            scores = {m: np.array([score_of(i, m) for i in ids]) for m in MODELS}
            d.out.append(d.joiner.add(events.events, scores, clicked.clicks, events.max_ts, events.event_partitions,
                                      now=0.0, click_max_ts=clicked.max_ts))
            if rng.random() < 0.1:  # a checkpoint round trip now and then
                d.joiner = FeedbackJoiner.from_state(d.joiner.state_bytes(), two, SCHEMA.arrow_schema(), MODELS)
        assert sorted(d.emitted()) == sorted(reference.emitted()), seed
        assert len(d.joiner.waiting_clicks) == 0
