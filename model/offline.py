"""Offline (epoch) training with early stopping: the paper's protocol, for reproduction.

The streaming trainer is prequential and lives elsewhere; this one exists to compare
models on fixed splits the way section 5 does.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from model.base import PreRanker
from model.config import TrainConfig
from model.features import FeatureBatch
from monitoring.quality import log_loss, roc_auc

EVAL_BATCH = 8192


@dataclass(frozen=True)
class Evaluation:
    auc: float
    logloss: float
    rows: int


@dataclass
class FitResult:
    """What `fit` did: the epoch it kept and how long epochs took."""

    best_epoch: int
    epochs_run: int
    seconds_per_epoch: float
    validation_auc: list[float] = field(default_factory=list)


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
    train: FeatureBatch,
    validation: FeatureBatch,
    config: TrainConfig,
    progress: bool = True,
) -> FitResult:
    """Adam over shuffled mini-batches; keep the epoch with the best validation AUC.

    Stops after ``config.patience`` epochs without improvement and restores the best
    weights, as the authors' early stopping does.
    """
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    device = model.device
    best_auc, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    history: list[float] = []
    model.init_output_bias(train.select(slice(0, config.batch_size)).to(device))
    epoch_seconds: list[float] = []
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(train), generator=generator)
        batches = range(0, len(train), config.batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not progress):
            index = order[start : start + config.batch_size]
            if index.numel() < 2:  # BatchNorm needs two rows
                continue
            batch = train.select(index).to(device)
            loss = model.loss(batch).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - started)
        auc = evaluate(model, validation).auc
        history.append(auc)
        if auc > best_auc:
            best_auc, best_epoch, best_state = auc, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    return FitResult(best_epoch, len(history), float(np.mean(epoch_seconds)), history)
