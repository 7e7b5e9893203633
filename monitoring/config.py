"""Configuration of the monitoring package."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class MonitoringConfig:
    """The Prometheus endpoint and the streaming-quality windows behind it."""

    enabled: bool = True
    host: str = "127.0.0.1"  # "0.0.0.0" to be scraped from other hosts (the compose stack)
    port: int = field(default=9108, metadata={"ge": 0, "le": 65535})  # 0: any free port
    # Exact streaming AUC / logloss windows in events; the AUC drift gauge is the first
    # (short) minus the last (long).
    auc_windows: tuple[int, ...] = (1000, 10000)
    drift_detector: Literal["page_hinkley", "off"] = "page_hinkley"
    # The detector sees the mean logloss of each block of this many events (one value a
    # block keeps it cheap and its noise low).
    drift_block_events: int = field(default=1000, metadata={"ge": 10})
    drift_threshold: float = field(default=0.1, metadata={"gt": 0.0})  # Page-Hinkley lambda (logloss units)
    drift_delta: float = field(default=0.01, metadata={"ge": 0.0})  # tolerated change per block
    drift_min_blocks: int = field(default=10, metadata={"ge": 1})

    def __post_init__(self) -> None:
        if not self.auc_windows or any(w < 10 for w in self.auc_windows):
            raise ValueError(f"auc_windows must list window sizes >= 10 events, got {list(self.auc_windows)}")
