"""Configuration of the model package: the feature spec, the model and its training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FeatureKind = Literal["categorical", "multi_categorical", "numeric"]
Tower = Literal["user", "item"]


@dataclass(frozen=True)
class FeatureField:
    """One input field: where it is read from, how it is encoded, which tower owns it.

    The value is read from the event's ``user`` struct for user-tower fields (or
    ``context`` if ``source = "context"``) and from ``item`` for item-tower fields.
    Categorical values are hashed into ``buckets`` rows (id 0 is reserved for missing /
    padding); numeric values are standardised with ``mean`` and ``std``.
    """

    name: str
    kind: FeatureKind
    tower: Tower
    buckets: int = field(default=100_000, metadata={"ge": 2})
    max_len: int = field(default=8, metadata={"ge": 1})
    mean: float = 0.0
    std: float = field(default=1.0, metadata={"gt": 0.0})
    log1p: bool = False
    source: Literal["tower", "context"] = "tower"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("feature name must not be empty")
        if self.source == "context" and self.tower != "user":
            raise ValueError(f"feature {self.name!r}: context fields belong to the user tower")


def _default_features() -> tuple[FeatureField, ...]:
    """The synthetic stream's fields (`stream.synthetic`): the embedded demo default."""
    return (
        FeatureField("user_id", "categorical", "user", buckets=50_000),
        FeatureField("segment", "categorical", "user", buckets=1_000),
        FeatureField("age_bucket", "categorical", "user", buckets=100),
        FeatureField("device", "categorical", "user", buckets=100),
        FeatureField("item_id", "categorical", "item", buckets=50_000),
        FeatureField("category", "categorical", "item", buckets=1_000),
        FeatureField("tags", "multi_categorical", "item", buckets=10_000, max_len=4),
        FeatureField("price", "numeric", "item", mean=3.0, std=1.0, log1p=True),
    )


@dataclass(frozen=True)
class CS3Config:
    """The CS3 add-ons (Wang et al. 2026, our reading of its abstract): each one switchable.

    ``cycle_adaptive``: each tower runs a first pass, gates its input fields with
    ``2 * sigmoid(W h + b)`` of its own output (zero-initialised, so the gates start at
    exactly 1) and runs the final pass on the gated fields. ``cross_tower_sync``: each
    tower's first hidden layer gets a FiLM scale and shift from an exponential moving
    average of the *other* tower's outputs (a buffer, frozen at serving time), plus
    ``alignment_weight`` * ||mean(u) - mean(v)||^2 over L2-normalised batch outputs.
    ``cascade_sharing``: a single-tower DCN ranker shares the embedding tables, trains on
    the same batches (BCE, weight ``ranker_weight``) and the pre-ranker adds
    ``distill_weight`` * T^2 * BCE(sigmoid(s / T), sigmoid(r / T)) towards it.
    """

    cycle_adaptive: bool = False
    cross_tower_sync: bool = False
    sync_momentum: float = field(default=0.99, metadata={"ge": 0.0, "lt": 1.0})
    alignment_weight: float = field(default=0.1, metadata={"ge": 0.0})
    cascade_sharing: bool = False
    ranker_weight: float = field(default=1.0, metadata={"gt": 0.0})
    distill_weight: float = field(default=0.5, metadata={"ge": 0.0})
    distill_temperature: float = field(default=1.0, metadata={"gt": 0.0})

    @property
    def any(self) -> bool:
        return self.cycle_adaptive or self.cross_tower_sync or self.cascade_sharing


@dataclass(frozen=True)
class ModelConfig:
    """Which model, its shapes, and the switches of each IntTower part (paper section 4).

    ``light_se``: "paper" is eqs 3-5 (E * softmax(Wz + b)); "residual" is the authors'
    code (E + E * a); "off" drops Light-SE. ``fe_block = false`` scores with the
    two-tower inner product instead (the ablation). ``cir_weight`` is lambda_1 of eq 12
    (0 turns CIR off); ``l2_embedding`` is lambda_2, applied to the embedding tables.
    ``similarity``: "cosine" (the paper's text) normalises each head and scales the mean
    of the per-head maxima by a learnable temperature; "dot" is the authors' raw sum.
    """

    kind: Literal["inttower", "two_tower", "lr"] = "inttower"
    features: tuple[FeatureField, ...] = field(default_factory=_default_features)
    embedding_dim: int = field(default=32, metadata={"ge": 1})
    hidden: tuple[int, ...] = (300, 300, 128)
    dropout: float = field(default=0.2, metadata={"ge": 0.0, "lt": 1.0})
    # After each Linear of a tower: "stream" (`model.stream_norm`: per feature on running
    # statistics that move with every event; BatchNorm's offline accuracy, trains at any
    # batch size), "layer" (LayerNorm: per row; ~1 AUC point better on small online
    # batches, ~0.5 worse offline), "batch" (the paper's BatchNorm), "none".
    normalization: Literal["batch", "layer", "stream", "none"] = "stream"
    # "stream": the running statistics' horizon in events (a batch of n weighs 1-(1-1/H)^n).
    norm_horizon_events: int = field(default=10_000, metadata={"ge": 1})
    # Beside the towers' interaction, a logistic regression's scalar per field value on
    # each side (`model.towers.LinearSide`); the item's is stored with its index vectors.
    wide: bool = True
    embedding_init_std: float = field(default=1e-2, metadata={"gt": 0.0})
    linear_init_std: float | None = None  # None: PyTorch's defaults; the authors' code uses 1e-4
    light_se: Literal["paper", "residual", "off"] = "residual"
    fe_block: bool = True
    fe_user_layers: Literal["layer_inputs", "layer_outputs"] = "layer_inputs"
    heads: int = field(default=4, metadata={"ge": 1})
    head_dim: int = field(default=32, metadata={"ge": 1})
    similarity: Literal["cosine", "dot"] = "cosine"
    initial_scale: float = field(default=10.0, metadata={"gt": 0.0})
    cir_weight: float = field(default=0.1, metadata={"ge": 0.0})
    cir_temperature: float = field(default=0.1, metadata={"gt": 0.0})
    l2_embedding: float = field(default=1e-5, metadata={"ge": 0.0})
    cs3: CS3Config = field(default_factory=CS3Config)

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"feature names must be unique, repeated: {', '.join(duplicates)}")
        for tower in ("user", "item"):
            if not any(f.tower == tower for f in self.features):
                raise ValueError(f"the {tower} tower needs at least one feature")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be a non-empty list of positive integers, got {list(self.hidden)}")
        if self.kind == "lr" and self.cs3.any:
            raise ValueError("the CS3 add-ons (model.cs3) need a tower model: kind = \"inttower\" or \"two_tower\", not \"lr\"")

    def tower_fields(self, tower: Tower) -> tuple[FeatureField, ...]:
        return tuple(f for f in self.features if f.tower == tower)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by the offline reproduction and the online trainer."""

    learning_rate: float = field(default=1e-3, metadata={"gt": 0.0})
    # The embedding tables' optimizer (`model.optim`): "rowwise_adagrad" (one accumulator
    # per row, steps only the rows a batch touched, L2 on those rows) or "adam" (as the
    # dense layers; the paper's).
    embedding_optimizer: Literal["adam", "rowwise_adagrad"] = "rowwise_adagrad"
    # None: 0.01 for row-wise Adagrad (`model.optim.ROWWISE_LEARNING_RATE`), learning_rate for Adam.
    embedding_learning_rate: float | None = field(default=None, metadata={"gt": 0.0})
    # Row-wise Adagrad: a looked-up row steps on "event_sum", the sum of its own events'
    # gradients (full size however many events share the batch), or "batch_mean", the
    # batch-mean loss's gradient (diluted by the batch's size).
    table_gradient: Literal["event_sum", "batch_mean"] = "event_sum"
    batch_size: int = field(default=2048, metadata={"ge": 1})
    max_epochs: int = field(default=10, metadata={"ge": 1})
    patience: int = field(default=3, metadata={"ge": 1})
    validation_fraction: float = field(default=0.1, metadata={"gt": 0.0, "lt": 1.0})
    # `inttower fit` keeps its validation events (the latest ones) in memory: at most this many.
    max_validation_events: int = field(default=200_000, metadata={"ge": 1})
    # `inttower fit` / `eval` read the log in chunks of this many events (memory is bounded by it).
    fit_chunk_events: int = field(default=262_144, metadata={"ge": 1})
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present, else "cpu"; or "cpu", "cuda", "cuda:1"
    threads: int = field(default=0, metadata={"ge": 0})  # torch CPU threads; 0 = torch's default


@dataclass(frozen=True)
class OnlineConfig:
    """The prequential trainer: CIR window, safety rails, mixed precision."""

    # Recent item vectors kept as extra CIR negatives (0: in-batch negatives only). Off by
    # default: measured one-pass on ML-100K and the synthetic stream, a 1k-4k window
    # lowered prequential AUC by 0.01-0.05 against in-batch negatives (stale vectors and
    # a popularity-skewed negative set); see the README.
    cir_window: int = field(default=0, metadata={"ge": 0})
    # Steps before the window's negatives are used: early on the item tower moves fast
    # and stored vectors go stale within a few batches (cross-batch memory's warm-up).
    cir_window_warmup_steps: int = field(default=500, metadata={"ge": 0})
    grad_clip_norm: float = field(default=10.0, metadata={"gt": 0.0})
    amp: bool = False  # bfloat16 autocast on CUDA; ignored on the CPU
    # Continuing a batch fit: scale the step size ("linear" or "sqrt" rule) and BatchNorm
    # momentum from the fit's batch size to each step's events (`OnlineTrainer.scale_to_batch`).
    scale_to_batch: Literal["linear", "sqrt", "off"] = "linear"
