"""Join impressions with the clicks that answer them, later, into labelled events: exactly once.

The joiner holds each impression (its row, and the models' predictions *as of its
arrival*: what serving would have returned) until the event-time watermark passes its
``ts + label_window_s``; then it emits the impression once, labelled 1 if a click with
``ts`` within the window joined it, else 0, and the kept arrival predictions meet that
label in the streaming quality. The watermark is the smallest, over the partitions this
joiner reads, of the largest event time seen on each (a partition silent for
``idle_partition_s`` stops holding it back).

Why labels do not depend on how the stream was cut into batches (so a restart from a
checkpoint, which cuts differently, labels every impression as the uninterrupted run
would): a click joins by *event time* (``click.ts - impression.ts`` against the window and
the horizon), and an impression is emitted only once every partition has moved past its
window, by which time each click within the window, following its impression on the same
partition in ts order, has been read. That is the producer's contract: an impression and
its clicks on the same partition number, each partition in event-time order. A click that
arrives before its impression is dead-lettered, as is one for an impression this joiner
never saw or no longer holds.

Clicks after the window but within ``click_horizon_s``: ``late_click_policy = "drop"``
counts them; ``"fnw"`` emits a duplicate of the impression labelled 1 (the fake-negative
correction of Ktena et al. trains it, and every joined example, with FNW weights). Under
"fnw" an emitted impression is kept until its horizon passes, so a late click can still
find its features. Everything held counts against ``max_pending``; beyond it the entry
due first goes: emitted early with what it has (counted as ``early``), or forgotten if
already emitted.

Duplicates: an event id seen again within the last ``dedup_ids`` ids (impressions and
labelled events alike) is dropped and counted; a second click on an impression is too.

The whole state (held rows, arrival predictions, join flags, per-partition event times,
the duplicate window, counters) round-trips through `state_bytes`/`from_state`, one Arrow
IPC stream, so the daemon checkpoints it atomically with the offsets it covers.
"""

from __future__ import annotations

import base64
import heapq
import json
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stream.config import FeedbackConfig
from stream.dedup import RecentIds
from stream.held_rows import HeldRows
from stream.partition_clock import NO_TS, PartitionClock
from stream.waiting_clicks import WaitingClicks
from stream.wire import Reject

#: Roles of emitted rows (the trainer weights by them, the quality counts all but duplicates).
LABELLED, JOINED, FNW_DUPLICATE = 0, 1, 2
#: Dead-letter reasons of clicks that cannot join.
UNKNOWN_IMPRESSION = "unknown_impression"
EXPIRED_IMPRESSION = "expired_impression"
CLICK_BEFORE_IMPRESSION = "click_before_impression"
CLICK_REJECT_REASONS = (UNKNOWN_IMPRESSION, EXPIRED_IMPRESSION, CLICK_BEFORE_IMPRESSION)
_STATE_COLUMNS = ("__ts", "__seq", "__clicked", "__late", "__emitted", "__duplicated", "__partition")


@dataclass(slots=True)
class _Entry:
    ts: int
    seq: int  # arrival order: ties and eviction are deterministic
    row: int  # ordinal of its row in the held rows (`HeldRows`)
    scores: tuple[float, ...]
    partition: int
    clicked: bool = False
    late: bool = False  # a click after the window, within the horizon
    emitted: bool = False
    duplicated: bool = False  # its FNW duplicate went out


@dataclass
class Joined:
    """What one batch released: rows to train on, their roles and arrival predictions, and what happened."""

    table: pa.Table  # the event schema, label filled
    roles: np.ndarray  # int8: LABELLED, JOINED or FNW_DUPLICATE
    scores: dict[str, np.ndarray]  # per model: the prediction each row had when it arrived
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    label_delays_s: list[float] = field(default_factory=list)  # click ts - impression ts, joined clicks

    @property
    def counted(self) -> np.ndarray:
        """Rows the streaming quality counts: each impression and labelled event once (no duplicates)."""
        return self.roles != FNW_DUPLICATE


class FeedbackJoiner:
    """The join state of one consumer's partitions; `add` once per batch, in batch order."""

    def __init__(self, config: FeedbackConfig, schema: pa.Schema, models: Sequence[str]) -> None:
        self.config = config
        self.schema = schema
        self.models = tuple(models)
        self.window_ms = round(config.label_window_s * 1000)
        self.horizon_ms = round(config.click_horizon_s * 1000)
        self.fnw = config.late_click_policy == "fnw"
        self.entries: dict[str, _Entry] = {}
        self._rows = HeldRows(schema)
        self._due: list[tuple[int, int, str]] = []  # (due ts, seq, event id); stale items are skipped
        self._seq = 0
        self.clock = PartitionClock()  # the impressions' topic
        # Clicks on a topic of their own (`clicks_topic`): its clock, and the clicks that
        # wait until the impressions' partition has passed their time (a click may be read
        # before its impression when the two topics are consumed side by side).
        self.two_topics = bool(config.clicks_topic)
        self.click_clock = PartitionClock()
        self.waiting_clicks = WaitingClicks()
        self.recent = RecentIds(config.dedup_ids)
        self.pending = 0  # entries not emitted yet
        self._released = 0  # rows of forgotten entries, released at the end of the batch
        self.totals: Counter[str] = Counter()

    # -- the watermark -----------------------------------------------------------------
    def watermark(self, now: float | None = None) -> int | None:
        """The smallest latest-event-time over partitions not idle (of both topics); None before any event."""
        now = time.monotonic() if now is None else now
        idle_s = self.config.idle_partition_s
        clocks = (self.clock, self.click_clock) if self.two_topics else (self.clock,)
        active = [ts for clock in clocks for ts in clock.active(now, idle_s)]
        if active:
            return min(active)
        return max(self.clock.ts.values()) if self.clock.ts else None

    # -- one batch ---------------------------------------------------------------------
    def add(
        self, events: pa.Table, scores: dict[str, np.ndarray], clicks: pa.Table, max_ts: dict[int, int],
        partitions: np.ndarray | None = None, now: float | None = None,
        click_max_ts: dict[int, int] | None = None,
    ) -> Joined:
        """Take one batch (events with null labels are impressions), return what it releases.

        ``scores``: each model's prediction for every row of ``events``, made before any
        of this batch trained. ``max_ts``: the largest event time per partition in the
        batch, ``partitions``: each row's partition
        (`stream.feedback_wire.FeedbackDecoded`); held impressions keep theirs, so a
        restart with other partition shares (`from_states`) gives each its own.
        With ``clicks_topic`` set, ``clicks`` and ``click_max_ts`` come from the clicks'
        topic: a click waits until its partition's impressions have passed its time.
        """
        now = time.monotonic() if now is None else now
        counts: Counter[str] = Counter()
        out = _Emission(self)
        is_impression = events.column("label").is_null().to_numpy(zero_copy_only=False)
        fresh = self._first_seen(events, is_impression, counts)
        labelled = np.flatnonzero(~is_impression & fresh)
        impressions = np.flatnonzero(is_impression & fresh)
        if len(labelled):
            out.add_rows(events.take(pa.array(labelled)), LABELLED, {m: scores[m][labelled] for m in self.models})
            counts["labelled"] += len(labelled)
        if partitions is None:
            partitions = np.zeros(events.num_rows, dtype=np.int32)
        self._hold(events, impressions, scores, partitions, counts, out)
        self.clock.observe(max_ts, now)
        if self.two_topics:
            for partition in max_ts:  # a partition with no click yet holds the watermark back until idle
                if partition not in self.click_clock.ts:
                    self.click_clock.ts[partition] = NO_TS
                    self.click_clock.seen[partition] = now
            self.click_clock.observe(click_max_ts or {}, now)
            self.waiting_clicks.push_table(clicks)
            idle_s = self.config.idle_partition_s
            clicks, forced = self.waiting_clicks.due(lambda p: self.clock.ts.get(p, NO_TS),
                                                     lambda p: self.clock.idle(p, now, idle_s), self.config.max_pending)
            counts["clicks_forced"] += forced
        rejects = self._join(clicks, counts, out)
        self._release(self.watermark(now), counts, out)
        self.totals.update(counts)
        joined = out.result(rejects, counts)
        self._release_rows()  # only now: the emission above read the rows it releases
        return joined

    def _first_seen(self, events: pa.Table, is_impression: np.ndarray, counts: Counter[str]) -> np.ndarray:
        """Mask of rows whose event id was not seen within the duplicate window (nor held)."""
        keys = RecentIds.keys(events.column("event_id"))
        fresh = self.recent.fresh(keys)
        held = self.entries
        for i, event_id in enumerate(events.column("event_id").to_pylist()):
            if fresh[i] and event_id in held:  # held beyond the duplicate window
                fresh[i] = False
        self.recent.record([k for k, f in zip(keys, fresh) if f])
        counts["duplicate_impressions"] += int((~fresh & is_impression).sum())
        counts["duplicate_events"] += int((~fresh & ~is_impression).sum())
        return fresh

    def _hold(self, events: pa.Table, rows: np.ndarray, scores: dict[str, np.ndarray], partitions: np.ndarray,
              counts: Counter[str], out: _Emission) -> None:
        if not len(rows):
            return
        held = events.take(pa.array(rows))
        first = self._rows.append(held)
        ts = held.column("ts").to_numpy()
        ids = held.column("event_id").to_pylist()
        per_model = [scores[m][rows].tolist() for m in self.models]
        held_partitions = partitions[rows].tolist()
        for i, event_id in enumerate(ids):
            entry = _Entry(int(ts[i]), self._seq, first + i, tuple(s[i] for s in per_model), held_partitions[i])
            self._seq += 1
            self.entries[event_id] = entry
            self.pending += 1
            heapq.heappush(self._due, (self._due_of(entry), entry.seq, event_id))
            if len(self.entries) > self.config.max_pending:
                self._evict_one(counts, out)
        counts["impressions"] += len(rows)

    def _join(self, clicks: pa.Table, counts: Counter[str], out: _Emission) -> list[Reject]:
        rejects: list[Reject] = []
        if clicks.num_rows == 0:
            return rejects
        columns = [clicks.column(c).to_pylist() for c in ("event_id", "ts", "kind", "partition", "offset")]
        for event_id, ts, kind, partition, offset in zip(*columns):
            entry = self.entries.get(event_id)
            reason = None
            if entry is None:
                if RecentIds.keys([event_id])[0] not in self.recent:
                    reason = UNKNOWN_IMPRESSION
                elif self.fnw:  # fnw holds an impression until its horizon: this one is past it (or was forgotten)
                    reason = EXPIRED_IMPRESSION
                else:  # "drop" lets an impression go once labelled: a click for it now is late
                    _count_dropped(counts)
                    continue
            elif ts < entry.ts:
                reason = CLICK_BEFORE_IMPRESSION
            elif ts - entry.ts > self.horizon_ms:
                if not self.fnw:  # as if its impression had gone already: late, dropped
                    _count_dropped(counts)
                    continue
                reason = EXPIRED_IMPRESSION
            if reason is not None:
                counts["orphan_clicks"] += 1
                payload = json.dumps({"type": "click", "event_id": event_id, "ts": ts, "kind": kind}).encode()
                rejects.append(Reject(reason, partition, offset, payload, f"click for impression {event_id!r}: {reason}"))
                continue
            in_window = ts - entry.ts <= self.window_ms
            if entry.clicked or entry.late:
                counts["duplicate_clicks"] += 1
            elif in_window and not entry.emitted:
                entry.clicked = True
                counts["joined_clicks"] += 1
                out.delays.append((ts - entry.ts) / 1000.0)
            else:  # after its window (by event time), or its impression went out early
                entry.late = True
                counts["late_clicks"] += 1
                if not self.fnw:
                    counts["late_clicks_dropped"] += 1
                elif entry.emitted:
                    self._duplicate(event_id, entry, counts, out)
        return rejects

    def _duplicate(self, event_id: str, entry: _Entry, counts: Counter[str], out: _Emission) -> None:
        entry.duplicated = True
        out.add_held(entry, 1, FNW_DUPLICATE)
        counts["fnw_duplicates"] += 1

    def _release(self, watermark: int | None, counts: Counter[str], out: _Emission) -> None:
        """Emit every impression whose window the watermark passed; forget those past their horizon."""
        if watermark is None:
            return
        while self._due and self._due[0][0] < watermark:
            self._pop_due(counts, out, early=False)

    def _evict_one(self, counts: Counter[str], out: _Emission) -> None:
        while len(self.entries) > self.config.max_pending and self._due:
            self._pop_due(counts, out, early=True)

    def _pop_due(self, counts: Counter[str], out: _Emission, early: bool) -> None:
        due, seq, event_id = heapq.heappop(self._due)
        entry = self.entries.get(event_id)
        if entry is None or entry.seq != seq:
            return
        if not entry.emitted:
            entry.emitted = True
            self.pending -= 1
            out.add_held(entry, int(entry.clicked), JOINED)
            if early:
                counts["emitted_early"] += 1
            if self.fnw and entry.late and not entry.duplicated:
                self._duplicate(event_id, entry, counts, out)
            keep_until = self._due_of(entry)  # emitted: its horizon
            if self.fnw and not entry.duplicated and keep_until > due and not early:
                heapq.heappush(self._due, (keep_until, seq, event_id))  # a late click may still come
                return
        elif early:
            counts["forgotten"] += 1
        self._forget(event_id)

    def _forget(self, event_id: str) -> None:
        del self.entries[event_id]
        self._released += 1

    def _release_rows(self) -> None:
        remap = self._rows.release(self._released, lambda: (e.row for e in self.entries.values()))
        self._released = 0
        if remap is not None:
            for entry in self.entries.values():
                entry.row = remap[entry.row]

    @property
    def in_window_share(self) -> float:
        """The share of joinable clicks that came within the label window, so far (FNW's q; 0 before any click)."""
        joined, late = self.totals["joined_clicks"], self.totals["late_clicks"]
        return joined / (joined + late) if joined + late else 0.0

    # -- sizes and state ---------------------------------------------------------------
    def bounded_sizes(self) -> dict[str, int]:
        return {"joiner held impressions": len(self.entries), "joiner pending impressions": self.pending,
                "joiner duplicate-window ids": len(self.recent),
                "joiner waiting clicks": len(self.waiting_clicks)}

    def state_bytes(self) -> bytes:
        """The whole join state as one Arrow IPC stream (rows + flags; the rest in the schema metadata).

        Built column by column from the entries in place: a checkpoint of a full joiner makes
        no Python object per entry (a tuple or list each, 30 s apart, is what fragmented
        CPython's small-object arenas and grew the daemon's RSS between checkpoints). The due
        times are not stored: each follows from its entry (`_due_of`).
        """
        entries = list(self.entries.values())
        count = len(entries)
        seq = np.fromiter((e.seq for e in entries), np.int64, count)
        ordered = np.argsort(seq, kind="stable")
        order = pa.array(ordered)
        # One copy of the held rows, already in arrival order: with 200,000 held each copy is
        # tens of MiB, and the checkpoint's peak is what a host must provision for.
        rows = self._rows.take(np.fromiter((e.row for e in entries), np.int64, count)[ordered])
        flags = {
            "__ts": pa.array(np.fromiter((e.ts for e in entries), np.int64, count)),
            "__seq": pa.array(seq),
            "__clicked": pa.array(np.fromiter((e.clicked for e in entries), np.bool_, count)),
            "__late": pa.array(np.fromiter((e.late for e in entries), np.bool_, count)),
            "__emitted": pa.array(np.fromiter((e.emitted for e in entries), np.bool_, count)),
            "__duplicated": pa.array(np.fromiter((e.duplicated for e in entries), np.bool_, count)),
            "__partition": pa.array(np.fromiter((e.partition for e in entries), np.int32, count)),
        }
        for i, model in enumerate(self.models):
            flags[f"__score_{model}"] = pa.array(np.fromiter((e.scores[i] for e in entries), np.float64, count))
        for name, values in flags.items():
            rows = rows.append_column(name, values.take(order))
        meta = {
            "seq": self._seq,
            "partition_ts": {str(p): ts for p, ts in self.clock.ts.items()},
            "click_partition_ts": {str(p): ts for p, ts in self.click_clock.ts.items()},
            "waiting_clicks": self.waiting_clicks.state(),
            "recent": base64.b64encode(self.recent.state_bytes()).decode(),
            "totals": dict(self.totals),
        }
        rows = rows.replace_schema_metadata({b"inttower.joiner": json.dumps(meta).encode()})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_table(rows)
        return sink.getvalue().to_pybytes()

    def _due_of(self, entry: _Entry) -> int:
        """When the watermark next acts on a held entry: its window's end, or once emitted its horizon's."""
        return entry.ts + (self.horizon_ms if entry.emitted else self.window_ms)

    @classmethod
    def from_state(cls, data: bytes, config: FeedbackConfig, schema: pa.Schema, models: Sequence[str]) -> FeedbackJoiner:
        return cls.from_states([data], config, schema, models)

    @classmethod
    def from_states(
        cls, states: Sequence[bytes], config: FeedbackConfig, schema: pa.Schema, models: Sequence[str],
        partitions: Collection[int] | None = None,
    ) -> FeedbackJoiner:
        """One joiner from the states of one or more joiners (the ranks of a multi-worker job).

        ``partitions``: keep only what belongs to these (a rank's share after a restart,
        perhaps with another world size); None keeps everything. The duplicate windows are
        merged, newest last, and cut to ``dedup_ids``.
        """
        joiner = cls(config, schema, models)
        keep = None if partitions is None else set(partitions)
        recent: list[bytes] = []
        for data in states:
            table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
            meta = json.loads(table.schema.metadata[b"inttower.joiner"])
            missing = [m for m in joiner.models if f"__score_{m}" not in table.column_names]
            if missing:
                raise ValueError(f"the join state holds no arrival predictions of model(s) {', '.join(missing)}")
            if keep is not None:
                table = table.filter(pc.is_in(table.column("__partition"), pa.array(sorted(keep), pa.int32())))
            first = joiner._rows.append(table.select(schema.names).cast(schema))
            columns = {name: table.column(name).to_pylist()
                       for name in (*_STATE_COLUMNS, *[f"__score_{m}" for m in joiner.models])}
            for i, event_id in enumerate(table.column("event_id").to_pylist()):
                entry = _Entry(columns["__ts"][i], columns["__seq"][i], first + i,
                               tuple(columns[f"__score_{m}"][i] for m in joiner.models), columns["__partition"][i],
                               columns["__clicked"][i], columns["__late"][i], columns["__emitted"][i],
                               columns["__duplicated"][i])
                joiner.entries[event_id] = entry
                joiner.pending += not entry.emitted
            joiner._seq = max(joiner._seq, int(meta["seq"]))
            for clock, key in ((joiner.clock, "partition_ts"), (joiner.click_clock, "click_partition_ts")):
                for p, ts in meta.get(key, {}).items():
                    if keep is None or int(p) in keep:
                        clock.ts[int(p)] = max(int(ts), clock.ts.get(int(p), NO_TS))
            joiner.waiting_clicks.restore(meta.get("waiting_clicks", []), keep)
            recent.append(base64.b64decode(meta["recent"]))
            if keep is None:  # a rank's share starts its own counts
                joiner.totals.update({str(k): int(v) for k, v in meta["totals"].items()})
        joiner._due = [(joiner._due_of(e), e.seq, event_id) for event_id, e in joiner.entries.items()]
        heapq.heapify(joiner._due)
        joiner.recent = RecentIds.from_states(config.dedup_ids, recent)
        return joiner


def _count_dropped(counts: Counter[str]) -> None:
    counts["late_clicks"] += 1
    counts["late_clicks_dropped"] += 1


class _Emission:
    """Rows released by one batch, gathered, then built into a `Joined` once."""

    def __init__(self, joiner: FeedbackJoiner) -> None:
        self.joiner = joiner
        self.tables: list[pa.Table] = []
        self.roles: list[np.ndarray] = []
        self.scores: dict[str, list[np.ndarray]] = {m: [] for m in joiner.models}
        self.held: list[tuple[int, int, int, tuple[float, ...]]] = []  # (row, label, role, scores)
        self.delays: list[float] = []

    def add_rows(self, table: pa.Table, role: int, scores: dict[str, np.ndarray]) -> None:
        self._flush_held()
        self.tables.append(table)
        self.roles.append(np.full(table.num_rows, role, dtype=np.int8))
        for m in self.joiner.models:
            self.scores[m].append(np.asarray(scores[m], dtype=np.float64))

    def add_held(self, entry: _Entry, label: int, role: int) -> None:
        self.held.append((entry.row, label, role, entry.scores))

    def _flush_held(self) -> None:
        if not self.held:
            return
        rows, labels, roles, scores = zip(*self.held)
        self.held = []
        table = self.joiner._rows.take(list(rows))
        index = table.schema.get_field_index("label")
        table = table.set_column(index, "label", pa.array(labels, pa.int8()))
        self.tables.append(table)
        self.roles.append(np.asarray(roles, dtype=np.int8))
        for i, m in enumerate(self.joiner.models):
            self.scores[m].append(np.asarray([s[i] for s in scores], dtype=np.float64))

    def result(self, rejects: list[Reject], counts: Counter[str]) -> Joined:
        self._flush_held()
        schema = self.joiner.schema
        tables = [t for t in self.tables if t.num_rows]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        roles = np.concatenate(self.roles) if self.roles else np.zeros(0, dtype=np.int8)
        scores = {m: (np.concatenate(v) if v else np.zeros(0)) for m, v in self.scores.items()}
        return Joined(table, roles, scores, rejects, counts, self.delays)
