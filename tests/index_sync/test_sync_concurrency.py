"""Readers under fire: 8 threads score and retrieve while the trainer trains and syncs publish."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from index_sync.config import IndexSyncConfig
from index_sync.serving import IndexNotReadyError, Reader
from index_sync.sync import IndexSync
from model.build import build_model
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.features import FeatureEncoder
from model.online import OnlineTrainer
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

pytestmark = pytest.mark.slow

SMALL = ModelConfig(hidden=(32, 32, 16), embedding_dim=8, heads=2, head_dim=8)
READERS = 8
VERSIONS = 50
DEADLINE_S = 120


class _RecordingSource:
    """The readers' snapshot source; remembers, per thread, which snapshot each call got."""

    def __init__(self, sync: IndexSync) -> None:
        self.sync = sync
        self.local = threading.local()

    def __call__(self):
        self.local.snapshot = self.sync.snapshot
        return self.local.snapshot


def test_readers_see_whole_versions_while_trainer_and_syncs_run():
    torch.manual_seed(0)
    table = generate_synthetic_log(SyntheticLogConfig(events=60_000, seed=7))
    encoder = FeatureEncoder(SMALL.features)
    trainer = OnlineTrainer(build_model(SMALL), TrainConfig(), OnlineConfig())
    sync = IndexSync(IndexSyncConfig(drift_sample=200), trainer.model, encoder)
    source = _RecordingSource(sync)
    reader = Reader(encoder, source)
    users = table.slice(0, 64)
    stop = threading.Event()
    errors: list[BaseException] = []
    checked = {"score": 0, "retrieve": 0}

    def train():
        start = 0
        while not stop.is_set():
            batch = table.slice(start % table.num_rows, 256)
            start += 256
            trainer.step(encoder.encode(batch))
            sync.observe(batch)
            sync.serve_handoff()

    def publish():
        while not stop.is_set() and (sync.index is None or sync.index.current is None or sync.index.current.version < VERSIONS):
            sync.run_job(full=len(sync.reports) % 10 == 9)

    def read(seed: int):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            try:
                user = users.slice(int(rng.integers(64)), 1)
                candidates = rng.integers(1, 2500, 50)
                result = reader.score(user, candidates)
                snapshot = source.local.snapshot
                assert result.version == snapshot.version.version
                vectors, known = snapshot.version.vectors(candidates)  # recompute from that one version
                assert np.array_equal(known, result.known)
                if known.any():
                    with torch.no_grad():
                        u = snapshot.model.encode_user(encoder.encode_tower(user, "user"))
                        expected = torch.sigmoid(snapshot.model.score(u, torch.from_numpy(vectors[known]))).numpy()
                    np.testing.assert_allclose(result.probabilities[known], expected, rtol=1e-6)
                checked["score"] += 1
                top = reader.retrieve(user, 10)
                assert top.version == source.local.snapshot.version.version
                assert source.local.snapshot.version.contains(top.index_ids).all()
                checked["retrieve"] += 1
            except IndexNotReadyError:
                time.sleep(0.01)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
                stop.set()

    threads = [threading.Thread(target=train), threading.Thread(target=publish)]
    threads += [threading.Thread(target=read, args=(i,)) for i in range(READERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEADLINE_S
    while not stop.is_set() and time.monotonic() < deadline:
        if sync.index is not None and sync.index.current is not None and sync.index.current.version >= VERSIONS:
            break
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors[0]
    assert sync.index.current.version >= VERSIONS, "not enough versions published in time"
    assert checked["score"] > 100 and checked["retrieve"] > 100
    assert any(r.full for r in sync.reports) and any(r.untouched_drift is not None for r in sync.reports)

    # After a sync, the touched items' stored vectors are the item tower's current output.
    trainer.step(encoder.encode(table.slice(0, 512)))
    sync.observe(table.slice(0, 512))
    touched = np.unique(table.slice(0, 512).column("item_id").to_numpy())
    threading.Thread(target=lambda: (time.sleep(0.2), sync.serve_handoff())).start()
    report = sync.run_job()
    assert report is not None and report.items_encoded >= touched.size
    stored, known = sync.index.current.vectors(touched)
    assert known.all()
    found, current = sync.encode(trainer.model.eval(), touched)
    np.testing.assert_array_equal(found, touched)
    np.testing.assert_allclose(stored, current, atol=1e-5)
