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
    """Logits for a batch plus what the training terms need (None when unused)."""

    logits: torch.Tensor  # (B,)
    cir_user: torch.Tensor | None = None  # (B, D) last-layer user representation
    cir_item: torch.Tensor | None = None  # (B, D) last-layer item representation
    user_tower: torch.Tensor | None = None  # (B, D) the user tower's last hidden layer (CS3 sync)
    item_tower: torch.Tensor | None = None  # (B, D) the item tower's last hidden layer
    ranker_logits: torch.Tensor | None = None  # (B,) CS3's cascade ranker, training mode only


@dataclass
class TowerSide:
    """One tower's pass: what is served, what CIR reads, what CS3's sync reads."""

    vectors: torch.Tensor  # (B, L, H, p) for users, (N, H, p) for items: the served shape
    tower: torch.Tensor | None = None  # (B, D) last hidden layer
    cir: torch.Tensor | None = None  # (B, D') the representation CIR contrasts


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
    cs3: torch.Tensor  # alignment + ranker BCE + distillation (0 without the add-ons)


def calibrated_bias(raw_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The bias b that makes mean(raw + b) the logit of the batch's click rate."""
    ctr = labels.float().mean().clamp(1e-4, 1 - 1e-4)
    return torch.logit(ctr) - raw_logits.mean()


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
    """Base class of IntTower, the two-tower baseline and logistic regression.

    Subclasses describe one pass of each tower (`_user_side`, `_item_side`) and the
    scorer; the serving API, the training forward, CS3's add-ons and the loss live here.
    """

    def __init__(self) -> None:
        super().__init__()
        # CS3's cross-tower summaries and cascade ranker (`model.cs3.attach`); None when off.
        self.sync: nn.Module | None = None
        self.cascade: nn.Module | None = None
        # False when the optimizer applies lambda_2 itself, to the rows a batch touched
        # (`model.optim.RowwiseAdagrad`); set by `model.optim.build_optimizer`.
        self.table_l2_in_loss = True

    def encode_user(self, user: TowerInputs) -> torch.Tensor:
        """What scoring needs from the user side, computed once per user."""
        return _row_invariant(lambda u: self._user_side(u).vectors, user, self.training)

    def encode_items(self, item: TowerInputs) -> torch.Tensor:
        """Item vectors from item features only: (N, H, p), the shape the index stores.

        In eval mode a row's vector is bit-identical whatever else is in the batch, which
        is what lets the index store items ahead of time and re-encode any subset.
        """
        return _row_invariant(lambda i: self._item_side(i).vectors, item, self.training)

    @abstractmethod
    def _user_side(self, user: TowerInputs) -> TowerSide: ...

    @abstractmethod
    def _item_side(self, item: TowerInputs) -> TowerSide: ...

    def _summary(self, of: str) -> torch.Tensor | None:
        """CS3: the moving-average output of tower ``of``, which conditions the other tower."""
        if self.sync is None:
            return None
        summary = self.sync.user_summary if of == "user" else self.sync.item_summary
        return summary.clone() if self.training else summary  # observe() updates it in place before backward

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
        # only side effects are one update of the running statistics (and CS3's summaries).
        was_training = self.training
        self.train()
        output = self(batch)
        self.train(was_training)
        if self.cascade is not None:  # the same forward ran the cascade ranker
            self.cascade.init_output_bias(output.ranker_logits, batch.labels)
        self.output_bias.copy_(calibrated_bias(output.logits - self.output_bias, batch.labels))

    def forward(self, batch: FeatureBatch) -> ModelOutput:
        """Row-aligned logits; in training mode also feeds CS3's summaries and ranker."""
        user, item = self._user_side(batch.user), self._item_side(batch.item)
        output = ModelOutput(
            self.score(user.vectors, item.vectors),
            cir_user=user.cir, cir_item=item.cir, user_tower=user.tower, item_tower=item.tower,
        )
        if self.training:
            if self.sync is not None:
                self.sync.observe(user.tower, item.tower)
            if self.cascade is not None:
                output.ranker_logits = self.cascade(batch)
        return output

    def field_embeddings(self) -> list[nn.Module]:
        """The embedding tables (`model.towers.FieldEmbeddings`) the lambda_2 term covers."""
        return []

    def regularization(self) -> torch.Tensor:
        """The lambda_2 ||Theta||^2 term of eq 12 (already weighted), over the embedding tables."""
        weight = self.config.l2_embedding
        tables = self.field_embeddings()
        if weight == 0.0 or not tables or not self.table_l2_in_loss:
            return torch.zeros((), device=self.device)
        return weight * sum(t.squared_norm() for t in tables)

    def cir_term(self, output: ModelOutput, batch: FeatureBatch, negatives: CIRNegatives | None = None) -> torch.Tensor:
        """The lambda_1 L_cir term of eq 12 (already weighted); zero by default."""
        return torch.zeros((), device=output.logits.device)

    def loss(self, batch: FeatureBatch, output: ModelOutput | None = None, negatives: CIRNegatives | None = None) -> LossParts:
        """Eq 12: L_ctr (eq 11, mean BCE) + lambda_1 L_cir + lambda_2 ||Theta||^2, + CS3's terms.

        ``negatives`` adds item vectors from outside the batch (the online trainer's
        window of recent items) to CIR's in-batch negatives.
        """
        output = self(batch) if output is None else output
        bce = F.binary_cross_entropy_with_logits(output.logits.float(), batch.labels, weight=batch.weights)
        cir = self.cir_term(output, batch, negatives)
        l2 = self.regularization()
        cs3 = self.cs3_term(output, batch)
        return LossParts(total=bce + cir + l2 + cs3, bce=bce, cir=cir, l2=l2, cs3=cs3)

    def cs3_term(self, output: ModelOutput, batch: FeatureBatch) -> torch.Tensor:
        """CS3's alignment term and the cascade ranker's BCE + distillation (already weighted)."""
        term = torch.zeros((), device=output.logits.device)
        if self.sync is not None and output.user_tower is not None:
            term = term + self.sync.alignment(output.user_tower, output.item_tower)
        if self.cascade is not None and output.ranker_logits is not None:
            term = term + self.cascade.loss(output.logits, output.ranker_logits, batch.labels)
        return term

    def user_tower_parameters(self) -> int:
        return sum(p.numel() for m in self.user_tower() for p in m.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
