"""CS3's three add-ons for any two-tower model (Wang et al. 2026), as we read its abstract.

Only the abstract is available (the README, "CS3 add-ons", says what we know), so
each part is our reading, chosen so that serving stays decoupled:

- `CycleGate` (Cycle-Adaptive Structure, "self-revision via adaptive feature denoising
  within each tower"): a tower's first pass yields per-field gates from its own output;
  the final pass runs on the gated field embeddings. Per tower, so items stay
  pre-computable.
- `CrossTowerSync` + `TowerFiLM` (Cross-Tower Synchronization, "lightweight mutual
  awareness"): each tower's first hidden layer is modulated by an exponential moving
  average of the *other* tower's outputs over the stream. The averages are buffers,
  updated only in training and fixed at serving time, so they act as constants there.
  An alignment term pulls the two towers' batch-mean representations together.
- `CascadeSharing` (Cascade-Model Sharing, "reusing knowledge from downstream models"):
  a single-tower DCN ranker shares the embedding tables, trains on the same batches,
  and the pre-ranker distils towards its probabilities.

Every add-on starts neutral: the gates are exactly 1 and the FiLM scale and shift
exactly 0 at initialisation, so a fresh model with an add-on scores exactly like the
plain backbone with the same weights (tested), and learns away from it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from model.base import calibrated_bias
from model.config import CS3Config, ModelConfig
from model.features import FeatureBatch
from model.ranker import SingleTowerRanker
from model.towers import FieldEmbeddings, MLPTower


def _fresh_copy(norm: nn.BatchNorm1d) -> nn.BatchNorm1d:
    """A norm layer of the same kind and settings (BatchNorm or `StreamNorm`), reset."""
    fresh = copy.deepcopy(norm)
    fresh.reset_parameters()
    return fresh


class CycleGate(nn.Module):
    """Per-field gates ``2 * sigmoid(W h + b)`` from a tower's first-pass output ``h``.

    The first pass has BatchNorm layers of its own (copies of the tower's): its inputs
    are the ungated fields, whose statistics differ from the gated final pass's, and one
    set of running statistics for both would serve neither in eval mode.
    """

    def __init__(self, mlp: MLPTower, num_fields: int) -> None:
        super().__init__()
        self.gate = nn.Linear(mlp.dims[-1], num_fields)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.first_pass_norms = nn.ModuleList(
            _fresh_copy(m) for m in mlp.modules() if isinstance(m, nn.BatchNorm1d)
        )

    def forward(self, first_pass_output: torch.Tensor) -> torch.Tensor:
        """(B, F) gates in (0, 2), exactly 1 at initialisation."""
        return 2.0 * torch.sigmoid(self.gate(first_pass_output))


class TowerFiLM(nn.Module):
    """Scale and shift of a tower's first hidden layer from the other tower's summary.

    ``h * (1 + gamma(s)) + beta(s)`` with a zero-initialised linear map, so it starts as
    the identity. ``s`` is one vector for the whole batch: at serving time a constant.
    """

    def __init__(self, summary_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.film = nn.Linear(summary_dim, 2 * hidden_dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, hidden: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(summary.to(hidden.dtype)).chunk(2, dim=-1)
        return hidden * (1.0 + gamma) + beta


class CrossTowerSync(nn.Module):
    """The two summaries (EMAs of each tower's batch-mean output) and the alignment term."""

    def __init__(self, dim: int, config: CS3Config) -> None:
        super().__init__()
        self.momentum = config.sync_momentum
        self.alignment_weight = config.alignment_weight
        self.register_buffer("user_summary", torch.zeros(dim))
        self.register_buffer("item_summary", torch.zeros(dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.paused = False  # set while a batch must not move the summaries (a stand-in, one row)

    @torch.no_grad()
    def observe(self, user: torch.Tensor, item: torch.Tensor) -> None:
        """Fold one training batch's mean outputs into the summaries (the first one as is)."""
        if self.paused:
            return
        m = self.momentum if int(self.updates) > 0 else 0.0
        self.user_summary.mul_(m).add_((1.0 - m) * user.detach().float().mean(dim=0))
        self.item_summary.mul_(m).add_((1.0 - m) * item.detach().float().mean(dim=0))
        self.updates += 1

    def alignment(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Weighted squared distance between the towers' batch-mean normalised outputs."""
        if self.alignment_weight == 0.0:
            return user.sum() * 0.0
        gap = F.normalize(user.float(), dim=-1).mean(dim=0) - F.normalize(item.float(), dim=-1).mean(dim=0)
        return self.alignment_weight * gap.pow(2).sum()


class CascadeSharing(nn.Module):
    """The downstream ranker (sharing the pre-ranker's embedding tables) and the distillation."""

    def __init__(
        self, model_config: ModelConfig, user_embeddings: FieldEmbeddings, item_embeddings: FieldEmbeddings
    ) -> None:
        super().__init__()
        self.config = model_config.cs3
        self.ranker = SingleTowerRanker(model_config, user_embeddings, item_embeddings)

    def forward(self, batch: FeatureBatch) -> torch.Tensor:
        return self.ranker(batch)

    def loss(self, preranker_logits: torch.Tensor, ranker_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The ranker's own BCE plus the pre-ranker's distillation towards the ranker.

        The teacher is detached: distillation moves the pre-ranker, never the ranker.
        Scaled by T^2 so its gradient does not shrink as the temperature grows.
        """
        ranker = F.binary_cross_entropy_with_logits(ranker_logits.float(), labels)
        t = self.config.distill_temperature
        teacher = torch.sigmoid(ranker_logits.detach().float() / t)
        distill = F.binary_cross_entropy_with_logits(preranker_logits.float() / t, teacher) * t * t
        return self.config.ranker_weight * ranker + self.config.distill_weight * distill

    @torch.no_grad()
    def init_output_bias(self, ranker_logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Start the ranker calibrated too, or the first distillation targets are all 0.5."""
        head = self.ranker.head
        head.bias.copy_(calibrated_bias(ranker_logits - head.bias, labels).reshape(head.bias.shape))


def attach(model: nn.Module, config: ModelConfig) -> None:
    """Wire the add-ons ``config.cs3`` turns on into a tower model; nothing when all are off.

    Call after any re-initialisation of Linear layers: the gates and FiLM maps must
    start at zero to start neutral.
    """
    cs3 = config.cs3
    towers = (model.user_encoder, model.item_encoder)
    if cs3.cycle_adaptive:
        for tower in towers:
            tower.cycle = CycleGate(tower.mlp, tower.embeddings.num_fields)
    if cs3.cross_tower_sync:
        model.sync = CrossTowerSync(config.hidden[-1], cs3)
        for tower in towers:
            tower.film = TowerFiLM(config.hidden[-1], tower.mlp.dims[1])
    if cs3.cascade_sharing:
        model.cascade = CascadeSharing(config, model.user_encoder.embeddings, model.item_encoder.embeddings)
