"""A single-tower ranking model (DCN-style): what a pre-ranker is compared against.

Every user and item field goes into one network with explicit feature crosses (Wang et
al.'s cross network, x_{l+1} = x_0 * (W x_l + b) + x_l) beside a deep MLP. User and item
features interact from the first layer, so nothing can be computed ahead of time: the
whole network runs once per (user, candidate) pair — the O(kN) serving cost of section 3.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import ModelConfig
from model.features import FeatureBatch, TowerInputs
from model.towers import FieldEmbeddings, MLPTower, normalization_layer

CROSS_LAYERS = 3


class CrossNetwork(nn.Module):
    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class SingleTowerRanker(nn.Module):
    """logit = w . [cross(x0), mlp(x0)] + b over all fields of both towers."""

    def __init__(
        self,
        config: ModelConfig,
        user_embeddings: FieldEmbeddings | None = None,
        item_embeddings: FieldEmbeddings | None = None,
    ) -> None:
        """Own embedding tables, or the given ones (CS3's cascade sharing with a pre-ranker)."""
        super().__init__()
        self.user_embeddings = user_embeddings or FieldEmbeddings(config.tower_fields("user"), config.embedding_dim, config.embedding_init_std)
        self.item_embeddings = item_embeddings or FieldEmbeddings(config.tower_fields("item"), config.embedding_dim, config.embedding_init_std)
        dim = sum(e.num_fields * e.dim + e.num_numeric for e in (self.user_embeddings, self.item_embeddings))
        self.cross = CrossNetwork(dim, CROSS_LAYERS)
        self.deep = MLPTower(dim, config.hidden, config.dropout, normalization_layer(config))
        self.head = nn.Linear(dim + config.hidden[-1], 1)

    def _x0(self, user: TowerInputs, item: TowerInputs) -> torch.Tensor:
        parts = []
        for embeddings, inputs in ((self.user_embeddings, user), (self.item_embeddings, item)):
            parts += [embeddings(inputs).flatten(1), inputs.numeric]
        return torch.cat(parts, dim=1)

    def logits(self, user: TowerInputs, item: TowerInputs) -> torch.Tensor:
        """Row-aligned pairs: the network runs once per row."""
        x0 = self._x0(user, item)
        _, deep = self.deep(x0)
        return self.head(torch.cat([self.cross(x0), deep], dim=1)).squeeze(-1)

    def forward(self, batch: FeatureBatch) -> torch.Tensor:
        return self.logits(batch.user, batch.item)
