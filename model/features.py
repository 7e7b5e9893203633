"""Turn click-log columns into model inputs, as the feature spec in the config says.

Every field of the spec is read from its tower's struct column (``user``, ``item``, or
``context``) of an Arrow table, so the same code serves Parquet logs, decoded JSON and
Arrow IPC batches. Categorical values are hashed into bounded tables (`model.hashing`),
multi-categorical lists become padded id matrices (0 = padding), numerics are
standardised. The output is a typed `FeatureBatch` of torch tensors.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from model.config import FeatureField, Tower
from model.hashing import PADDING_ID, bucketize, salt_for
from stream.events import EventField, EventSchema


def event_schema(features: tuple[FeatureField, ...]) -> EventSchema:
    """The events (and serving requests) a feature spec reads: every field, in its struct."""
    return EventSchema(tuple(EventField(f.name, f.kind, "context" if f.source == "context" else f.tower) for f in features))


class FeatureError(ValueError):
    """The input lacks a field the feature spec needs, or has it in an unusable type."""


@dataclass
class TowerInputs:
    """One tower's encoded fields for a batch of B rows.

    ``categorical[name]``: (B,) int64 ids; ``multi[name]``: (B, max_len) int64 ids with
    0 as padding; ``numeric``: (B, n_numeric) float32 in spec order (may have 0 columns).
    """

    categorical: dict[str, torch.Tensor]
    multi: dict[str, torch.Tensor]
    numeric: torch.Tensor

    def __len__(self) -> int:
        return self.numeric.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TowerInputs":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return TowerInputs(
            {k: move(v) for k, v in self.categorical.items()},
            {k: move(v) for k, v in self.multi.items()},
            move(self.numeric),
        )

    def select(self, index: torch.Tensor | np.ndarray | slice) -> "TowerInputs":
        """Rows ``index`` of every field (for mini-batching and de-duplication)."""
        return TowerInputs(
            {k: v[index] for k, v in self.categorical.items()},
            {k: v[index] for k, v in self.multi.items()},
            self.numeric[index],
        )


@dataclass
class FeatureBatch:
    """Model inputs for B events: both towers, labels and the raw item ids."""

    user: TowerInputs
    item: TowerInputs
    labels: torch.Tensor  # (B,) float32 in {0, 1}
    item_ids: torch.Tensor  # (B,) int64, the catalogue ids (CIR masks same-item pairs)
    # (B,) float32 per-example loss weights (delayed-feedback corrections, importance
    # weights); None: every example weighs 1. The BCE is the mean of weight * loss.
    weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "FeatureBatch":
        return FeatureBatch(
            self.user.to(device, non_blocking),
            self.item.to(device, non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.item_ids.to(device, non_blocking=non_blocking),
            None if self.weights is None else self.weights.to(device, non_blocking=non_blocking),
        )

    def select(self, index: torch.Tensor | np.ndarray | slice) -> "FeatureBatch":
        weights = None if self.weights is None else self.weights[index]
        return FeatureBatch(self.user.select(index), self.item.select(index), self.labels[index], self.item_ids[index], weights)

    def weighted(self, weights: torch.Tensor | None) -> "FeatureBatch":
        """The same batch with per-example loss weights."""
        return dataclasses.replace(self, weights=weights)


@dataclass(frozen=True)
class CollisionStats:
    """How many distinct values of a field share a table row with another value."""

    distinct_values: int
    distinct_ids: int

    @property
    def rate(self) -> float:
        """Fraction of distinct values whose id is not their own: 1 - ids / values."""
        return 0.0 if self.distinct_values == 0 else 1.0 - self.distinct_ids / self.distinct_values


@dataclass
class FeatureEncoder:
    """Encodes Arrow tables into `FeatureBatch`es following one feature spec."""

    fields: tuple[FeatureField, ...]
    _salts: dict[str, np.uint64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._salts = {f.name: salt_for(f.name) for f in self.fields}

    def tower_fields(self, tower: Tower) -> tuple[FeatureField, ...]:
        return tuple(f for f in self.fields if f.tower == tower)

    def encode(self, table: pa.Table) -> FeatureBatch:
        """Encode every row of ``table`` (click-log schema) into model inputs."""
        return FeatureBatch(
            user=self.encode_tower(table, "user"),
            item=self.encode_tower(table, "item"),
            labels=torch.from_numpy(_column(table, "label").to_numpy(zero_copy_only=False).astype(np.float32)),
            item_ids=torch.from_numpy(_column(table, "item_id").to_numpy(zero_copy_only=False).astype(np.int64)),
        )

    def encode_tower(self, table: pa.Table, tower: Tower) -> TowerInputs:
        """Encode one tower's fields; for the item tower ``table`` may hold only ``item``."""
        categorical: dict[str, torch.Tensor] = {}
        multi: dict[str, torch.Tensor] = {}
        numeric: list[np.ndarray] = []
        for f in self.tower_fields(tower):
            values = self._values(table, f)
            if f.kind == "categorical":
                categorical[f.name] = torch.from_numpy(bucketize(values, f.buckets, self._salts[f.name]))
            elif f.kind == "multi_categorical":
                multi[f.name] = torch.from_numpy(self._encode_list(values, f))
            else:
                numeric.append(self._encode_numeric(values, f))
        rows = table.num_rows
        dense = np.stack(numeric, axis=1) if numeric else np.zeros((rows, 0), dtype=np.float32)
        return TowerInputs(categorical, multi, torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)))

    def collision_report(self, table: pa.Table) -> dict[str, CollisionStats]:
        """Per categorical field: distinct values seen in ``table`` vs distinct ids they got."""
        report: dict[str, CollisionStats] = {}
        for f in self.fields:
            if f.kind == "numeric":
                continue
            values = self._values(table, f)
            if f.kind == "multi_categorical":
                values = pc.list_flatten(values)
            values = pc.drop_null(values)
            unique = pc.unique(values)
            ids = np.unique(bucketize(unique, f.buckets, self._salts[f.name]))
            report[f.name] = CollisionStats(distinct_values=len(unique), distinct_ids=int(ids.size))
        return report

    def _values(self, table: pa.Table, f: FeatureField) -> pa.Array:
        struct_name = "context" if f.source == "context" else f.tower
        struct = _column(table, struct_name)
        if not pa.types.is_struct(struct.type) or struct.type.get_field_index(f.name) < 0:
            raise FeatureError(f"feature {f.name!r} ({f.kind}, {f.tower} tower) is missing from the {struct_name!r} fields")
        return pc.struct_field(struct, f.name)

    def _encode_list(self, values: pa.Array, f: FeatureField) -> np.ndarray:
        if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
            raise FeatureError(f"feature {f.name!r} is multi_categorical but its values have type {values.type}")
        rows = len(values)
        values = pc.fill_null(values, pa.scalar([], type=values.type))
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False).astype(np.int64)
        ids = bucketize(pc.list_flatten(values), f.buckets, self._salts[f.name])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        row = np.repeat(np.arange(rows), lengths)
        pos = np.arange(ids.size) - np.repeat(starts, lengths)
        keep = pos < f.max_len
        out = np.full((rows, f.max_len), PADDING_ID, dtype=np.int64)
        out[row[keep], pos[keep]] = ids[keep]
        return out

    def _encode_numeric(self, values: pa.Array, f: FeatureField) -> np.ndarray:
        if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_null(values.type)):
            raise FeatureError(f"feature {f.name!r} is numeric but its values have type {values.type}")
        x = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
        x = np.where(np.isfinite(x), x, np.nan)
        if f.log1p:
            x = np.log1p(np.maximum(x, 0.0))
        z = (x - f.mean) / f.std
        return np.nan_to_num(z, nan=0.0).astype(np.float32)  # missing -> the mean


def _column(table: pa.Table, name: str) -> pa.Array:
    if name not in table.column_names:
        raise FeatureError(f"input has no column {name!r}")
    column = table.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
