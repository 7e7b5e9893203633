"""Fit a model on a logged click history and evaluate checkpoints on a log (`inttower fit` / `eval`).

History is read chunk by chunk (`stream.clicklog.ClickLogScan`), so a log bigger than
memory fits: each epoch re-reads the training rows, shuffling within each chunk; only
the validation rows (the latest events, capped at ``[train] max_validation_events``)
stay in memory. The fit is `model.offline.fit` (early stopping on those latest events);
the result is an `OnlineTrainer` that continues from it, saved in the daemon's format.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from model.build import build_model
from model.checkpoint import Checkpoint, CheckpointStore
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.device import resolve_device
from model.features import FeatureBatch, FeatureEncoder
from model.offline import FitResult, fit, predict
from model.online import OnlineTrainer
from model.warm_start import fit_metadata, load_trainer_states, serialize_state, trainer_part
from monitoring.quality import log_loss, roc_auc
from stream.clicklog import ClickLogError, ClickLogScan

#: Fewest events a fit needs: a validation set and a few batches to learn from.
MIN_FIT_EVENTS = 100


@dataclass(frozen=True)
class Quality:
    """How a model scores a set of events; ``calibration`` = predicted clicks / observed clicks."""

    auc: float
    logloss: float
    calibration: float
    events: int
    positives: int

    @classmethod
    def of(cls, labels: np.ndarray, probabilities: np.ndarray) -> Quality:
        positives = int(labels.sum())
        calibration = float(probabilities.sum() / positives) if positives else float("nan")
        return cls(roc_auc(labels, probabilities), log_loss(labels, probabilities), calibration, int(labels.size), positives)


@dataclass(frozen=True)
class LogFit:
    """What `fit_log` produced."""

    trainer: OnlineTrainer
    result: FitResult
    validation: Quality
    train_events: int
    watermark_ms: int  # the latest event time the fit covered
    seconds: float


def fit_log(scan: ClickLogScan, model_config: ModelConfig, train: TrainConfig, online: OnlineConfig,
            progress: bool = True) -> LogFit:
    """Fit a fresh ``model_config`` model on the rows of ``scan``; see the module docstring."""
    started = time.perf_counter()
    total = scan.rows()
    if total < MIN_FIT_EVENTS:
        raise ClickLogError(f"{scan.path}: {total} events in the chosen time range; a fit needs at least {MIN_FIT_EVENTS}")
    n_validation = max(1, min(round(total * train.validation_fraction), train.max_validation_events))
    n_train = total - n_validation
    encoder = FeatureEncoder(model_config.features)
    validation_table = pa.concat_tables(scan.chunks(n_train, total))
    validation = encoder.encode(validation_table)
    torch.manual_seed(train.seed)
    if train.threads:
        torch.set_num_threads(train.threads)
    model = build_model(model_config).to(resolve_device(train.device))
    result = fit(model, lambda: (encoder.encode(chunk) for chunk in scan.chunks(0, n_train)), validation, train, progress)
    trainer = OnlineTrainer(model, train, online)
    trainer.continue_from(result)
    quality = Quality.of(validation.labels.numpy(), predict(model, validation))
    watermark = int(pc.max(validation_table.column("ts")).as_py())
    return LogFit(trainer, result, quality, n_train, watermark, time.perf_counter() - started)


def save_fit(done: LogFit, out: str, model_config: ModelConfig, scan: ClickLogScan) -> Checkpoint:
    """Write ``done`` as a checkpoint under ``out`` in the daemon's format."""
    store = CheckpointStore(out, keep=3)
    result = done.result
    metadata = fit_metadata(
        model_config, done.watermark_ms, log=str(scan.path), since_ms=scan.since_ms, until_ms=scan.until_ms,
        train_events=done.train_events, validation=dataclasses.asdict(done.validation),
        fit={"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "validation_auc": result.validation_auc,
             "steps": result.steps},
    )
    return store.save({trainer_part(model_config.kind): serialize_state(done.trainer.state_dict())}, metadata)


def evaluate_log(checkpoint: Checkpoint, scan: ClickLogScan, model_config: ModelConfig, device_name: str = "auto",
                 progress_chunks: Callable[[Iterator[pa.Table]], Iterable[pa.Table]] | None = None) -> dict[str, Quality]:
    """Quality of every model ``checkpoint`` holds (of the kinds ``model_config`` can build) on ``scan``'s rows.

    ``progress_chunks`` wraps the chunk iterator (a progress bar).
    """
    device = resolve_device(device_name)
    kinds = list(dict.fromkeys([model_config.kind, *checkpoint.metadata.get("models", [])]))
    states = load_trainer_states(checkpoint, model_config, kinds, device)
    models = {}
    for kind, state in states.items():
        model = build_model(dataclasses.replace(model_config, kind=kind)).to(device)
        model.load_state_dict(state["model"])
        models[kind] = model
    encoder = FeatureEncoder(model_config.features)
    labels: list[np.ndarray] = []
    scores: dict[str, list[np.ndarray]] = {kind: [] for kind in models}
    chunks = scan.chunks()
    for chunk in (progress_chunks(chunks) if progress_chunks else chunks):
        batch: FeatureBatch = encoder.encode(chunk)
        labels.append(batch.labels.numpy())
        for kind, model in models.items():
            scores[kind].append(predict(model, batch))
    if not labels:
        raise ClickLogError(f"{scan.path}: no events in the chosen time range")
    y = np.concatenate(labels)
    return {kind: Quality.of(y, np.concatenate(p)) for kind, p in scores.items()}
