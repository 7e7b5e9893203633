"""The prequential (test-then-train) online trainer.

Each batch is first scored by the current model in eval mode — those predictions never
saw their labels, so they give an honest streaming AUC/logloss — and then drives one
optimizer step on BCE + lambda_1 * CIR + L2. CIR's negatives come from the batch plus a
FIFO window of recent item representations. A step whose loss or gradient is not
finite is skipped and counted: it never reaches the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.base import CIRNegatives, ModelOutput, PreRanker
from model.config import OnlineConfig, TrainConfig
from model.cs3 import CrossTowerSync
from model.features import FeatureBatch
from model.offline import FitResult
from model.optim import build_optimizer, clip_grad_norm
from model.stream_norm import batch_statistics_norms

SKIP_NON_FINITE_LOSS = "non_finite_loss"
SKIP_NON_FINITE_GRADIENT = "non_finite_gradient"


@dataclass
class StepResult:
    """What one batch did: its prequential predictions and whether it stepped."""

    probabilities: np.ndarray  # (B,) predicted before the step
    labels: np.ndarray  # (B,)
    stepped: bool
    skipped_reason: str | None
    loss: float  # NaN when skipped
    touched_item_ids: np.ndarray  # unique item ids of the batch (for index sync)
    seconds: float


def fnw_weights(probabilities: torch.Tensor, labels: torch.Tensor, in_window: float = 0.0) -> torch.Tensor:
    """Fake-negative-weighted loss weights: importance weights back to the true click distribution.

    ``p`` is the model's own prediction, held constant. A stream that labels each
    impression once its window has passed (1 if clicked within it) and adds a duplicate
    positive for each click after it sees, per impression, 1 + p (1 - q) examples, where
    q = ``in_window`` is the share of clicks that come within the window: positives with
    probability p / (1 + p (1 - q)), negatives (1 - p q) / (1 + p (1 - q)). Weighting
    positives by 1 + p (1 - q) and negatives by (1 - p)(1 + p (1 - q)) / (1 - p q) makes
    the weighted BCE's minimiser the true click probability again. With no window (q = 0)
    these are Ktena et al.'s (RecSys 2019) FNW weights, 1 + p and (1 - p)(1 + p); ES-DFM
    (Yang et al., AAAI 2021) derives the same shape with q from a delay model, here one
    share for all impressions.
    """
    p = probabilities.detach().float().clamp(0.0, 1.0)
    extra = 1.0 + p * (1.0 - in_window)
    return torch.where(labels > 0.5, extra, (1.0 - p) * extra / (1.0 - p * in_window).clamp_min(1e-6))


class CIRWindow:
    """A ring buffer of the detached item representations of the last ``capacity`` events.

    Lives on the model's device; entries are replaced oldest first. Part of the trainer
    state, so a restored trainer continues with the same negatives.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.vectors: torch.Tensor | None = None
        self.item_ids: torch.Tensor | None = None
        self.size = 0
        self.position = 0

    def push(self, vectors: torch.Tensor, item_ids: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        vectors, item_ids = vectors.detach()[-self.capacity :], item_ids[-self.capacity :]
        if self.vectors is None:
            self.vectors = vectors.new_zeros((self.capacity, vectors.shape[1]), dtype=torch.float32)
            self.item_ids = item_ids.new_full((self.capacity,), -1)
        slots = (self.position + torch.arange(vectors.shape[0], device=vectors.device)) % self.capacity
        self.vectors[slots] = vectors.float()
        self.item_ids[slots] = item_ids
        self.position = int((self.position + vectors.shape[0]) % self.capacity)
        self.size = min(self.capacity, self.size + vectors.shape[0])

    def negatives(self) -> CIRNegatives | None:
        if self.size == 0 or self.vectors is None:
            return None
        return CIRNegatives(self.vectors[: self.size], self.item_ids[: self.size])

    def state_dict(self) -> dict:
        if self.vectors is None:
            return {"size": 0, "position": 0}
        return {"vectors": self.vectors.cpu(), "item_ids": self.item_ids.cpu(), "size": self.size, "position": self.position}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.size, self.position = int(state["size"]), int(state["position"])
        if "vectors" in state and state["vectors"].shape[0] == self.capacity:
            self.vectors, self.item_ids = state["vectors"].to(device), state["item_ids"].to(device)
        else:  # no window saved, or the configured size changed: start empty
            self.vectors, self.item_ids, self.size, self.position = None, None, 0, 0


@contextlib.contextmanager
def _running_statistics_frozen_if(frozen: bool, model: nn.Module, single_row: bool = False):
    """Leave running statistics alone when ``frozen`` (a stand-in batch must not move
    them): BatchNorm's and CS3's cross-tower summaries. ``single_row``: BatchNorm cannot
    use the batch statistics of one row, so such a batch uses the running ones (and
    leaves CS3's summaries alone); `StreamNorm` steps on one row as on many."""
    if frozen:
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    else:
        norms = batch_statistics_norms(model) if single_row else []
    syncs = [m for m in model.modules() if isinstance(m, CrossTowerSync)] if frozen or single_row else []
    for m in norms:
        m.eval()
    for m in syncs:
        m.paused = True
    try:
        yield
    finally:
        for m in norms:
            m.train()
        for m in syncs:
            m.paused = False


def _every_output(output: ModelOutput) -> torch.Tensor:
    """The sum of every output tensor; added with weight 0 to a replica's loss (see `step`)."""
    tensors = [getattr(output, f.name) for f in dataclasses.fields(output)]
    return sum(t.float().sum() for t in tensors if isinstance(t, torch.Tensor))


class OnlineTrainer:
    """Owns a model and its optimizer; `step` does test-then-train on one batch.

    Multi-worker training (`inttower.distributed`) sets three hooks: ``training_module``,
    the module the training forward runs through (a DistributedDataParallel wrapper of
    ``model``, which all-reduces gradients in backward); ``on_bias_init``, called on
    every replica while no step has been taken, after the data-dependent bias start, with
    whether this replica computed it (so the replicas can share one); and
    ``after_step``, called with the step's loss weight at the end of every step, taken or
    skipped (the replicas combine the running statistics their forwards updated).
    """

    def __init__(self, model: PreRanker, train: TrainConfig, online: OnlineConfig) -> None:
        self.model = model
        self.training_module: nn.Module = model
        self.on_bias_init: Callable[[bool], None] | None = None
        self.after_step: Callable[[float], None] | None = None
        self.online = online
        self.optimizer = build_optimizer(model, train)
        self._parameters = list(model.parameters())
        self.reference_batch: int | None = None  # the batch size of the fit this trainer continues (`continue_from`)
        # BatchNorm's momentum is per batch (`scale_to_batch`); StreamNorm's horizon is in events.
        self._norms = batch_statistics_norms(model)
        self._norm_momentum = [m.momentum for m in self._norms]
        self.window = CIRWindow(online.cir_window)
        self.steps = 0
        self.skipped: Counter[str] = Counter()
        self.events_trained = 0
        self._autocast = online.amp and model.device.type == "cuda"

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def predict(self, batch: FeatureBatch) -> torch.Tensor:
        """Click probabilities under the current weights, eval mode (as served)."""
        self.model.eval()
        with self._precision():
            return torch.sigmoid(self.model(batch).logits.float())

    def scale_to_batch(self, events: int) -> None:
        """Set the step size and BatchNorm momentum for a step averaging over ``events`` events.

        Only for a trainer that continues a batch fit (`continue_from`): the fit converged
        with ``[train] learning_rate`` and BatchNorm's momentum at batches of B events (its
        ``batch_size``). A stream cuts smaller batches, and the same step per batch then
        moves converged weights by far more per event: measured on ML-100K, a fitted model
        continued online at batches of 256 lost 0.3-2.7 AUC points against itself frozen.
        ``[online] scale_to_batch`` says how a step over n events is scaled: "linear"
        (default): learning rate times n / B, so each event moves the weights as much as
        in the fit (the linear scaling rule, Goyal et al. 2017); "sqrt": times sqrt(n / B),
        the square-root rule derived for Adam (Malladi et al., NeurIPS 2022), which keeps
        the fit's gradient noise, not its step per event; "off". Either rule keeps
        BatchNorm's running statistics at the fit's horizon in *events*: momentum times
        n / B. Measured on ML-100K (README, "From history to online"), "linear" helped
        continued models where "sqrt" sometimes did not. A cold trainer has no reference
        and is not scaled (scaling it down slowed learning from scratch).
        """
        rule = self.online.scale_to_batch
        if rule == "off" or self.reference_batch is None:
            return
        ratio = max(events, 1) / self.reference_batch
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * (ratio if rule == "linear" else ratio ** 0.5)
        for norm, momentum in zip(self._norms, self._norm_momentum):
            if momentum is not None:
                norm.momentum = min(1.0, momentum * ratio)

    def step(
        self, batch: FeatureBatch, loss_weight: float = 1.0, step_events: int | None = None,
        fnw_rows: np.ndarray | None = None, fnw_in_window: float = 0.0,
    ) -> StepResult:
        """Score ``batch``, then one optimizer step on its loss times ``loss_weight``.

        ``fnw_rows``: a mask of the examples trained with the fake-negative-weighted loss
        (`fnw_weights`, with ``fnw_in_window`` the share of clicks that come within the
        label window; delayed feedback, `stream.joiner`), their weights computed from
        this step's own predictions; the batch's ``weights`` multiply in.

        ``loss_weight = 0`` marks a stand-in batch: a replica with no events of its own
        taking part in a synchronized step. It adds no gradient, leaves BatchNorm
        statistics, the bias start and the CIR window alone, and counts no events.
        ``step_events``: the events the step's gradient averages over (a multi-worker
        job's total, the same on every rank); by default the batch's (`scale_to_batch`).
        """
        replicated = self.training_module is not self.model
        if replicated and step_events is None:  # each replica would scale by its own share: they would drift apart
            raise ValueError("a replicated step needs step_events, the job's events in this step (the same on every rank)")
        started = time.perf_counter()
        batch = batch.to(self.device, non_blocking=True)
        stand_in = loss_weight == 0.0
        self.scale_to_batch(len(batch) if step_events is None else step_events)
        probabilities = self.predict(batch)
        if fnw_rows is not None and fnw_rows.any():
            mask = torch.as_tensor(fnw_rows, device=self.device)
            weights = torch.where(mask, fnw_weights(probabilities, batch.labels, fnw_in_window), torch.ones_like(probabilities))
            batch = batch.weighted(weights if batch.weights is None else weights * batch.weights)
        if self.steps == 0:  # a fresh model: start calibrated
            initialized = len(batch) >= 2 and not stand_in
            if initialized:
                self.model.init_output_bias(batch)
            if self.on_bias_init is not None:
                self.on_bias_init(initialized)
        self.model.train()
        with _running_statistics_frozen_if(stand_in, self.model, single_row=len(batch) < 2), self._precision():
            output = self.training_module(batch)
            negatives = self.window.negatives() if self.steps >= self.online.cir_window_warmup_steps else None
            parts = self.model.loss(batch, output, negatives)
        reason = None
        loss_value = float(parts.total.detach())
        self.optimizer.zero_grad(set_to_none=True)
        # A DistributedDataParallel replica must deliver a gradient for every parameter, so
        # outputs the loss does not use join it with weight 0; after a non-finite loss it
        # still takes part, with NaN gradients: every replica then skips the step.
        if not np.isfinite(loss_value):
            reason = SKIP_NON_FINITE_LOSS
            if replicated:
                ((parts.total + _every_output(output)) * float("nan")).backward()
                self.optimizer.zero_grad(set_to_none=True)
        else:
            loss = parts.total if loss_weight == 1.0 else parts.total * loss_weight
            (loss + _every_output(output) * 0.0 if replicated else loss).backward()
            norm = clip_grad_norm(self._parameters, self.online.grad_clip_norm)
            if not torch.isfinite(norm):
                reason = SKIP_NON_FINITE_GRADIENT
                self.optimizer.zero_grad(set_to_none=True)
            else:
                self.optimizer.step(len(batch) if step_events is None else step_events)
                self.steps += 1
                if not stand_in:
                    self.events_trained += len(batch)
                    if output.cir_item is not None:
                        self.window.push(output.cir_item, batch.item_ids)
        if reason is not None:
            self.skipped[reason] += 1
        if self.after_step is not None:
            self.after_step(loss_weight)
        return StepResult(
            probabilities=probabilities.cpu().numpy(),
            labels=batch.labels.cpu().numpy(),
            stepped=reason is None,
            skipped_reason=reason,
            loss=loss_value if reason is None else float("nan"),
            touched_item_ids=torch.unique(batch.item_ids).cpu().numpy(),
            seconds=time.perf_counter() - started,
        )

    def _precision(self):
        if self._autocast:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def continue_from(self, fit: FitResult) -> None:
        """Go on from a batch fit of this trainer's model (its weights already in place).

        Takes the fit's Adam moments and step count: no fresh optimizer's first steps on
        converged weights, and no data-dependent bias start (that is for a fresh model).
        """
        self.optimizer.load_state_dict(fit.optimizer_state)
        self.steps = fit.steps
        self.events_trained = fit.events_trained
        self.reference_batch = fit.batch_size

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this trainer is (tensors on CPU)."""
        return {
            "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "window": self.window.state_dict(),
            "steps": self.steps,
            "events_trained": self.events_trained,
            "skipped": dict(self.skipped),
            "reference_batch": -1 if self.reference_batch is None else self.reference_batch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.window.load_state_dict(state["window"], self.device)
        self.steps = int(state["steps"])
        self.events_trained = int(state["events_trained"])
        self.skipped = Counter({str(k): int(v) for k, v in state["skipped"].items()})
        reference = int(state.get("reference_batch", -1))  # absent: a checkpoint from before warm starts
        self.reference_batch = None if reference < 0 else reference
