"""Configuration of the index_sync package."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class IndexSyncConfig:
    """How often the item index follows the trainer, and how big it may grow."""

    enabled: bool = False
    sync_interval_s: float = field(default=5.0, metadata={"gt": 0.0})
    # Re-encode every item: the shared item-tower weights move untouched items too.
    full_refresh_interval_s: float = field(default=300.0, metadata={"gt": 0.0})
    max_items: int = field(default=1_000_000, metadata={"ge": 1})  # catalogue bound (LRU eviction)
    # "delta": a shared base (last full refresh) + a small delta of recent re-encodes, so a
    # sync costs O(dirty items); "clone": copy the whole index each sync, O(catalogue).
    # bench.index_sync measures both at 1M items.
    layout: Literal["clone", "delta"] = "delta"
    # Fold the delta into a new base once it holds this fraction of the base's rows.
    delta_merge_fraction: float = field(default=0.2, metadata={"gt": 0.0})
    encode_batch: int = field(default=8192, metadata={"ge": 1})  # items per item-tower pass
    drift_sample: int = field(default=1000, metadata={"ge": 0})  # untouched items checked per sync
    # Write every published version under this directory for separate reader processes.
    index_dir: str | None = None
    keep_versions: int = field(default=3, metadata={"ge": 1})
    # Longest the sync job waits for the training loop to hand over a weight snapshot.
    handoff_timeout_s: float = field(default=30.0, metadata={"gt": 0.0})
