"""The two-tower baseline of section 3 (eqs 1-2) and a logistic-regression baseline."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from model.base import PreRanker, TowerSide
from model.config import ModelConfig
from model.cs3 import attach as attach_cs3
from model.features import TowerInputs
from model.inttower import FEBlock
from model.towers import LinearSide, TowerEncoder, init_linear_, normalization_layer, wide_sides


class TwoTower(PreRanker):
    """h_u = L2Norm(MLP(e_u)), h_v likewise; logit = scale * h_u . h_v + b (eq 2).

    The learnable scale and bias turn the cosine in [-1, 1] into a calibrated logit, so
    its logloss is comparable with IntTower's. Vectors take the index's (N, H, p) shape
    with one head, so the same sum-of-max scorer (which reduces to the inner product for
    a single head) serves both models.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.user_encoder, self.item_encoder = (
            TowerEncoder(
                config.tower_fields(tower), config.embedding_dim, config.embedding_init_std,
                config.hidden, config.dropout, normalization_layer(config),
            )
            for tower in ("user", "item")
        )
        self.fe = FEBlock("cosine", 1, 1, config.initial_scale)
        self.user_wide, self.item_wide = wide_sides(config)
        init_linear_(self, config.linear_init_std)
        attach_cs3(self, config)

    def _user_side(self, user: TowerInputs) -> TowerSide:
        _, out = self.user_encoder(user, self._summary("item"))
        vectors = F.normalize(out, dim=-1).view(out.shape[0], 1, 1, -1)  # (B, 1, 1, D)
        return TowerSide(self.fe.with_user_scalar(vectors, self.user_wide, user), tower=out)

    def _item_side(self, item: TowerInputs) -> TowerSide:
        _, out = self.item_encoder(item, self._summary("user"))
        vectors = F.normalize(out, dim=-1).view(out.shape[0], 1, -1)  # (N, 1, D)
        return TowerSide(self.fe.with_item_scalar(vectors, self.item_wide, item), tower=out)

    def score(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.fe(user, items)

    def user_tower(self) -> list[nn.Module]:
        return [m for m in (self.user_encoder, self.user_wide) if m is not None]

    @property
    def output_bias(self) -> nn.Parameter:
        return self.fe.bias

    def field_embeddings(self) -> list[nn.Module]:
        return [self.user_encoder.embeddings, self.item_encoder.embeddings,
                *(side.weights for side in (self.user_wide, self.item_wide) if side is not None)]


class LogisticRegression(PreRanker):
    """logit = sum of one weight per field value + w . numeric + b, split by tower.

    Each side reduces to one scalar, so items are still pre-computable: the "vector"
    of an item is its (1, 1) partial logit.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.user_linear = LinearSide(config.tower_fields("user"), config.embedding_init_std)
        self.item_linear = LinearSide(config.tower_fields("item"), config.embedding_init_std)
        self.bias = nn.Parameter(torch.zeros(()))

    def _user_side(self, user: TowerInputs) -> TowerSide:
        return TowerSide(self.user_linear(user).view(-1, 1, 1, 1))

    def _item_side(self, item: TowerInputs) -> TowerSide:
        return TowerSide(self.item_linear(item).view(-1, 1, 1))

    def score(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (user.reshape(-1) + items.reshape(-1)) + self.bias

    def user_tower(self) -> list[nn.Module]:
        return [self.user_linear]

    @property
    def output_bias(self) -> nn.Parameter:
        return self.bias

    def field_embeddings(self) -> list[nn.Module]:
        return [self.user_linear.weights, self.item_linear.weights]
