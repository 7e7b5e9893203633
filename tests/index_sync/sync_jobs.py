"""Shared by the index-sync tests: a small model's `IndexSync`, and jobs run the way the daemon runs them."""

from __future__ import annotations

import threading
import time

import torch

from index_sync.config import IndexSyncConfig
from index_sync.sync import IndexSync, SyncReport
from model.build import build_model
from model.config import ModelConfig
from model.features import FeatureEncoder

SMALL = ModelConfig(hidden=(16, 8), embedding_dim=4, heads=2, head_dim=4)


def small_sync(max_items: int = 10_000, **config: object) -> IndexSync:
    torch.manual_seed(0)
    return IndexSync(IndexSyncConfig(enabled=True, max_items=max_items, handoff_timeout_s=30.0, **config),
                     build_model(SMALL).eval(), FeatureEncoder(SMALL.features))


def handoff_soon(sync: IndexSync) -> None:
    """The training loop's side: hand over 0.1 s from now, from another thread."""
    threading.Thread(target=lambda: (time.sleep(0.1), sync.serve_handoff()), daemon=True).start()


def run_sync_job(sync: IndexSync, full: bool = False) -> SyncReport:
    handoff_soon(sync)
    report = sync.run_job(full=full)
    assert report is not None
    return report
