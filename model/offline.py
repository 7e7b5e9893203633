"""Offline (epoch) training with early stopping: the paper's protocol, for reproduction.

The streaming trainer is prequential and lives elsewhere; this one exists to compare
models on fixed splits the way section 5 does.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from model.base import PreRanker
from model.config import TrainConfig
from model.features import FeatureBatch
from model.optim import build_optimizer
from model.stream_norm import batch_gradients
from monitoring.quality import log_loss, roc_auc

EVAL_BATCH = 8192


@dataclass(frozen=True)
class Evaluation:
    auc: float
    logloss: float
    rows: int


@dataclass
class FitResult:
    """What `fit` did: the epoch it kept and how long epochs took.

    ``optimizer_state`` and ``steps`` are the Adam state and step count *at the kept
    epoch*, beside its weights: a model continued online (`OnlineTrainer.continue_from`)
    goes on from the same moments instead of a fresh optimizer's first steps.
    """

    best_epoch: int
    epochs_run: int
    seconds_per_epoch: float
    validation_auc: list[float] = field(default_factory=list)
    optimizer_state: dict = field(default_factory=dict, repr=False)
    steps: int = 0
    events_trained: int = 0
    batch_size: int = 0  # the fit's mini-batch size: the step an online continuation is scaled from


#: Training rows: in memory, or a function that reads them afresh each epoch as a sequence
#: of chunks (a log bigger than memory; each chunk is shuffled on its own).
TrainRows = FeatureBatch | Callable[[], Iterable[FeatureBatch]]


@torch.no_grad()
def predict(model: PreRanker, batch: FeatureBatch, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Click probabilities for every row, in eval mode (BatchNorm on running stats)."""
    was_training = model.training
    model.eval()
    device = model.device
    out = []
    for start in range(0, len(batch), batch_size):
        chunk = batch.select(slice(start, start + batch_size)).to(device)
        out.append(torch.sigmoid(model(chunk).logits).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def evaluate(model: PreRanker, batch: FeatureBatch) -> Evaluation:
    probabilities = predict(model, batch)
    labels = batch.labels.numpy()
    return Evaluation(roc_auc(labels, probabilities), log_loss(labels, probabilities), len(batch))


def fit(
    model: PreRanker,
    train: TrainRows,
    validation: FeatureBatch,
    config: TrainConfig,
    progress: bool = True,
) -> FitResult:
    """Adam over shuffled mini-batches; keep the epoch with the best validation AUC.

    Stops after ``config.patience`` epochs without improvement and restores the best
    weights, as the authors' early stopping does. ``train`` may be read chunk by chunk
    (`TrainRows`): then rows are shuffled within each chunk, and memory is bounded by
    the chunk, not the log.
    """
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = build_optimizer(model, config)
    device = model.device
    best_auc, best_epoch = -1.0, 0
    best_state, best_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    best_steps = best_events = steps = events = 0
    history: list[float] = []
    epoch_seconds: list[float] = []
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        started = time.perf_counter()
        batches = tqdm(_shuffled_batches(train, config.batch_size, generator), desc=f"epoch {epoch}", unit="batch",
                       leave=False, disable=not progress)
        with batch_gradients(model):  # shuffled batches: StreamNorm may use the batch's statistics
            for batch in batches:
                if len(batch) < 2:  # BatchNorm needs two rows
                    continue
                batch = batch.to(device)
                if steps == 0:
                    model.init_output_bias(batch)
                loss = model.loss(batch).total
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step(len(batch))
                steps, events = steps + 1, events + len(batch)
        epoch_seconds.append(time.perf_counter() - started)
        auc = evaluate(model, validation).auc
        history.append(auc)
        if auc > best_auc:
            best_auc, best_epoch = auc, epoch
            best_state, best_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
            best_steps, best_events = steps, events
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    return FitResult(best_epoch, len(history), float(np.mean(epoch_seconds)), history, best_optimizer, best_steps, best_events,
                     config.batch_size)


def _shuffled_batches(train: TrainRows, batch_size: int, generator: torch.Generator) -> Iterator[FeatureBatch]:
    chunks = [train] if isinstance(train, FeatureBatch) else train()
    for chunk in chunks:
        order = torch.randperm(len(chunk), generator=generator)
        for start in range(0, len(chunk), batch_size):
            yield chunk.select(order[start : start + batch_size])
