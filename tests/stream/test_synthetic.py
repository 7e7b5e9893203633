"""The synthetic click-log generator: determinism, shape of the traffic, and a learnable, shifting signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from stream.clicklog import read_click_log, validate_schema, write_click_log
from stream.synthetic import (
    SYNTHETIC_SCHEMA,
    SyntheticLogConfig,
    generate_synthetic_log,
    iter_synthetic_log,
    planted_click_probability,
)

SMALL = SyntheticLogConfig(events=60_000, seed=7, users=2_000, initial_items=800)


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank-sum (Mann-Whitney) AUC with average ranks for ties."""
    ranks = pd.Series(score).rank().to_numpy()
    positive = label == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def field(table: pa.Table, tower: str, name: str) -> np.ndarray:
    return pc.struct_field(table.column(tower), name).to_numpy(zero_copy_only=False)


@pytest.fixture(scope="module")
def default_log() -> pa.Table:
    """The demo's default stream (200k events, seed 0)."""
    return generate_synthetic_log(SyntheticLogConfig())


@pytest.fixture(scope="module")
def small_log() -> pa.Table:
    return generate_synthetic_log(SMALL)


def test_schema_is_the_click_log_contract(small_log: pa.Table, tmp_path: Path) -> None:
    assert small_log.schema == SYNTHETIC_SCHEMA
    validate_schema(small_log.schema, "synthetic")
    assert small_log.num_rows == SMALL.events
    path = write_click_log(small_log, tmp_path / "syn.parquet")
    assert read_click_log(path).equals(small_log)
    row = small_log.slice(5, 1).to_pylist()[0]
    assert row["event_id"] == "syn-7-5"
    assert row["user"]["user_id"] == row["user_id"] and row["item"]["item_id"] == row["item_id"]
    assert row["user"]["segment"].startswith("seg") and row["user"]["device"] in {"ios", "android", "web"}
    assert row["item"]["category"].startswith("cat") and 1 <= len(row["item"]["tags"]) <= 4
    assert row["item"]["price"] > 0


def test_same_seed_same_table_other_seed_differs(small_log: pa.Table) -> None:
    assert generate_synthetic_log(SMALL).equals(small_log)
    other = generate_synthetic_log(SyntheticLogConfig(events=SMALL.events, seed=8, users=2_000, initial_items=800))
    assert not other.equals(small_log)
    assert not np.array_equal(other.column("item_id").to_numpy(), small_log.column("item_id").to_numpy())


def test_time_ordered(small_log: pa.Table) -> None:
    ts = small_log.column("ts").to_numpy()
    assert (np.diff(ts) >= 0).all()
    assert ts[0] >= SMALL.start_ts_ms
    seconds = (ts[-1] - ts[0]) / 1000
    assert seconds == pytest.approx(SMALL.events / SMALL.events_per_second, rel=0.05)


@pytest.mark.parametrize("chunk", [7_001, 50_000, 100_000])
def test_chunks_equal_slices_of_the_full_table(small_log: pa.Table, chunk: int) -> None:
    offset = 0
    for part in iter_synthetic_log(SMALL, chunk_events=chunk):
        assert part.num_rows == min(chunk, SMALL.events - offset)
        assert part.equals(small_log.slice(offset, part.num_rows))
        offset += part.num_rows
    assert offset == SMALL.events


def test_empty_stream() -> None:
    table = generate_synthetic_log(SyntheticLogConfig(events=0))
    assert table.num_rows == 0 and table.schema == SYNTHETIC_SCHEMA


def test_invalid_settings_rejected() -> None:
    with pytest.raises(ValueError, match="base_ctr"):
        SyntheticLogConfig(base_ctr=1.5)
    with pytest.raises(ValueError, match="chunk_events"):
        next(iter_synthetic_log(SMALL, chunk_events=0))


def test_ctr_near_base(default_log: pa.Table, small_log: pa.Table) -> None:
    assert abs(default_log.column("label").to_numpy().mean() - 0.25) < 0.05
    assert abs(small_log.column("label").to_numpy().mean() - SMALL.base_ctr) < 0.05
    low = generate_synthetic_log(SyntheticLogConfig(events=30_000, base_ctr=0.05, seed=1))
    assert abs(low.column("label").to_numpy().mean() - 0.05) < 0.02


def test_new_items_appear_later(default_log: pa.Table) -> None:
    items = default_log.column("item_id").to_numpy()
    tenth = len(items) // 10
    assert items[-tenth:].max() > items[:tenth].max()
    assert items[-tenth:].max() > SyntheticLogConfig().initial_items  # arrivals really get traffic


def test_popularity_is_skewed(default_log: pa.Table) -> None:
    counts = np.bincount(default_log.column("item_id").to_numpy())
    counts = np.sort(counts[counts > 0])[::-1]
    top = max(1, len(counts) // 100)
    assert counts[:top].sum() > 0.10 * counts.sum()


def test_tags_follow_category(default_log: pa.Table) -> None:
    """Tags are drawn mostly from a per-category pool, so they carry category information."""
    items = default_log.column("item").combine_chunks()
    frame = pd.DataFrame({"item": field(default_log, "item", "item_id"), "category": field(default_log, "item", "category"),
                          "tags": pc.struct_field(items, "tags").to_pylist()}).drop_duplicates("item")
    exploded = frame.explode("tags")
    distinct_tags_per_category = exploded.groupby("category").tags.nunique()
    assert distinct_tags_per_category.median() < 40  # out of 100: far from uniform


def test_planted_probability_is_a_strong_signal(default_log: pa.Table) -> None:
    probability = planted_click_probability(SyntheticLogConfig())
    labels = default_log.column("label").to_numpy()
    assert probability.shape == labels.shape
    assert abs(probability.mean() - labels.mean()) < 0.01  # labels are drawn from it
    assert 0.75 < auc(probability, labels) < 0.9


def cell_ctr_model(train: pd.DataFrame, prior_weight: float = 10.0) -> pd.Series:
    """Smoothed CTR per (segment, category): a crude model that sees features only."""
    prior = train.label.mean()
    cells = train.groupby(["segment", "category"]).label.agg(["sum", "count"])
    return ((cells["sum"] + prior_weight * prior) / (cells["count"] + prior_weight)).rename("score")


def score_with(model: pd.Series, frame: pd.DataFrame) -> np.ndarray:
    return frame.join(model, on=["segment", "category"]).score.fillna(model.mean()).to_numpy()


def features_frame(table: pa.Table) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "segment": field(table, "user", "segment"),
            "category": field(table, "item", "category"),
            "label": table.column("label").to_numpy(),
        }
    )


def test_features_alone_are_learnable_and_shift_breaks_them(default_log: pa.Table) -> None:
    """Fit a (segment, category) CTR table on the first half of the pre-shift stream.

    Honest check that features carry signal: it ranks held-out pre-shift events well,
    and after the shift the same table is close to useless (drift).
    """
    config = SyntheticLogConfig()
    frame = features_frame(default_log)
    shift = config.shift_event
    model = cell_ctr_model(frame.iloc[: shift // 2])
    held_out = frame.iloc[shift // 2 : shift]
    after = frame.iloc[shift:]
    auc_before = auc(score_with(model, held_out), held_out.label.to_numpy())
    auc_after = auc(score_with(model, after), after.label.to_numpy())
    assert auc_before > 0.68
    assert auc_after < auc_before - 0.1


def cell_change(table: pa.Table, shift_event: int, min_count: int = 150) -> float:
    """Mean absolute change of per-(segment, category) CTR from before to after ``shift_event``."""
    frame = features_frame(table)
    before = frame.iloc[:shift_event].groupby(["segment", "category"]).label.agg(["mean", "count"])
    after = frame.iloc[shift_event:].groupby(["segment", "category"]).label.agg(["mean", "count"])
    both = before.merge(after, left_index=True, right_index=True, suffixes=("_before", "_after"))
    both = both[(both.count_before >= min_count) & (both.count_after >= min_count)]
    assert len(both) >= 30
    return float((both.mean_before - both.mean_after).abs().mean())


def test_shift_changes_segment_by_category_ctr(default_log: pa.Table) -> None:
    config = SyntheticLogConfig()
    no_shift = generate_synthetic_log(SyntheticLogConfig(shift_at=1.0))
    changed = cell_change(default_log, config.shift_event)
    baseline = cell_change(no_shift, config.shift_event)  # same split point, no shift: noise only
    assert changed > 2 * baseline
    assert changed > 0.08


def test_shift_strength_zero_is_no_shift() -> None:
    config = SyntheticLogConfig(events=20_000, seed=3)
    weak = generate_synthetic_log(SyntheticLogConfig(events=20_000, seed=3, shift_strength=0.0))
    never = generate_synthetic_log(SyntheticLogConfig(events=20_000, seed=3, shift_at=1.0))
    assert weak.equals(never)
    assert not generate_synthetic_log(config).equals(never)


def test_new_users_off_by_default_keeps_a_fixed_population(small_log: pa.Table) -> None:
    assert SyntheticLogConfig().new_users_per_10k_events == 0
    assert small_log.column("user_id").to_numpy().max() <= SMALL.users
    with pytest.raises(ValueError, match="new_users_per_10k_events"):
        SyntheticLogConfig(new_users_per_10k_events=-1)


def test_new_users_and_items_keep_arriving_for_the_whole_stream() -> None:
    """With users arriving too, every tenth of the stream brings ids no earlier event had."""
    config = SyntheticLogConfig(events=100_000, seed=5, users=1_000, initial_items=500,
                                new_users_per_10k_events=100, new_items_per_10k_events=100)
    assert config.total_users == 2_000 and config.total_items == 1_500
    log = generate_synthetic_log(config)
    users, items = log.column("user_id").to_numpy(), log.column("item_id").to_numpy()
    assert users.max() > config.users and users.max() <= config.total_users
    assert (field(log, "user", "user_id") == users).all()
    tenth = len(users) // 10
    for ids in (users, items):
        seen = set(ids[:tenth].tolist())
        for k in range(1, 10):
            part = set(ids[k * tenth : (k + 1) * tenth].tolist())
            assert len(part - seen) > 20, k  # new ids in every tenth, not only early on
            seen |= part
    arrived_late = users > config.users + (config.total_users - config.users) // 2
    assert arrived_late[: len(users) // 2].sum() == 0  # a user never appears before arriving
    assert abs(log.column("label").to_numpy().mean() - config.base_ctr) < 0.05


def test_growing_users_chunk_like_the_full_table() -> None:
    config = SyntheticLogConfig(events=30_000, seed=2, users=300, new_users_per_10k_events=200)
    full = generate_synthetic_log(config)
    assert pa.concat_tables(iter_synthetic_log(config, chunk_events=7_001)).equals(full)
    assert generate_synthetic_log(config).equals(full)
