"""What every pre-ranking model offers: decoupled encoders, a scorer and a training loss.

The split is the point of a pre-ranker: ``encode_items`` reads item features only, so
item vectors can be computed ahead of time and stored in an index; ``encode_user`` runs
once per request; ``score`` combines them cheaply. ``score`` broadcasts: a user batch
of size 1 scores against N items, or B users pair row-wise with B items.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from model.features import FeatureBatch, TowerInputs


@dataclass
class ModelOutput:
    """Logits for a batch plus what the contrastive term needs (None when unused)."""

    logits: torch.Tensor  # (B,)
    cir_user: torch.Tensor | None = None  # (B, D) last-layer user representation
    cir_item: torch.Tensor | None = None  # (B, D) last-layer item representation


@dataclass
class CIRNegatives:
    """Detached item representations (same space as ``ModelOutput.cir_item``) and their ids."""

    vectors: torch.Tensor  # (W, D)
    item_ids: torch.Tensor  # (W,) int64


@dataclass
class LossParts:
    """The terms of eq 12, kept apart so they can be logged and checked for finiteness."""

    total: torch.Tensor
    bce: torch.Tensor
    cir: torch.Tensor
    l2: torch.Tensor


#: Below this many rows, CPU GEMM kernels switch to other code paths (seen: 1-3 rows)
#: whose rounding differs in the last bit; eval-mode encoding pads small batches to it.
MIN_ENCODE_ROWS = 16


def _row_invariant(encode, inputs: TowerInputs, training: bool) -> torch.Tensor:
    rows = len(inputs)
    if training or rows == 0 or rows >= MIN_ENCODE_ROWS:
        return encode(inputs)
    padded = inputs.select(torch.arange(MIN_ENCODE_ROWS, device=inputs.numeric.device) % rows)  # repeat the rows we have
    return encode(padded)[:rows]


class PreRanker(nn.Module, ABC):
    """Base class of IntTower, the two-tower baseline and logistic regression."""

    def encode_user(self, user: TowerInputs) -> torch.Tensor:
        """What scoring needs from the user side, computed once per user."""
        return _row_invariant(self._encode_user, user, self.training)

    def encode_items(self, item: TowerInputs) -> torch.Tensor:
        """Item vectors from item features only: (N, H, p), the shape the index stores.

        In eval mode a row's vector is bit-identical whatever else is in the batch, which
        is what lets the index store items ahead of time and re-encode any subset.
        """
        return _row_invariant(self._encode_items, item, self.training)

    @abstractmethod
    def _encode_user(self, user: TowerInputs) -> torch.Tensor: ...

    @abstractmethod
    def _encode_items(self, item: TowerInputs) -> torch.Tensor: ...

    @abstractmethod
    def score(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits for user/item pairs (broadcast over a user batch of 1)."""

    @abstractmethod
    def user_tower(self) -> list[nn.Module]:
        """Modules that run on the user side at serving time (for parameter counts)."""

    @property
    @abstractmethod
    def output_bias(self) -> nn.Parameter:
        """The scalar b of the prediction layer, sigmoid(score + b)."""

    @torch.no_grad()
    def init_output_bias(self, batch: FeatureBatch) -> None:
        """Data-dependent start: set b so the mean logit matches the batch's click rate.

        Cosine scores of ReLU towers start well above zero, so with a scale of ~10 the
        first predictions are all near 1; at a 25% click rate the bias then needs
        thousands of Adam steps to come down while the towers are pushed around. Starting
        b at logit(CTR) - mean(score) removes that transient.
        """
        # Train mode, as the first steps will run (BatchNorm on batch statistics); the
        # only side effect is one running-statistics update.
        was_training = self.training
        self.train()
        raw = self(batch).logits - self.output_bias
        self.train(was_training)
        ctr = batch.labels.float().mean().clamp(1e-4, 1 - 1e-4)
        self.output_bias.copy_(torch.logit(ctr) - raw.mean())

    def forward(self, batch: FeatureBatch) -> ModelOutput:
        return ModelOutput(self.score(self.encode_user(batch.user), self.encode_items(batch.item)))

    def field_embeddings(self) -> list[nn.Module]:
        """The embedding tables (`model.towers.FieldEmbeddings`) the lambda_2 term covers."""
        return []

    def regularization(self) -> torch.Tensor:
        """The lambda_2 ||Theta||^2 term of eq 12 (already weighted), over the embedding tables."""
        weight = self.config.l2_embedding
        tables = self.field_embeddings()
        if weight == 0.0 or not tables:
            return torch.zeros((), device=self.device)
        return weight * sum(t.squared_norm() for t in tables)

    def cir_term(self, output: ModelOutput, batch: FeatureBatch, negatives: "CIRNegatives | None" = None) -> torch.Tensor:
        """The lambda_1 L_cir term of eq 12 (already weighted); zero by default."""
        return torch.zeros((), device=output.logits.device)

    def loss(self, batch: FeatureBatch, output: ModelOutput | None = None, negatives: "CIRNegatives | None" = None) -> LossParts:
        """Eq 12: L_ctr (eq 11, mean BCE) + lambda_1 L_cir + lambda_2 ||Theta||^2.

        ``negatives`` adds item vectors from outside the batch (the online trainer's
        window of recent items) to CIR's in-batch negatives.
        """
        output = self(batch) if output is None else output
        bce = F.binary_cross_entropy_with_logits(output.logits.float(), batch.labels)
        cir = self.cir_term(output, batch, negatives)
        l2 = self.regularization()
        return LossParts(total=bce + cir + l2, bce=bce, cir=cir, l2=l2)

    def user_tower_parameters(self) -> int:
        return sum(p.numel() for m in self.user_tower() for p in m.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
