"""Shared fixtures: tiny click logs in the contract's schema."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pytest

from stream.datasets import find_movielens, how_to_get
from stream.events import EventSchema

REPO_ROOT = Path(__file__).resolve().parents[1]

#: What the decoder validates for the synthetic stream's fields (`stream.synthetic`).
SYNTHETIC_EVENT_SCHEMA = EventSchema.of(
    [
        ("user_id", "categorical", "user"),
        ("segment", "categorical", "user"),
        ("age_bucket", "categorical", "user"),
        ("device", "categorical", "user"),
        ("item_id", "categorical", "item"),
        ("category", "categorical", "item"),
        ("tags", "multi_categorical", "item"),
        ("price", "numeric", "item"),
    ]
)


def missing_system_package(message: str) -> NoReturn:
    """Skip a test whose system package is missing; fail it under CI, where `make setup` installs it."""
    __tracebackhide__ = True  # report the test that needs the package, not this line
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must have it")
    pytest.skip(message)


def make_synthetic_like_table(rows: int, seed: int = 0) -> pa.Table:
    """Random rows with the default feature spec's fields (the synthetic stream's)."""
    rng = np.random.default_rng(seed)
    item_ids = rng.integers(0, 50, rows)
    user_ids = rng.integers(0, 40, rows)
    users = pa.StructArray.from_arrays(
        [
            pa.array(user_ids),
            pa.array([f"seg{s}" for s in rng.integers(0, 5, rows)]),
            pa.array(rng.integers(0, 6, rows)),
            pa.array(rng.choice(["ios", "android", "web"], rows)),
        ],
        names=["user_id", "segment", "age_bucket", "device"],
    )
    tags = [[f"t{t}" for t in rng.choice(20, rng.integers(1, 4), replace=False)] for _ in range(rows)]
    items = pa.StructArray.from_arrays(
        [
            pa.array(item_ids),
            pa.array([f"cat{c % 7}" for c in item_ids]),
            pa.array(tags, type=pa.list_(pa.string())),
            pa.array(rng.lognormal(3.0, 1.0, rows)),
        ],
        names=["item_id", "category", "tags", "price"],
    )
    return pa.table(
        {
            "event_id": pa.array([f"e{i}" for i in range(rows)]),
            "ts": pa.array(np.arange(rows, dtype=np.int64) * 1000),
            "user_id": pa.array(user_ids),
            "item_id": pa.array(item_ids),
            "label": pa.array(rng.integers(0, 2, rows).astype(np.int8)),
            "user": users,
            "item": items,
        }
    )


@pytest.fixture
def tiny_table() -> pa.Table:
    return make_synthetic_like_table(64)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """MovieLens-100K from $INTTOWER_DATA or the download cache; skips (saying how to get it) if absent."""
    found = find_movielens("ml-100k")
    if found is None:
        pytest.skip(f"MovieLens ml-100k not found: {how_to_get('ml-100k')}")
    return found
