"""The multi-worker seam: partition shares, offset merging, the lockstep vote, loss weights, replicas."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from inttower.distributed import (
    Agreement,
    LocalCoordinator,
    StepRecord,
    StepShare,
    TorchDistributedCoordinator,
    Vote,
    coordinator_from_env,
    distinct_items,
    merge_offsets,
    parameter_digest,
    partitions_for_rank,
    stand_in_batch,
)
from inttower.telemetry import Telemetry
from model.build import build_model
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.features import FeatureEncoder
from model.online import SKIP_NON_FINITE_LOSS, OnlineTrainer
from monitoring.config import MonitoringConfig
from stream.broker import free_port
from tests.conftest import make_synthetic_like_table

SMALL = ModelConfig(hidden=(32, 32, 16), embedding_dim=8, heads=2, head_dim=8, normalization="batch")  # buffers to average
SPAWN_TIMEOUT_S = 120


def test_each_partition_belongs_to_exactly_one_rank():
    partitions = range(7)
    shares = [partitions_for_rank(partitions, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert partitions_for_rank([3, 1, 2, 0], 0, 1) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        partitions_for_rank(partitions, 3, 3)


def test_merged_offsets_resplit_for_another_world_size():
    restored = {0: 5, 1: 5, 2: 5, 3: 5}
    two_ranks = merge_offsets(restored, [{0: 10, 2: 12}, {1: 11, 3: 13}])
    assert two_ranks == {0: 10, 1: 11, 2: 12, 3: 13}
    # Three ranks restart from it: each takes its share's offsets, nothing lost or repeated.
    shares = [{p: two_ranks[p] for p in partitions_for_rank(two_ranks, r, 3)} for r in range(3)]
    assert merge_offsets(two_ranks, shares) == two_ranks
    # A rank that has read nothing yet keeps the restored offsets of its partitions.
    assert merge_offsets(restored, [{0: 7}, {}]) == {0: 7, 1: 5, 2: 5, 3: 5}
    with pytest.raises(ValueError, match="two ranks"):
        merge_offsets({}, [{0: 1}, {0: 2}])


def test_votes_sum_to_one_agreement_where_only_rank_zero_decides_checkpoints():
    votes = [Vote(rows=100, lag=5).vector(0, 3),
             Vote(rows=0, stop=True, checkpoint=True, lag=7, dead_letters=2).vector(1, 3),
             Vote(rows=50, dead_letters=1).vector(2, 3)]
    agreement = Agreement.from_sum([sum(column) for column in zip(*votes)])
    assert agreement == Agreement(rows=(100, 0, 50), stop=True, checkpoint=False, lag=12, dead_letters=3)
    assert agreement.total_rows == 150
    rank_zero = Agreement.from_sum(Vote(rows=1, checkpoint=True).vector(0, 1))
    assert rank_zero == Agreement.alone(Vote(rows=1, checkpoint=True))
    assert rank_zero.checkpoint and not rank_zero.stop


def test_loss_weights_make_the_averaged_loss_the_mean_over_all_events():
    rng = np.random.default_rng(0)
    per_rank = [rng.random(n) for n in (300, 0, 17, 1024)]
    agreement = Agreement(tuple(len(x) for x in per_rank), False, False, 0)
    weights = [agreement.loss_weight(r) for r in range(4)]
    averaged = sum(w * (x.mean() if len(x) else 0.0) for w, x in zip(weights, per_rank)) / len(per_rank)
    assert averaged == pytest.approx(np.concatenate(per_rank).mean())
    assert weights[1] == 0.0 and sum(weights) == pytest.approx(4.0)
    assert Agreement((0, 0), False, False, 0).loss_weight(0) == 0.0
    assert Agreement((7,), False, False, 0).loss_weight(0) == 1.0  # one process: exactly unweighted


def test_local_coordinator_is_one_process_without_collectives(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    coordinator = coordinator_from_env("cpu")
    assert isinstance(coordinator, LocalCoordinator) and not coordinator.launched
    assert coordinator.gather("x") == ["x"] and coordinator.broadcast(3) == 3
    assert coordinator.agree(Vote(5, checkpoint=True, lag=2)) == Agreement((5,), False, True, 2)
    trainer = OnlineTrainer(build_model(SMALL), TrainConfig(), OnlineConfig())
    coordinator.replicate(trainer)
    assert trainer.training_module is trainer.model and trainer.on_bias_init is None


def test_stand_in_batch_adds_nothing_and_leaves_batch_norm_statistics_alone():
    torch.manual_seed(0)
    trainer = OnlineTrainer(build_model(SMALL), TrainConfig(), OnlineConfig(cir_window=16))
    trainer.steps = 1  # past the bias start
    stand_in = stand_in_batch(FeatureEncoder(SMALL.features))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.step(stand_in, loss_weight=0.0)
    after = trainer.model.state_dict()
    assert result.stepped and trainer.events_trained == 0 and trainer.window.size == 0
    buffers = {name for name, _ in trainer.model.named_buffers()}
    assert all(torch.equal(before[k], after[k]) for k in buffers)
    # Adam moves weights even on a zero gradient only through its state; a fresh one does not.
    assert all(torch.equal(before[k], after[k]) for k in before if k not in buffers)


def test_merged_step_record_concatenates_ranks_and_dedups_items():
    encoder = FeatureEncoder(SMALL.features)
    trainer = OnlineTrainer(build_model(SMALL), TrainConfig(), OnlineConfig())
    tables = [make_synthetic_like_table(20, seed=1), make_synthetic_like_table(12, seed=2)]
    shares = []
    for table in tables:
        results = {"inttower": trainer.step(encoder.encode(table))}
        shares.append(StepShare.of(table, results, event_ids=True, items=True))
    local = {"inttower": trainer.step(stand_in_batch(encoder), loss_weight=0.0)}
    record = StepRecord.merged([shares[0], None, shares[1]], local)
    assert record.event_ids == [i for t in tables for i in t.column("event_id").to_pylist()]
    assert len(record.results["inttower"].probabilities) == len(record.event_ts_ms) == 32
    item_ids = {i for t in tables for i in t.column("item_id").to_pylist()}
    assert sorted(record.items.column("item_id").to_pylist()) == sorted(item_ids)
    assert sorted(record.results["inttower"].touched_item_ids.tolist()) == sorted(item_ids)
    assert len(distinct_items(tables[0])) == len(set(tables[0].column("item_id").to_pylist()))


def _scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return [line for line in response.read().decode().splitlines() if line and not line.startswith("#")]


def test_each_rank_serves_its_metrics_with_a_rank_label_and_other_ranks_only_their_stream():
    primary, other = Telemetry(MonitoringConfig(port=0), ["inttower"], rank=0), Telemetry(MonitoringConfig(port=0), [], rank=1)
    try:
        primary.metrics.events_consumed.labels("0").inc(3)
        other.metrics.events_consumed.labels("1").inc(5)
        other.on_lag({1: 7})
        rank0, rank1 = _scrape(primary.serve()), _scrape(other.serve())
    finally:
        primary.close()
        other.close()
    assert 'inttower_events_consumed_total{partition="0",rank="0"} 3.0' in rank0
    assert any(line.startswith('inttower_streaming_auc{') and 'rank="0"' in line for line in rank0)
    assert 'inttower_events_consumed_total{partition="1",rank="1"} 5.0' in rank1
    assert 'inttower_consumer_lag_messages{partition="1",rank="1"} 7.0' in rank1
    assert any(line.startswith('inttower_memory_bytes{layer="rss",rank="1"}') for line in rank1)
    assert all(line.startswith(("inttower_events_consumed", "inttower_events_dead_lettered", "inttower_consumer_lag",
                                "inttower_memory_bytes"))
               for line in rank1), rank1
    assert all('rank="' in line for line in rank0 + rank1)


# -- two real replicas (gloo, spawned processes, no torchrun) ----------------------------


def _replica(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    coordinator = TorchDistributedCoordinator(rank, 2, 0, "gloo")
    try:
        encoder = FeatureEncoder(SMALL.features)
        table = make_synthetic_like_table(30, seed=5)
        batches = {0: [table.slice(0, 20), table.slice(0, 20), None, table.slice(20, 5)],
                   1: [table.slice(20, 10), None, table.slice(20, 10), table.slice(25, 5)]}[rank]
        report = {"digests": [], "stepped": [], "reasons": [], "buffers": []}
        for kind in ("lr", "inttower"):
            torch.manual_seed(0)
            trainer = OnlineTrainer(build_model(replace(SMALL, kind=kind)), TrainConfig(), OnlineConfig())
            coordinator.replicate(trainer)
            for i, part in enumerate(batches):
                batch = encoder.encode(part) if part is not None else stand_in_batch(encoder)
                if i == 3 and rank == 1:
                    batch.item.numeric[:] = float("nan")  # this replica's loss is not finite
                agreement = coordinator.agree(Vote(0 if part is None else len(batch)))
                result = trainer.step(batch, agreement.loss_weight(rank), agreement.total_rows)
                report["digests"].append(parameter_digest([trainer.model]))
                report["buffers"].append([b.sum().item() for b in trainer.model.buffers()])
                report["stepped"].append(result.stepped)
                report["reasons"].append(result.skipped_reason)
            if kind == "lr":
                report["lr"] = {k: v.tolist() for k, v in trainer.model.state_dict().items()}
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        coordinator.close()


def test_two_replicas_stay_identical_and_step_like_one_process_on_their_union(tmp_path):
    context = mp.start_processes(_replica, args=(free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, "replicas did not finish"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports[0]["digests"] == reports[1]["digests"]  # bit-identical after every step, both models
    # Step 3 of IntTower (index 6): rank 0 has no events, rank 1 has; the replicas' shared
    # BatchNorm statistics still learn from rank 1's events (not kept to rank 0's).
    assert reports[0]["buffers"][6] == reports[1]["buffers"][6] != reports[0]["buffers"][5]
    assert reports[0]["stepped"] == reports[1]["stepped"] == [True, True, True, False] * 2
    assert reports[1]["reasons"][3] == SKIP_NON_FINITE_LOSS and reports[0]["reasons"][3] is not None

    # One process on the union of the ranks' batches: the same weights (up to summation order).
    encoder = FeatureEncoder(SMALL.features)
    table = make_synthetic_like_table(30, seed=5)
    torch.manual_seed(0)
    reference = OnlineTrainer(build_model(replace(SMALL, kind="lr")), TrainConfig(), OnlineConfig())
    reference.model.init_output_bias(encoder.encode(table.slice(0, 20)))  # the replicas share rank 0's start
    reference.steps = 1
    for part in (table.slice(0, 30), table.slice(0, 20), table.slice(20, 10)):
        reference.step(encoder.encode(part))
    for name, value in reference.model.state_dict().items():
        np.testing.assert_allclose(np.array(reports[0]["lr"][name]), value.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_step_slices_cut_every_rank_the_same_way():
    from inttower.distributed import Agreement, step_slices

    agreement = Agreement(rows=(5, 0, 12), stop=False, checkpoint=False, lag=0)
    slices = list(step_slices(agreement, 4))
    assert [(start, part.rows) for start, part in slices] == [(0, (4, 0, 4)), (4, (1, 0, 4)), (8, (0, 0, 4))]
    assert sum(part.total_rows for _, part in slices) == 17
    assert list(step_slices(Agreement(rows=(0, 0), stop=False, checkpoint=False, lag=0), 4)) == []
