"""Building blocks shared by every tower: field embeddings and the MLP of eq 1."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from model.config import FeatureField, ModelConfig
from model.features import TowerInputs
from model.hashing import PADDING_ID
from model.stream_norm import StreamNorm


class FieldEmbeddings(nn.Module):
    """One embedding table per categorical field of a tower; lists are mean-pooled.

    Output ``E`` is (B, F, d) over the tower's F categorical + multi-categorical fields,
    in spec order; numeric fields are not embedded (the towers append them, as the
    authors' code does). Row 0 of every table is the padding / missing row: it is kept at
    zero, so a missing value contributes nothing.
    """

    def __init__(self, fields: tuple[FeatureField, ...], dim: int, init_std: float) -> None:
        super().__init__()
        self.sparse_fields = tuple(f for f in fields if f.kind != "numeric")
        self.numeric_fields = tuple(f for f in fields if f.kind == "numeric")
        self.dim = dim
        self.tables = nn.ModuleDict(
            {f.name: nn.Embedding(f.buckets, dim, padding_idx=PADDING_ID) for f in self.sparse_fields}
        )
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=init_std)
            with torch.no_grad():
                table.weight[PADDING_ID].zero_()

    @property
    def num_fields(self) -> int:
        return len(self.sparse_fields)

    @property
    def num_numeric(self) -> int:
        return len(self.numeric_fields)

    def forward(self, inputs: TowerInputs) -> torch.Tensor:
        columns = []
        for f in self.sparse_fields:
            table = self.tables[f.name]
            if f.kind == "categorical":
                columns.append(table(inputs.categorical[f.name]))
            else:
                ids = inputs.multi[f.name]
                mask = (ids != PADDING_ID).unsqueeze(-1).to(table.weight.dtype)
                pooled = (table(ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                columns.append(pooled)
        if not columns:
            return inputs.numeric.new_zeros((len(inputs), 0, self.dim))
        return torch.stack(columns, dim=1)

    def squared_norm(self) -> torch.Tensor:
        """Sum of squared embedding weights: the lambda_2 term of eq 12."""
        squares = [t.weight.pow(2).sum() for t in self.tables.values()]
        return torch.stack(squares).sum() if squares else torch.zeros(())


class LinearSide(nn.Module):
    """One tower's share of a logistic regression: a scalar per field value, a weight per numeric field.

    What a logistic regression learns from one event, a scalar per id learns too: the
    towers add one of these per side (``[model] wide``) beside their interaction, and the
    logistic-regression baseline is nothing but the two.
    """

    def __init__(self, fields: tuple[FeatureField, ...], init_std: float) -> None:
        super().__init__()
        self.weights = FieldEmbeddings(fields, 1, init_std)
        count = self.weights.num_numeric
        self.numeric = nn.Linear(count, 1, bias=False) if count else None

    def forward(self, inputs: TowerInputs) -> torch.Tensor:
        """(B,) partial logits."""
        logit = self.weights(inputs).sum(dim=(1, 2))
        return logit if self.numeric is None else logit + self.numeric(inputs.numeric).squeeze(-1)


def wide_sides(config: ModelConfig) -> tuple[LinearSide | None, LinearSide | None]:
    """The towers' per-side scalars (user, item) when ``[model] wide`` is on, else (None, None)."""
    if not config.wide:
        return None, None
    return tuple(LinearSide(config.tower_fields(tower), config.embedding_init_std) for tower in ("user", "item"))


def normalization_layer(config: ModelConfig) -> Callable[[int], nn.Module] | None:
    """``[model] normalization``: the layer after each Linear of a tower, by width (None: nothing)."""
    if config.normalization == "none":
        return None
    if config.normalization == "stream":
        return functools.partial(StreamNorm, horizon_events=config.norm_horizon_events)
    return {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[config.normalization]


class MLPTower(nn.Module):
    """Eq 1 with the authors' layer order: Linear, normalisation, ReLU, Dropout per layer.

    The paper's normalisation is BatchNorm. LayerNorm normalises each row by itself, so a
    batch of one event trains as any other (BatchNorm has no statistics of one row: such
    a step runs on its running statistics, which then never move); `StreamNorm` trains
    on running statistics that move with every event.
    `forward` returns every layer's input and the final output, because FE-Block
    projects the user tower's intermediate layers.
    """

    def __init__(
        self, in_dim: int, hidden: tuple[int, ...], dropout: float, normalization: Callable[[int], nn.Module] | None,
    ) -> None:
        super().__init__()
        layers = []
        dims = (in_dim, *hidden)
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            block: list[nn.Module] = [nn.Linear(d_in, d_out)]
            if normalization is not None:
                block.append(normalization(d_out))
            block += [nn.ReLU(), nn.Dropout(dropout)]
            layers.append(nn.Sequential(*block))
        self.layers = nn.ModuleList(layers)
        self.dims = dims

    def forward(
        self,
        x: torch.Tensor,
        norms: nn.ModuleList | None = None,
        modulate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``norms`` replaces the BatchNorm layers (CS3's first pass has its own);
        ``modulate`` transforms the first hidden layer's output (CS3's FiLM)."""
        inputs = []
        for i, layer in enumerate(self.layers):
            inputs.append(x)
            if norms is None or not len(norms):
                x = layer(x)
            else:
                for module in layer:
                    x = norms[i](x) if isinstance(module, nn.BatchNorm1d) else module(x)
            if modulate is not None and i == 0:
                x = modulate(x)
        return inputs, x


class TowerEncoder(nn.Module):
    """One tower up to its last hidden layer: embeddings, optional field attention, MLP.

    ``attention`` (IntTower's Light-SE, or None) re-weights the (B, F, d) field
    embeddings before they are flattened and joined with the numeric fields.
    """

    def __init__(
        self,
        fields: tuple[FeatureField, ...],
        embedding_dim: int,
        embedding_init_std: float,
        hidden: tuple[int, ...],
        dropout: float,
        normalization: Callable[[int], nn.Module] | None,
        attention: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.embeddings = FieldEmbeddings(fields, embedding_dim, embedding_init_std)
        self.attention = attention(self.embeddings.num_fields) if attention is not None else None
        in_dim = self.embeddings.num_fields * embedding_dim + self.embeddings.num_numeric
        self.mlp = MLPTower(in_dim, hidden, dropout, normalization)
        self.cycle: nn.Module | None = None  # CS3 add-ons, attached by `model.cs3.attach`
        self.film: nn.Module | None = None

    def forward(self, inputs: TowerInputs, summary: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every MLP layer's input and the last layer's output.

        With CS3's add-ons attached (`model.cs3`): ``cycle`` runs a first pass and gates
        the fields before the final one; ``film`` modulates the first hidden layer by
        ``summary``, the other tower's moving-average output.
        """
        e = self.embeddings(inputs)
        if self.attention is not None:
            e = self.attention(e)
        modulate = functools.partial(self.film, summary=summary) if self.film is not None and summary is not None else None
        if self.cycle is not None:
            _, first = self.mlp(self._mlp_input(e, inputs), self.cycle.first_pass_norms, modulate)
            e = e * self.cycle(first).unsqueeze(-1)
        return self.mlp(self._mlp_input(e, inputs), modulate=modulate)

    @staticmethod
    def _mlp_input(e: torch.Tensor, inputs: TowerInputs) -> torch.Tensor:
        return torch.cat([e.flatten(1), inputs.numeric], dim=1)


def init_linear_(module: nn.Module, std: float | None) -> None:
    """Re-initialise every Linear weight as N(0, std) (the authors' 1e-4); None keeps torch's."""
    if std is None:
        return
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
