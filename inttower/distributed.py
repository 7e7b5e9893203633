"""Multi-worker training: the few points where the ranks of a torchrun job must agree.

Kafka partitions are the unit of work: rank r reads the partitions p with
p % world_size == r (static assignment, so every checkpointed offset stays exact), and
the ranks train one model replica each, gradients all-reduced by DistributedDataParallel
(gloo on CPU, NCCL on CUDA). The daemon talks to a `Coordinator` at the few points that
need the other ranks:

- once per loop iteration, `agree`: one all_reduce of a small int vector (each rank's
  `Vote`: valid events, stop and checkpoint votes, lag, dead letters), so every rank
  steps, stops and checkpoints at the same iteration; a rank without events takes part in the step with a
  stand-in batch of loss weight 0 (`stand_in_batch`);
- after each step, `gather`: rank 0 receives what every rank's events add to its
  bookkeeping (`StepShare`: predictions for the streaming metrics, event ids for the
  audit, item rows for the index);
- at a checkpoint, `gather` of every rank's offsets, merged into the one checkpoint
  rank 0 writes (`merge_offsets`).

`LocalCoordinator` is one process and no collectives: the daemon's behaviour without
torchrun. `TorchDistributedCoordinator` is torch.distributed; `coordinator_from_env` picks
one from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import pyarrow as pa
import torch
from torch import distributed as dist
from torch import nn

from model.device import resolve_device
from model.features import FeatureBatch, FeatureEncoder, TowerInputs
from model.online import OnlineTrainer, StepResult
from model.optim import sparse_table_gradients
from stream.config import StreamConfig
from stream.events import ITEM_KEY_COLUMN
from stream.topics import topic_partitions

log = logging.getLogger("inttower.daemon")
#: Longest a rank waits in a collective for the others (a hung peer; a dead one is seen at once).
COLLECTIVE_TIMEOUT_S = 300.0
#: Rows of a stand-in batch: BatchNorm is frozen for it, two rows keep every kernel on its usual path.
STAND_IN_ROWS = 2
_VOTE_FIELDS = 4  # stop, checkpoint, lag, dead letters; then one slot of rows per rank

T = TypeVar("T")


def partitions_for_rank(partitions: Iterable[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s fixed share: the partitions p with p % world_size == rank, sorted."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return sorted(p for p in partitions if p % world_size == rank)


def partition_share(coordinator: Coordinator, stream: StreamConfig) -> list[int] | None:
    """This rank's fixed share of the topic's partitions; None when a consumer group assigns them.

    A launched job always splits by rank (rank 0 asks the broker, every rank gets its
    answer); one process reads all partitions in ``static`` assignment. Raises
    `TopicNotFoundError`, or ValueError when there are fewer partitions than ranks.
    """
    if not coordinator.launched and stream.assignment == "group":
        return None
    every = coordinator.broadcast(topic_partitions(stream) if coordinator.rank == 0 else None)
    if len(every) < coordinator.world_size:
        raise ValueError(f"topic {stream.topic!r} has {len(every)} partitions: too few for {coordinator.world_size} workers")
    mine = partitions_for_rank(every, coordinator.rank, coordinator.world_size)
    log.info("rank %d of %d reads partitions %s", coordinator.rank, coordinator.world_size, mine)
    return mine


def merge_offsets(restored: Mapping[int, int], shares: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """One checkpoint's offsets: every rank's own partitions over the restored ones.

    The ranks' shares are disjoint (static assignment); partitions no rank reads now keep
    their restored offset, so a restart with another world size loses nothing.
    """
    merged = dict(restored)
    seen: set[int] = set()
    for share in shares:
        overlap = seen & share.keys()
        if overlap:
            raise ValueError(f"partitions {sorted(overlap)} reported by two ranks")
        seen |= share.keys()
        merged.update(share)
    return merged


@dataclass(frozen=True)
class Vote:
    """One rank's state going into an iteration's all_reduce."""

    rows: int  # valid events of the batch this rank holds (0: none)
    stop: bool = False
    checkpoint: bool = False  # only rank 0's counts: its timer decides
    lag: int = 0  # this rank's last consumer lag reading
    dead_letters: int = 0  # messages or rows this rank rejected this iteration

    def vector(self, rank: int, world_size: int) -> list[int]:
        """The int64 vector summed across ranks (see `Agreement.from_sum`)."""
        vector = [0] * (_VOTE_FIELDS + world_size)
        vector[:_VOTE_FIELDS] = [int(self.stop), int(self.checkpoint and rank == 0), self.lag, self.dead_letters]
        vector[_VOTE_FIELDS + rank] = self.rows
        return vector


@dataclass(frozen=True)
class Agreement:
    """What every rank learned from one iteration's all_reduce: identical on all ranks."""

    rows: tuple[int, ...]  # valid events each rank holds this iteration, by rank
    stop: bool  # some rank wants to stop: all stop before stepping
    checkpoint: bool  # rank 0's checkpoint timer fired
    lag: int  # the job's consumer lag (sum of each rank's last reading)
    dead_letters: int = 0  # rejected this iteration, all ranks

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    def loss_weight(self, rank: int) -> float:
        """rows_rank * world / rows_total: DDP's gradient average becomes the mean over all events."""
        total = self.total_rows
        return self.rows[rank] * len(self.rows) / total if total else 0.0

    @classmethod
    def alone(cls, vote: Vote) -> Agreement:
        """A job of one."""
        return cls((vote.rows,), vote.stop, vote.checkpoint, vote.lag, vote.dead_letters)

    @classmethod
    def from_sum(cls, summed: Sequence[int]) -> Agreement:
        stop, checkpoint, lag, dead_letters = summed[:_VOTE_FIELDS]
        return cls(tuple(int(r) for r in summed[_VOTE_FIELDS:]), bool(stop), bool(checkpoint), int(lag), int(dead_letters))


def step_slices(agreement: Agreement, step_rows: int) -> Iterator[tuple[int, Agreement]]:
    """The steps of one iteration: (row offset, agreement over each rank's slice), at most ``step_rows`` rows a rank.

    Every rank computes the same slices from the agreed rows, so the job stays in lockstep
    however unevenly its ranks' rows fall.
    """
    steps = -(-max(agreement.rows, default=0) // step_rows)
    for i in range(steps):
        start = i * step_rows
        yield start, replace(agreement, rows=tuple(min(max(r - start, 0), step_rows) for r in agreement.rows))


class Coordinator(Protocol):
    """The daemon's view of the other ranks (see the module docstring).

    ``launched``: this process is one rank of a launched job (even a job of one), so it
    reads its fixed share of the partitions and labels its metrics with its rank.
    """

    rank: int
    world_size: int
    launched: bool

    def place(self, device: torch.device) -> torch.device:
        """The device this rank trains on (CUDA: the one of its LOCAL_RANK)."""

    def agree(self, vote: Vote) -> Agreement:
        """Every rank, every loop iteration: what the job does next."""

    def replicate(self, trainer: OnlineTrainer) -> None:
        """Make ``trainer``'s steps synchronized replicas (call after restoring its state)."""

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's ``obj`` by rank on rank 0, None elsewhere (every rank must call)."""

    def broadcast(self, obj: T | None) -> T:
        """Rank 0's ``obj`` on every rank."""

    def close(self) -> None: ...


class LocalCoordinator:
    """One process, no collectives: the trainer as it runs without torchrun."""

    rank = 0
    world_size = 1
    launched = False

    def place(self, device: torch.device) -> torch.device:
        return device

    def agree(self, vote: Vote) -> Agreement:
        return Agreement.alone(vote)

    def replicate(self, trainer: OnlineTrainer) -> None:
        pass

    def gather(self, obj: T) -> list[T] | None:
        return [obj]

    def broadcast(self, obj: T | None) -> T:
        return obj

    def close(self) -> None:
        pass


class TorchDistributedCoordinator:
    """One rank of a torch.distributed job (process group from torchrun's environment)."""

    launched = True

    def __init__(self, rank: int, world_size: int, local_rank: int, backend: str) -> None:
        self.rank, self.world_size, self.local_rank, self.backend = rank, world_size, local_rank, backend
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        self._device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))

    def place(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def agree(self, vote: Vote) -> Agreement:
        vector = torch.tensor(vote.vector(self.rank, self.world_size), dtype=torch.int64, device=self._device)
        dist.all_reduce(vector)
        return Agreement.from_sum(vector.tolist())

    def replicate(self, trainer: OnlineTrainer) -> None:
        # Every parameter gets a gradient in every step (`OnlineTrainer.step` adds the outputs
        # the loss leaves out with weight 0), so DDP needs no search for unused ones.
        # Buffers (BatchNorm statistics, CS3's cross-tower summaries) are not broadcast from
        # rank 0, which would keep only rank 0's data in them: after each step the ranks
        # average them, weighted by their share of the step's events (`_average_buffers`).
        device_ids = [self.local_rank] if trainer.device.type == "cuda" else None
        sparse_table_gradients(trainer.model, False)  # all-reduced: dense (NCCL has no sparse all-reduce)
        trainer.training_module = nn.parallel.DistributedDataParallel(
            trainer.model, device_ids=device_ids, broadcast_buffers=False
        )
        trainer.on_bias_init = lambda initialized: self._share_first_initialized(trainer.model, initialized)
        trainer.after_step = lambda loss_weight: self._average_buffers(trainer.model, loss_weight / self.world_size)

    @torch.no_grad()
    def _average_buffers(self, module: nn.Module, share: float) -> None:
        """Every replica's buffers become the event-weighted mean of the replicas' buffers.

        The buffers are moving averages updated by each replica's forward, so the
        weighted mean (``share`` = this rank's fraction of the step's events; 0 for a
        stand-in, whose forward left them alone) is exactly the update of one batch of
        all the step's events for means (BatchNorm's running mean, CS3's summaries) and
        close to it for BatchNorm's running variance. Counters take the maximum.
        """
        floats = [b for b in module.buffers() if b.is_floating_point()]
        counters = [b for b in module.buffers() if not b.is_floating_point()]
        if floats:
            flat = torch.cat([b.reshape(-1).double() for b in floats]) * share
            dist.all_reduce(flat)
            offset = 0
            for b in floats:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()
        if counters:
            flat = torch.cat([b.reshape(-1).long() for b in counters])
            dist.all_reduce(flat, op=dist.ReduceOp.MAX)
            offset = 0
            for b in counters:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()

    def _share_first_initialized(self, module: nn.Module, initialized: bool) -> None:
        """The first step's bias start is data-dependent: every rank takes the lowest initialized rank's."""
        source = torch.tensor([self.rank if initialized else self.world_size], device=self._device)
        dist.all_reduce(source, op=dist.ReduceOp.MIN)
        if int(source) < self.world_size:
            for tensor in (*module.parameters(), *module.buffers()):
                dist.broadcast(tensor.data, src=int(source))

    def gather(self, obj: T) -> list[T] | None:
        received: list[T] | None = [None] * self.world_size if self.rank == 0 else None  # type: ignore[list-item]
        dist.gather_object(obj, received, dst=0)
        return received

    def broadcast(self, obj: T | None) -> T:
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]  # type: ignore[return-value]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def started_by_torchrun(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is one rank of a launched job (torchrun sets RANK and WORLD_SIZE)."""
    return "RANK" in environ and "WORLD_SIZE" in environ


def coordinator_from_env(device: str, environ: Mapping[str, str] = os.environ) -> Coordinator:
    """A `TorchDistributedCoordinator` under torchrun (NCCL for CUDA, else gloo), else a `LocalCoordinator`."""
    if not started_by_torchrun(environ):
        return LocalCoordinator()
    backend = "nccl" if resolve_device(device).type == "cuda" else "gloo"
    return TorchDistributedCoordinator(int(environ["RANK"]), int(environ["WORLD_SIZE"]),
                                       int(environ.get("LOCAL_RANK", "0")), backend)


def stand_in_batch(encoder: FeatureEncoder, rows: int = STAND_IN_ROWS) -> FeatureBatch:
    """All-padding features: what a rank without events feeds a synchronized step (weight 0)."""

    def tower(tower_name: str) -> TowerInputs:
        fields = encoder.tower_fields(tower_name)  # type: ignore[arg-type]
        return TowerInputs(
            {f.name: torch.zeros(rows, dtype=torch.int64) for f in fields if f.kind == "categorical"},
            {f.name: torch.zeros(rows, f.max_len, dtype=torch.int64) for f in fields if f.kind == "multi_categorical"},
            torch.zeros(rows, sum(f.kind == "numeric" for f in fields), dtype=torch.float32),
        )

    return FeatureBatch(tower("user"), tower("item"), torch.zeros(rows), torch.zeros(rows, dtype=torch.int64))


def distinct_items(table: pa.Table) -> pa.Table:
    """``item_id``, ``item`` (and ``item_key``) of each item's last row: what the index needs from a batch."""
    ids = table.column("item_id").to_numpy()
    _, first_from_end = np.unique(ids[::-1], return_index=True)
    keep = np.sort(len(ids) - 1 - first_from_end)
    columns = [c for c in ("item_id", "item", ITEM_KEY_COLUMN) if c in table.column_names]
    return table.select(columns).take(pa.array(keep))


@dataclass
class StepShare:
    """What one rank's events of a step add to rank 0's bookkeeping (sent by `Coordinator.gather`)."""

    labels: np.ndarray
    probabilities: dict[str, np.ndarray]  # by model
    event_ts_ms: np.ndarray
    item_ids: np.ndarray  # unique
    event_ids: list[str] | None = None  # when the audit log is on
    items: pa.Table | None = None  # `distinct_items`, when the index is on

    @classmethod
    def of(cls, table: pa.Table, results: Mapping[str, StepResult], event_ids: bool, items: bool) -> StepShare:
        first = next(iter(results.values()))
        return cls(
            labels=first.labels,
            probabilities={name: r.probabilities for name, r in results.items()},
            event_ts_ms=table.column("ts").to_numpy(),
            item_ids=first.touched_item_ids,
            event_ids=table.column("event_id").to_pylist() if event_ids else None,
            items=distinct_items(table) if items else None,
        )

    @classmethod
    def of_record(cls, record: StepRecord) -> StepShare:
        """A rank's share from its own record (joined feedback builds one: arrival predictions, labelled ids)."""
        first = next(iter(record.results.values()))
        return cls(
            labels=first.labels,
            probabilities={name: r.probabilities for name, r in record.results.items()},
            event_ts_ms=record.event_ts_ms,
            item_ids=first.touched_item_ids,
            event_ids=record.event_ids,
            items=distinct_items(record.items) if record.items is not None else None,
        )


@dataclass
class StepRecord:
    """Every rank's events of one step, as rank 0 records them (metrics, audit, index, history)."""

    results: dict[str, StepResult]
    event_ts_ms: np.ndarray
    event_ids: list[str] | None
    items: pa.Table | None

    @classmethod
    def of_batch(cls, table: pa.Table, results: dict[str, StepResult], event_ids: bool, items: bool) -> StepRecord:
        """One process: the batch as it is."""
        return cls(results, table.column("ts").to_numpy(), table.column("event_id").to_pylist() if event_ids else None,
                   table if items else None)

    @classmethod
    def merged(cls, shares: Sequence[StepShare | None], local: Mapping[str, StepResult]) -> StepRecord:
        """The ranks' shares in rank order; step decisions and timings are rank 0's (identical but for timing)."""
        present = [s for s in shares if s is not None]
        labels = np.concatenate([s.labels for s in present])
        touched = np.unique(np.concatenate([s.item_ids for s in present]))
        results = {}
        for name, mine in local.items():
            results[name] = StepResult(
                probabilities=np.concatenate([s.probabilities[name] for s in present]), labels=labels,
                stepped=mine.stepped, skipped_reason=mine.skipped_reason, loss=mine.loss,
                touched_item_ids=touched, seconds=mine.seconds,
            )
        ids = [i for s in present for i in s.event_ids] if all(s.event_ids is not None for s in present) else None
        tables = [s.items for s in present if s.items is not None]
        return cls(results, np.concatenate([s.event_ts_ms for s in present]), ids,
                   distinct_items(pa.concat_tables(tables)) if tables else None)


def parameter_digest(modules: Iterable[nn.Module]) -> str:
    """sha256 over every parameter's and buffer's bytes: equal digests mean bit-identical replicas."""
    digest = hashlib.sha256()
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class ParameterDigestLog:
    """Debug record (`[daemon] parameter_digest_dir`): one line per step, ``<steps> <sha256>``, per rank."""

    def __init__(self, directory: str | Path, rank: int) -> None:
        self.path = Path(directory) / f"digests-rank{rank}.txt"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, steps: int, modules: Iterable[nn.Module]) -> None:
        with open(self.path, "a") as file:
            file.write(f"{steps} {parameter_digest(modules)}\n")
