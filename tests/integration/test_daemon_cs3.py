"""The daemon trains with CS3's add-ons from a TOML config, and a restart restores them."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import replace

import pytest
import torch

from inttower.config import load_config
from inttower.daemon import TrainingDaemon
from model.audit import TrainedEventLog
from stream.replay import replay
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.integration.test_daemon import TOPIC, _app, _run, _topics

pytestmark = pytest.mark.slow

CS3_TOML = """
[model]
hidden = [32, 32, 16]
embedding_dim = 8
heads = 2
head_dim = 8
[model.cs3]
cycle_adaptive = true
cross_tower_sync = true
alignment_weight = 0.2
cascade_sharing = true
distill_weight = 0.3
"""


def test_daemon_trains_the_addons_from_config_and_restores_them(broker, stream_config, tmp_path):
    path = tmp_path / "cs3.toml"
    path.write_text(CS3_TOML)
    model = load_config(path).model
    assert model.cs3.cycle_adaptive and model.cs3.cross_tower_sync and model.cs3.cascade_sharing
    assert model.cs3.alignment_weight == 0.2 and model.cs3.distill_weight == 0.3

    _topics(broker)
    table = generate_synthetic_log(SyntheticLogConfig(events=3000, seed=4))
    stream = stream_config(broker, topic=TOPIC, max_batch_events=256)
    replay(table.slice(0, 2000), stream, fmt="arrow", arrow_batch_events=256, progress=False)
    app = replace(_app(stream, tmp_path, stop_after_events=2000), model=model)
    first = _run(app)
    assert first.events == 2000 and first.checkpoints >= 1

    # A fresh daemon restores the add-ons' weights and summaries exactly, then goes on.
    restored = TrainingDaemon(replace(app))
    assert restored.restore()
    trained = torch.load(io.BytesIO(restored.store.latest().read("trainer-inttower.pt")), weights_only=True)["model"]
    state = restored.slots[0].trainer.model.state_dict()
    assert any(k.startswith("cascade.ranker.") for k in trained) and "sync.item_summary" in trained
    assert int(state["sync.updates"]) > 0 and torch.count_nonzero(state["user_encoder.cycle.gate.weight"]) > 0
    assert all(torch.equal(state[k], v) for k, v in trained.items())

    replay(table.slice(2000), stream, fmt="arrow", arrow_batch_events=256, progress=False)
    second = _run(replace(app, daemon=replace(app.daemon, stop_after_events=3000)))
    assert second.events == 3000
    assert Counter(TrainedEventLog.read(tmp_path / "trained.txt")) == Counter(table.column("event_id").to_pylist())
