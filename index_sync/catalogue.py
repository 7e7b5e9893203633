"""The item catalogue: the latest features of every item seen, so any item can be re-encoded.

The sync job re-encodes items without their events (dirty items, full refreshes, drift
samples), so the features each item last arrived with are kept here, bounded by
``max_items`` with least-recently-seen eviction. `update` runs in the trainer thread on
every micro-batch, so its cost must not grow with the catalogue: a 2k-row update into a
full 1M-item catalogue costs about a millisecond.

Storage (why it looks like this): features stay Arrow, never Python objects.

* ``_chunks``: append-only list of immutable ``item`` StructArrays, one per update,
  holding the last row of each distinct item in that update. A row is addressed by its
  *global row* = position in the concatenation of all chunks.
* Per-item state lives in *slots* (numpy arrays indexed by slot): item id, global row
  of its latest features, and recency. Freed slots are reused.
* `_IdIndex` maps item id -> slot: a large sorted array plus a small sorted delta for
  recent inserts, with tombstones for removals, merged when the delta grows past a
  fraction of the main part. Lookups are ``np.searchsorted``; no per-row Python.
* Eviction pops from a queue of the oldest slots found by one ``np.argpartition`` over
  all slots, skipping entries touched since; the queue is refilled when it runs dry,
  so the O(N) scan is amortised over many evictions.
* Rows superseded by a later update or evicted become garbage in old chunks. When the
  garbage exceeds the compaction slack the live rows are gathered into one chunk (O(N),
  amortised O(1) per row because the slack is a fraction of ``max_items``). Rows held:
  at most ``max_items + slack + rows of one update``.

Recency is a logical clock, not event time: every distinct item of an update gets the
next clock value, in the order of its last row in the update, so later rows count as
more recent and the order is total. Eviction order is therefore deterministic and
survives a checkpoint exactly.

Thread-safety: every public method is safe to call from any thread (one internal lock).
`features` holds the lock only for the id lookup; the Arrow gather runs outside it on an
immutable snapshot of the chunks, so a sync reading features blocks the trainer's
`update` for milliseconds at most.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

ID_COLUMN = "item_id"
ITEM_COLUMN = "item"
LAST_SEEN_COLUMN = "last_seen"
#: Garbage feature rows tolerated before compaction, as a fraction of ``max_items``...
COMPACTION_SLACK_FRACTION = 0.5
#: ...but never fewer than this many rows (small catalogues would compact every update).
MIN_COMPACTION_SLACK_ROWS = 16_384
#: The id index merges its delta when delta + tombstones exceed main size / this...
ID_DELTA_DIVISOR = 16
#: ...or this many entries, whichever is larger.
MIN_ID_DELTA = 4_096
#: One eviction scan queues the oldest live slots / this...
VICTIM_QUEUE_DIVISOR = 64
#: ...but at least this many.
MIN_VICTIM_QUEUE = 1_024
#: Recency of a free slot: never chosen as an eviction victim.
FREE_SLOT = np.iinfo(np.int64).max
#: Schema-metadata key of the checkpoint's counters.
CHECKPOINT_METADATA_KEY = b"inttower.catalogue"
CHECKPOINT_FORMAT = 1


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class UpdateResult:
    """What one `ItemCatalogue.update` changed.

    ``new_items``: ids that were not in the catalogue before and are in it now (ascending).
    ``evicted``: ids removed by eviction, least recently seen first; the sync job removes
    them from the index. An update with more than ``max_items`` distinct items also
    evicts some of its own new ids; those are in ``evicted`` and not in ``new_items``.
    The two arrays never overlap.
    """

    new_items: np.ndarray
    evicted: np.ndarray


class _IdIndex:
    """Item id -> slot, without per-row Python and without O(N) work per small insert.

    Not thread-safe: the catalogue's lock guards it. Callers insert only absent ids and
    remove only present ones.
    """

    def __init__(self) -> None:
        self._main_ids, self._main_slots = _empty(), _empty()  # sorted by id; slot -1 = removed
        self._delta_ids, self._delta_slots = _empty(), _empty()  # sorted by id; slot -1 = removed
        self._dead = 0

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where unknown."""
        slots = _sorted_lookup(self._main_ids, self._main_slots, ids)
        missing = slots < 0
        if missing.any() and self._delta_ids.size:
            slots[missing] = _sorted_lookup(self._delta_ids, self._delta_slots, ids[missing])
        return slots

    def insert(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Add absent ``ids`` (ascending, distinct) pointing at ``slots``."""
        at = np.searchsorted(self._delta_ids, ids)
        self._delta_ids = np.insert(self._delta_ids, at, ids)
        self._delta_slots = np.insert(self._delta_slots, at, slots)
        self._maybe_merge()

    def remove(self, ids: np.ndarray) -> None:
        """Forget present ``ids`` (tombstones, dropped at the next merge)."""
        for keys, slots in ((self._main_ids, self._main_slots), (self._delta_ids, self._delta_slots)):
            pos = np.searchsorted(keys, ids)
            hit = pos < keys.size
            hit[hit] = keys[pos[hit]] == ids[hit]
            slots[pos[hit]] = -1
        self._dead += ids.size
        self._maybe_merge()

    def _maybe_merge(self) -> None:
        if self._delta_ids.size + self._dead > max(MIN_ID_DELTA, self._main_ids.size // ID_DELTA_DIVISOR):
            self.rebuild(*self.items())

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids ascending, slots); O(N)."""
        ids = np.concatenate([self._main_ids, self._delta_ids])
        slots = np.concatenate([self._main_slots, self._delta_slots])
        live = slots >= 0
        ids, slots = ids[live], slots[live]
        order = np.argsort(ids, kind="stable")  # two sorted runs: a linear merge
        return ids[order], slots[order]

    def rebuild(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Replace the content with ``ids`` (ascending, distinct) -> ``slots``."""
        self._main_ids, self._main_slots = ids, slots
        self._delta_ids, self._delta_slots = _empty(), _empty()
        self._dead = 0


def _sorted_lookup(keys: np.ndarray, values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.size, -1, dtype=np.int64)
    if keys.size == 0:
        return out
    pos = np.searchsorted(keys, ids)
    hit = pos < keys.size
    hit[hit] = keys[pos[hit]] == ids[hit]
    out[hit] = values[pos[hit]]
    return out


class ItemCatalogue:
    """Latest ``item`` struct per item id, at most ``max_items`` ids, LRU-evicted.

    ``evicted_total`` counts evicted ids over the catalogue's life and ``updates_total``
    the calls to `update` that carried rows; both are checkpointed.
    """

    def __init__(self, max_items: int, compaction_slack: int | None = None) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self.compaction_slack = (
            compaction_slack
            if compaction_slack is not None
            else max(MIN_COMPACTION_SLACK_ROWS, int(COMPACTION_SLACK_FRACTION * max_items))
        )
        self.evicted_total = 0
        self.updates_total = 0
        self._lock = threading.Lock()
        self._index = _IdIndex()
        self._slot_ids = _empty()
        self._slot_rows = _empty()
        self._slot_seen = _empty()  # FREE_SLOT where free
        self._free = _empty()  # stack of free slots
        self._live = 0
        self._victims = _empty()  # eviction queue: slots, oldest first...
        self._victim_seen = _empty()  # ...and their recency when queued
        self._chunks: list[pa.Array] = []
        self._stored_rows = 0
        self._clock = 0  # next recency value
        self._item_type: pa.DataType | None = None

    # ----------------------------------------------------------------- writing

    def update(self, items: pa.Table) -> UpdateResult:
        """Record the ``item`` struct of the last row of each ``item_id`` in ``items``.

        ``items`` needs an int64 ``item_id`` column without nulls and an ``item`` struct
        column (other columns, e.g. a decoded click-log batch's, are ignored). Its item
        struct type must equal the one of earlier updates. Cost: O(m log N) for m rows;
        the O(N) steps (id-index merge, eviction scan, compaction) are amortised.
        """
        ids, item_col = _validated_columns(items)
        if ids.size == 0:
            return UpdateResult(_empty(), _empty())
        # Last occurrence of each id = first occurrence in the reversed array.
        uniq, first_in_reversed = np.unique(ids[::-1], return_index=True)
        last_pos = ids.size - 1 - first_in_reversed  # aligned with uniq (ascending ids)
        recency_rank = np.empty(uniq.size, dtype=np.int64)
        recency_rank[np.argsort(last_pos, kind="stable")] = np.arange(uniq.size, dtype=np.int64)
        chunk = _single_array(item_col.take(pa.array(last_pos)))

        with self._lock:
            if self._item_type is None:
                self._item_type = chunk.type
            elif chunk.type != self._item_type:
                raise ValueError(
                    f"item struct type changed: catalogue holds {self._item_type}, update has {chunk.type}"
                    " (a feature-spec change needs a fresh catalogue)"
                )
            rows = self._stored_rows + np.arange(uniq.size, dtype=np.int64)
            seen = self._clock + recency_rank
            slots = self._index.lookup(uniq)
            fresh = slots < 0
            new_ids = uniq[fresh]
            if new_ids.size:
                slots[fresh] = self._allocate(new_ids.size)
                self._slot_ids[slots[fresh]] = new_ids
                self._index.insert(new_ids, slots[fresh])
                self._live += new_ids.size
            self._slot_rows[slots] = rows
            self._slot_seen[slots] = seen
            self._chunks.append(chunk)
            self._stored_rows += uniq.size
            self._clock += uniq.size
            self.updates_total += 1
            evicted = self._evict_locked(self._live - self.max_items)
            if self._stored_rows - self._live > self.compaction_slack:
                self._compact_locked()
        if evicted.size and new_ids.size:
            new_ids = new_ids[~np.isin(new_ids, evicted)]
        return UpdateResult(new_ids, evicted)

    def _allocate(self, n: int) -> np.ndarray:
        if self._free.size < n:
            old = self._slot_ids.size
            grow = max(n - self._free.size, old // 2, MIN_VICTIM_QUEUE)
            self._slot_ids = np.concatenate([self._slot_ids, np.zeros(grow, np.int64)])
            self._slot_rows = np.concatenate([self._slot_rows, np.zeros(grow, np.int64)])
            self._slot_seen = np.concatenate([self._slot_seen, np.full(grow, FREE_SLOT, np.int64)])
            self._free = np.concatenate([np.arange(old + grow - 1, old - 1, -1, dtype=np.int64), self._free])
        slots, self._free = self._free[-n:], self._free[:-n]
        return slots

    def _evict_locked(self, count: int) -> np.ndarray:
        """Free the ``count`` least recently seen slots; their ids, oldest first."""
        evicted: list[np.ndarray] = []
        while count > 0:
            if self._victims.size == 0:
                self._refill_victims()
            valid = self._slot_seen[self._victims] == self._victim_seen  # untouched since queued
            valid_at = np.flatnonzero(valid)
            if valid_at.size <= count:
                take, self._victims, self._victim_seen = self._victims[valid], _empty(), _empty()
            else:
                cut = valid_at[count - 1] + 1
                take = self._victims[:cut][valid[:cut]]
                self._victims, self._victim_seen = self._victims[cut:], self._victim_seen[cut:]
            ids = self._slot_ids[take]
            self._index.remove(ids)
            self._slot_seen[take] = FREE_SLOT
            self._free = np.concatenate([self._free, take])
            self._live -= take.size
            count -= take.size
            evicted.append(ids)
        if not evicted:
            return _empty()
        out = np.concatenate(evicted)
        self.evicted_total += int(out.size)
        return out

    def _refill_victims(self) -> None:
        # The queue holds the oldest slots at refill time; anything touched later gets a
        # larger clock than all of them, so valid queue entries stay the global LRU order.
        batch = min(self._live, max(MIN_VICTIM_QUEUE, self._live // VICTIM_QUEUE_DIVISOR))
        if batch < self._slot_seen.size:
            slots = np.argpartition(self._slot_seen, batch - 1)[:batch]
        else:
            slots = np.arange(self._slot_seen.size)
        slots = slots[self._slot_seen[slots] != FREE_SLOT]
        slots = slots[np.argsort(self._slot_seen[slots], kind="stable")]
        self._victims, self._victim_seen = slots, self._slot_seen[slots]

    def _compact_locked(self) -> None:
        """Gather the live rows into one chunk; O(N). Snapshots taken by readers stay valid."""
        live = np.flatnonzero(self._slot_seen != FREE_SLOT)
        rows = pa.array(self._slot_rows[live])
        chunk = _single_array(pa.chunked_array(self._chunks, type=self._item_type).take(rows))
        logger.debug("catalogue compacted: %d stored rows -> %d", self._stored_rows, live.size)
        self._chunks = [chunk]
        self._stored_rows = live.size
        self._slot_rows[live] = np.arange(live.size, dtype=np.int64)

    # ----------------------------------------------------------------- reading

    def features(self, item_ids: np.ndarray) -> pa.Table:
        """``item_id`` and ``item`` of the known ids among ``item_ids``, in the order given.

        Unknown ids are left out (`contains` tells which); duplicates are kept.
        """
        item_ids = _as_ids(item_ids)
        with self._lock:
            slots = self._index.lookup(item_ids)
            known = slots >= 0
            rows = self._slot_rows[slots[known]]
            chunks = list(self._chunks)
            item_type = self._item_type
        if item_type is None:
            item: pa.Array | pa.ChunkedArray = pa.array([], type=pa.struct([]))
        else:
            item = pa.chunked_array(chunks, type=item_type).take(pa.array(rows))
        return pa.table({ID_COLUMN: pa.array(item_ids[known], type=pa.int64()), ITEM_COLUMN: item})

    def contains(self, item_ids: np.ndarray) -> np.ndarray:
        """Boolean mask over ``item_ids``: which ids the catalogue holds."""
        with self._lock:
            return self._index.lookup(_as_ids(item_ids)) >= 0

    def last_seen(self, item_ids: np.ndarray) -> np.ndarray:
        """Recency clock of each id (larger = seen later), -1 for unknown ids."""
        with self._lock:
            slots = self._index.lookup(_as_ids(item_ids))
            out = np.full(slots.size, -1, dtype=np.int64)
            out[slots >= 0] = self._slot_seen[slots[slots >= 0]]
            return out

    def item_ids(self) -> np.ndarray:
        """All known ids, ascending (a new array; O(N))."""
        with self._lock:
            return self._index.items()[0]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Up to ``n`` distinct known ids drawn uniformly without replacement."""
        with self._lock:
            live = np.flatnonzero(self._slot_seen != FREE_SLOT)
            picked = rng.choice(live, size=min(n, live.size), replace=False)
            return self._slot_ids[picked]

    def __contains__(self, item_id: object) -> bool:
        return bool(self.contains(np.array([item_id], dtype=np.int64))[0])

    def __len__(self) -> int:
        return self._live

    @property
    def stored_rows(self) -> int:
        """Feature rows held, live and superseded: at most max_items + slack + one update."""
        return self._stored_rows

    # ----------------------------------------------------------------- checkpoints

    def to_parquet_bytes(self) -> bytes:
        """Parquet bytes of ``item_id``, ``last_seen``, ``item``, least recently seen first.

        The schema metadata holds the clock and counters, so a round trip is exact.
        """
        with self._lock:
            live = np.flatnonzero(self._slot_seen != FREE_SLOT)
            live = live[np.argsort(self._slot_seen[live], kind="stable")]
            ids, seen = self._slot_ids[live], self._slot_seen[live]
            if self._item_type is None:
                item: pa.Array | pa.ChunkedArray = pa.nulls(0)
            else:
                item = pa.chunked_array(self._chunks, type=self._item_type).take(pa.array(self._slot_rows[live]))
            meta = {
                "format": CHECKPOINT_FORMAT,
                "clock": self._clock,
                "updates_total": self.updates_total,
                "evicted_total": self.evicted_total,
            }
        table = pa.table({ID_COLUMN: pa.array(ids), LAST_SEEN_COLUMN: pa.array(seen), ITEM_COLUMN: item})
        table = table.replace_schema_metadata({CHECKPOINT_METADATA_KEY: json.dumps(meta).encode()})
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()

    @classmethod
    def from_parquet_bytes(cls, data: bytes, max_items: int, compaction_slack: int | None = None) -> ItemCatalogue:
        """Rebuild a catalogue written by `to_parquet_bytes`.

        If the checkpoint holds more than ``max_items`` ids (the limit was lowered), the
        least recently seen are dropped, logged and counted in ``evicted_total``.
        """
        table = pq.read_table(io.BytesIO(data))
        raw_meta = (table.schema.metadata or {}).get(CHECKPOINT_METADATA_KEY)
        if raw_meta is None:
            raise ValueError("not an item-catalogue checkpoint: schema metadata key missing")
        meta = json.loads(raw_meta)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"item-catalogue checkpoint format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        cat = cls(max_items, compaction_slack)
        cat._clock = int(meta["clock"])
        cat.updates_total = int(meta["updates_total"])
        cat.evicted_total = int(meta["evicted_total"])
        if table.num_rows == 0:
            return cat
        seen = table.column(LAST_SEEN_COLUMN).to_numpy().astype(np.int64)
        keep = np.argsort(seen, kind="stable")[-max_items:]  # oldest first; drop the oldest if over
        if dropped := table.num_rows - keep.size:
            logger.warning(
                "catalogue checkpoint holds %d items, max_items=%d: dropping the %d least recently seen",
                table.num_rows, max_items, dropped,
            )
            cat.evicted_total += dropped
        ids = table.column(ID_COLUMN).to_numpy().astype(np.int64)[keep]
        chunk = _single_array(table.column(ITEM_COLUMN).take(pa.array(keep)))
        n = ids.size
        cat._slot_ids, cat._slot_seen = ids, seen[keep]
        cat._slot_rows = np.arange(n, dtype=np.int64)
        cat._live = n
        by_id = np.argsort(ids, kind="stable")
        cat._index.rebuild(ids[by_id], by_id.astype(np.int64))
        cat._chunks, cat._stored_rows, cat._item_type = [chunk], n, chunk.type
        return cat


def _as_ids(item_ids: np.ndarray) -> np.ndarray:
    return np.asarray(item_ids, dtype=np.int64).reshape(-1)


def _single_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _validated_columns(items: pa.Table) -> tuple[np.ndarray, pa.ChunkedArray]:
    names = items.schema.names
    if ID_COLUMN not in names or ITEM_COLUMN not in names:
        raise ValueError(f"catalogue update needs columns {ID_COLUMN!r} and {ITEM_COLUMN!r}, got {names}")
    id_col = items.column(ID_COLUMN)
    if id_col.type != pa.int64():
        raise ValueError(f"column {ID_COLUMN!r} must be int64, got {id_col.type}")
    if id_col.null_count:
        raise ValueError(f"column {ID_COLUMN!r} has {id_col.null_count} nulls")
    item_col = items.column(ITEM_COLUMN)
    if not pa.types.is_struct(item_col.type):
        raise ValueError(f"column {ITEM_COLUMN!r} must be a struct, got {item_col.type}")
    return id_col.to_numpy(), item_col
