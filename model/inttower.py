"""IntTower (Li et al., CIKM 2022), section 4: Light-SE, FE-Block, CIR, and the loss.

Read beside the paper. Shapes follow the authors' code: towers 300-300-128 with
BatchNorm, ReLU and dropout; one FE projection per user layer (of that layer's input by
default, as their code does) against one projection of the item tower's last layer.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

from model.base import CIRNegatives, ModelOutput, PreRanker, TowerSide
from model.config import ModelConfig
from model.cs3 import attach as attach_cs3
from model.features import FeatureBatch, TowerInputs
from model.towers import TowerEncoder, init_linear_, normalization_layer, wide_sides


class LightSE(nn.Module):
    """Section 4.1: squeeze each field to its mean (eq 3), one FC + softmax (eq 4), re-weight (eq 5).

    ``mode="paper"`` returns k_i * e_i as eq 5 writes it; ``mode="residual"`` returns
    e_i + k_i * e_i, the form in the authors' code.
    """

    def __init__(self, num_fields: int, mode: str) -> None:
        super().__init__()
        self.excitation = nn.Linear(num_fields, num_fields)
        self.mode = mode

    def field_weights(self, embeddings: torch.Tensor) -> torch.Tensor:
        z = embeddings.mean(dim=-1)  # eq 3: (B, F)
        return torch.softmax(self.excitation(z), dim=-1)  # eq 4: k, sums to 1 over fields

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        k = self.field_weights(embeddings).unsqueeze(-1)
        reweighted = k * embeddings  # eq 5
        return embeddings + reweighted if self.mode == "residual" else reweighted


def sum_of_max(user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Eqs 8-9: sum over user layers and user heads of the max over item heads.

    ``user`` is (B, L, H_u, p), ``items`` is (N, H_v, p) with B == N or B == 1 (one
    user against N candidates). Returns (max(B, N),).
    """
    b, layers, heads, p = user.shape
    queries = user.reshape(b, layers * heads, p)
    if b == 1 and items.shape[0] > 1:
        # Serving: one user against N candidates as a single (L*H_u, p) x (p, N*H_v) product,
        # not N broadcast batches of tiny products (~4x faster at 1,000 candidates on a CPU).
        n, item_heads = items.shape[0], items.shape[1]
        sims = (queries[0] @ items.reshape(n * item_heads, p).T).reshape(layers * heads, n, item_heads)
        return sims.amax(dim=-1).sum(dim=0)
    sims = torch.matmul(queries, items.transpose(-1, -2))  # (., L*H_u, H_v)
    return sims.amax(dim=-1).sum(dim=-1)


class FEBlock(nn.Module):
    """Section 4.2's interaction step and the prediction layer: logit = scale * S + b.

    With ``similarity="dot"`` (the authors' code) the scale is fixed at 1 and S is the
    raw sum of maxima. With ``"cosine"`` (the paper's text) the heads arrive
    L2-normalised, S lies in [-L*H, L*H], and a learnable scale (a temperature) maps it to
    a useful logit range; without it the first steps saturate (reference-findings s5).
    """

    def __init__(self, similarity: str, layers: int, heads: int, initial_scale: float) -> None:
        super().__init__()
        self.similarity = similarity
        self.bias = nn.Parameter(torch.zeros(()))
        log_scale = math.log(initial_scale / (layers * heads)) if similarity == "cosine" else 0.0
        self.log_scale = nn.Parameter(torch.tensor(log_scale), requires_grad=similarity == "cosine")

    def prepare(self, heads: torch.Tensor) -> torch.Tensor:
        """Per-head normalisation for cosine similarity; identity for dot products."""
        return F.normalize(heads, dim=-1) if self.similarity == "cosine" else heads

    def forward(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * sum_of_max(user, items) + self.bias

    # A per-side scalar (``[model] wide``: `model.towers.LinearSide`) rides in two extra
    # coordinates of every head, so the index stores an item's scalar with its vectors and
    # any inner-product search sees it: user heads end in (c, b_u c), item heads in (b_i, 1),
    # c = 1 / (L H scale). Each head pair's product gains (b_i + b_u) c whichever item head
    # it is, so every max gains it, the sum over the L H user heads gains (b_i + b_u) / scale,
    # and the logit gains exactly b_u + b_i.
    def with_user_scalar(self, user: torch.Tensor, side: nn.Module | None, inputs: TowerInputs) -> torch.Tensor:
        """(B, L, H, p) user heads -> (B, L, H, p + 2) with ``side``'s scalars; unchanged without a side."""
        if side is None:
            return user
        scalar = side(inputs)
        b, layers, heads, _ = user.shape
        unit = (1.0 / (layers * heads)) * torch.exp(-self.log_scale).to(user.dtype)
        extra = torch.stack([unit.expand(b), scalar.to(user.dtype) * unit], dim=-1)
        return torch.cat([user, extra.view(b, 1, 1, 2).expand(b, layers, heads, 2)], dim=-1)

    @staticmethod
    def with_item_scalar(items: torch.Tensor, side: nn.Module | None, inputs: TowerInputs) -> torch.Tensor:
        """(N, H, p) item heads -> (N, H, p + 2) with ``side``'s scalars; unchanged without a side."""
        if side is None:
            return items
        scalar = side(inputs)
        n, heads, _ = items.shape
        extra = torch.stack([scalar.to(items.dtype), torch.ones_like(scalar, dtype=items.dtype)], dim=-1)
        return torch.cat([items, extra.view(n, 1, 2).expand(n, heads, 2)], dim=-1)


def cir_loss(
    user: torch.Tensor,
    items: torch.Tensor,
    labels: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float,
    extra_items: torch.Tensor | None = None,
    extra_item_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq 10, InfoNCE over the clicked pairs with cosine similarity and temperature tau.

    Row i with label 1 is an anchor (u_i, v_i); its candidates are every item of the
    batch (the positive included, as in the denominator of eq 10) plus ``extra_items``
    (e.g. a window of recent item vectors). Candidates with the anchor's own item id,
    other than the positive itself, are masked: they are not negatives. Returns 0 when
    the batch has no click.
    """
    anchors = torch.nonzero(labels > 0.5).squeeze(-1)
    if anchors.numel() == 0:
        return user.sum() * 0.0  # keeps the graph and the device
    u = F.normalize(user[anchors], dim=-1)
    candidates = F.normalize(items, dim=-1)
    candidate_ids = item_ids
    if extra_items is not None and extra_items.shape[0] > 0:
        candidates = torch.cat([candidates, F.normalize(extra_items, dim=-1)])
        candidate_ids = torch.cat([item_ids, extra_item_ids])
    logits = u @ candidates.T / temperature  # (Q, N)
    same_item = candidate_ids.unsqueeze(0) == item_ids[anchors].unsqueeze(1)
    same_item[torch.arange(anchors.numel(), device=anchors.device), anchors] = False
    logits = logits.masked_fill(same_item, float("-inf"))
    return F.cross_entropy(logits, anchors)


class IntTower(PreRanker):
    """The full model of Figure 3; each part can be switched off for the ablations."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        attention = None if config.light_se == "off" else functools.partial(LightSE, mode=config.light_se)
        self.user_encoder, self.item_encoder = (
            TowerEncoder(
                config.tower_fields(tower), config.embedding_dim, config.embedding_init_std,
                config.hidden, config.dropout, normalization_layer(config), attention,
            )
            for tower in ("user", "item")
        )
        self.user_wide, self.item_wide = wide_sides(config)
        if config.fe_block:
            heads, p = config.heads, config.head_dim
            dims = self.user_encoder.mlp.dims
            user_dims = dims[:-1] if config.fe_user_layers == "layer_inputs" else dims[1:]
            self.user_projections = nn.ModuleList(nn.Linear(d, heads * p) for d in user_dims)  # eq 6
            self.item_projection = nn.Linear(config.hidden[-1], heads * p)  # eq 7
            self.fe = FEBlock(config.similarity, len(user_dims), heads, config.initial_scale)
        else:  # ablation: late interaction, cosine of the last layers (eq 2 with L2Norm)
            self.user_projections = None
            self.item_projection = None
            self.fe = FEBlock("cosine", 1, 1, config.initial_scale)
        init_linear_(self, config.linear_init_std)
        attach_cs3(self, config)

    # -- towers ------------------------------------------------------------------------
    def _user_side(self, user: TowerInputs) -> TowerSide:
        """FE projections per user layer (eq 6), stacked to (B, L, H, p); the last feeds CIR."""
        layer_inputs, out = self.user_encoder(user, self._summary("item"))
        if self.user_projections is None:
            heads = [out.unsqueeze(1)]
        else:
            sources = layer_inputs if self.config.fe_user_layers == "layer_inputs" else [*layer_inputs[1:], out]
            b = out.shape[0]
            heads = [proj(h).view(b, self.config.heads, self.config.head_dim) for proj, h in zip(self.user_projections, sources)]
        vectors = self.fe.with_user_scalar(self.fe.prepare(torch.stack(heads, dim=1)), self.user_wide, user)
        return TowerSide(vectors, tower=out, cir=heads[-1].flatten(1))

    def _item_side(self, item: TowerInputs) -> TowerSide:
        """The item tower's last layer projected to H heads (eq 7): (N, H, p)."""
        _, out = self.item_encoder(item, self._summary("user"))
        if self.item_projection is None:
            heads = out.unsqueeze(1)
        else:
            heads = self.item_projection(out).view(out.shape[0], self.config.heads, self.config.head_dim)
        vectors = self.fe.with_item_scalar(self.fe.prepare(heads), self.item_wide, item)
        return TowerSide(vectors, tower=out, cir=heads.flatten(1))

    @property
    def output_bias(self) -> nn.Parameter:
        return self.fe.bias

    def score(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.fe(user, items)

    def user_tower(self) -> list[nn.Module]:
        return [m for m in (self.user_encoder, self.user_projections, self.user_wide) if m is not None]

    # -- training ---------------------------------------------------------------------
    def cir_term(self, output: ModelOutput, batch: FeatureBatch, negatives: CIRNegatives | None = None) -> torch.Tensor:
        if self.config.cir_weight == 0.0:
            return torch.zeros((), device=output.logits.device)
        extra, extra_ids = (negatives.vectors, negatives.item_ids) if negatives is not None else (None, None)
        loss = cir_loss(
            output.cir_user.float(), output.cir_item.float(), batch.labels, batch.item_ids,
            self.config.cir_temperature, extra, extra_ids,
        )
        return self.config.cir_weight * loss

    def field_embeddings(self) -> list[nn.Module]:
        return [self.user_encoder.embeddings, self.item_encoder.embeddings,
                *(side.weights for side in (self.user_wide, self.item_wide) if side is not None)]
