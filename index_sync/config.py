"""Configuration of the index_sync package."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class IndexSyncConfig:
    """How often the item index follows the trainer, and how big it may grow."""

    enabled: bool = False
    sync_interval_s: float = field(default=5.0, metadata={"gt": 0.0})
    # Re-encode every item: the shared item-tower weights move untouched items too.
    full_refresh_interval_s: float = field(default=300.0, metadata={"gt": 0.0})
    max_items: int = field(default=1_000_000, metadata={"ge": 1})  # catalogue bound (LRU eviction)
    encode_batch: int = field(default=8192, metadata={"ge": 1})  # items per item-tower pass
    drift_sample: int = field(default=1000, metadata={"ge": 0})  # untouched items checked per sync
    # Write every published version under this directory for separate reader processes.
    index_dir: str | None = None
    keep_versions: int = field(default=3, metadata={"ge": 1})
    # Longest the sync job waits for the training loop to hand over a weight snapshot.
    handoff_timeout_s: float = field(default=30.0, metadata={"gt": 0.0})
