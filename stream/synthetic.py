"""Synthetic click log with a planted preference model: the demo's default data.

Real logs cannot ship with the project, and a random log would make AUC meaningless, so
this generator plants a structure a two-tower model can recover and that exercises the
streaming parts of the system:

* users and items live in a small latent space built from their *features* (segment and
  age bucket for users; category and tags for items) plus a little individual noise, so
  features carry most of the signal and ids carry the rest;
* item popularity follows a power law, and new items keep arriving; a share of traffic
  goes to recently arrived items so freshness matters;
* optionally (``new_users_per_10k_events``) new users keep arriving too, so the user id
  space grows with the stream (soak runs: nothing keyed by id may grow without bound);
* at ``shift_at`` the segment preference vectors are re-drawn (partly or fully), so a
  model frozen before the shift degrades after it: drift for monitoring to catch.

Events are generated in fixed-size internal blocks, each with its own random stream
derived from the seed, so the table is identical whatever chunk size the caller asks
for and a 10M-event stream can be produced chunk by chunk in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stream.clicklog import click_log_schema

# ---- population shape (fixed so the feature spec's vocabularies stay small and stable)
N_SEGMENTS = 20
N_AGE_BUCKETS = 6
DEVICES: tuple[str, ...] = ("ios", "android", "web")
DEVICE_SHARES: tuple[float, ...] = (0.45, 0.40, 0.15)
N_CATEGORIES = 30
N_TAGS = 100
MIN_TAGS_PER_ITEM, MAX_TAGS_PER_ITEM = 1, 4
TAGS_PER_CATEGORY = 8  # each category draws its tags mostly from its own pool...
OFF_CATEGORY_TAG_SHARE = 0.15  # ...and sometimes from the whole vocabulary

# ---- latent preference model
AGE_VECTOR_SCALE = 0.5  # age refines the segment's taste, it does not dominate it
USER_NOISE_SCALE = 0.3  # individual taste beyond the features (learnable only via user_id)
TAG_VECTOR_SCALE = 0.7
ITEM_NOISE_SCALE = 0.3
SIGNAL_SCALE = 2.6  # `a` in sigmoid(a * <u, v> + bias + c); sets how separable clicks are
POPULARITY_BIAS = 0.3  # popular items are clicked a bit more (per std of log popularity)
PRICE_BIAS = 0.25  # expensive items are clicked a bit less (per std of log price)
DEVICE_BIAS: tuple[float, ...] = (0.1, 0.0, -0.2)  # small, so `device` is a weak feature

# ---- prices: lognormal around a per-category level (the feature spec log1p-standardises)
PRICE_LOG_MEAN = 3.0
PRICE_CATEGORY_LOG_STD = 0.6
PRICE_ITEM_LOG_STD = 0.5

# ---- traffic
USER_ACTIVITY_LOG_STD = 1.0  # lognormal activity weights: some users are much busier
FRESH_WINDOW_EVENTS = 10_000  # an item is "fresh" for this many events after it arrives
FRESH_TRAFFIC_SHARE = 0.15  # share of impressions spent on fresh items when there are any
EVENTS_PER_ARRIVAL_UNIT = 10_000  # `new_items_per_10k_events` / `new_users_per_10k_events` are per this many events

# ---- calibration of the intercept c to reach `base_ctr`
CALIBRATION_SAMPLES = 50_000
CALIBRATION_BRACKET = (-30.0, 30.0)
CALIBRATION_ITERATIONS = 60

#: Events per internal block; fixed so the stream does not depend on the chunk size asked for.
BLOCK_EVENTS = 50_000
# Spawn keys separating the random streams derived from one seed.
_ENTITY_STREAM, _CALIBRATION_STREAM, _EVENT_STREAM = 0, 1, 2
#: Ids start at 1: id 0 is the conventional "missing / padding" id of embedding tables.
FIRST_ID = 1
MS_PER_SECOND = 1000.0

USER_STRUCT = pa.struct(
    [("user_id", pa.int64()), ("segment", pa.string()), ("age_bucket", pa.int64()), ("device", pa.string())]
)
ITEM_STRUCT = pa.struct(
    [("item_id", pa.int64()), ("category", pa.string()), ("tags", pa.list_(pa.string())), ("price", pa.float64())]
)
#: The table the generator yields: the click-log identity columns plus both towers.
SYNTHETIC_SCHEMA = click_log_schema(USER_STRUCT, ITEM_STRUCT)


@dataclass(frozen=True)
class SyntheticLogConfig:
    """Size, randomness and dynamics of the synthetic stream.

    ``shift_at`` is the fraction of the stream after which segment preferences change
    (1.0 = never); ``shift_strength`` 0 keeps them, 1 re-draws them completely (values
    in between rotate towards the new draw, keeping the vectors' scale and so the CTR).
    ``base_ctr`` is reached approximately by calibrating the click model's intercept.
    ``new_users_per_10k_events`` > 0 makes users arrive over the stream like items do
    (``users`` is then the initial population; a new user's activity weight is drawn as
    for any other, so arrivals get traffic at once); 0, the default, keeps a fixed
    population and the stream exactly as it was before the option existed.
    """

    events: int = field(default=200_000, metadata={"ge": 0})
    seed: int = field(default=0, metadata={"ge": 0})
    users: int = field(default=5_000, metadata={"ge": 1})
    initial_items: int = field(default=2_000, metadata={"ge": 1})
    new_items_per_10k_events: int = field(default=50, metadata={"ge": 0})
    latent_dim: int = field(default=8, metadata={"ge": 1})
    popularity_exponent: float = field(default=1.1, metadata={"ge": 0.0})
    shift_at: float = field(default=0.6, metadata={"ge": 0.0, "le": 1.0})
    shift_strength: float = field(default=1.0, metadata={"ge": 0.0, "le": 1.0})
    base_ctr: float = field(default=0.25, metadata={"gt": 0.0, "lt": 1.0})
    start_ts_ms: int = 1_700_000_000_000
    events_per_second: float = field(default=50.0, metadata={"gt": 0.0})
    new_users_per_10k_events: int = field(default=0, metadata={"ge": 0})

    def __post_init__(self) -> None:
        checks = {
            "events": self.events >= 0,
            "seed": self.seed >= 0,
            "users": self.users >= 1,
            "initial_items": self.initial_items >= 1,
            "new_items_per_10k_events": self.new_items_per_10k_events >= 0,
            "latent_dim": self.latent_dim >= 1,
            "popularity_exponent": self.popularity_exponent >= 0.0,
            "shift_at": 0.0 <= self.shift_at <= 1.0,
            "shift_strength": 0.0 <= self.shift_strength <= 1.0,
            "base_ctr": 0.0 < self.base_ctr < 1.0,
            "events_per_second": self.events_per_second > 0.0,
            "new_users_per_10k_events": self.new_users_per_10k_events >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid synthetic log settings: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")

    @property
    def shift_event(self) -> int:
        """Index of the first event drawn under the shifted preferences (``events`` = never)."""
        return self.events if self.shift_at >= 1.0 else round(self.shift_at * self.events)

    @property
    def total_items(self) -> int:
        """Initial items plus every item that arrives before the stream ends."""
        return self.initial_items + self.events * self.new_items_per_10k_events // EVENTS_PER_ARRIVAL_UNIT

    @property
    def total_users(self) -> int:
        """Initial users plus every user that arrives before the stream ends."""
        return self.users + self.events * self.new_users_per_10k_events // EVENTS_PER_ARRIVAL_UNIT


# --------------------------------------------------------------------------- the world


def _arrivals(initial: int, total: int, per_10k_events: int) -> np.ndarray:
    """Event index at which each entity becomes available: 0 for the initial ones, then evenly spread."""
    arriving = total - initial
    return np.concatenate(
        [
            np.zeros(initial, dtype=np.int64),
            (np.arange(1, arriving + 1) * EVENTS_PER_ARRIVAL_UNIT) // max(per_10k_events, 1),
        ]
    )


def _zscore(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def _item_tags(rng: np.random.Generator, category: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tags per item as (flat tag ids, offsets): 1-4 distinct tags, mostly from the category's pool.

    Vectorised: draw MAX_TAGS_PER_ITEM distinct pool slots per item, replace a few with
    off-category tags, drop repeats and keep the first n of each row.
    """
    n = len(category)
    pools = np.stack([rng.choice(N_TAGS, TAGS_PER_CATEGORY, replace=False) for _ in range(N_CATEGORIES)])
    slots = rng.permuted(np.tile(np.arange(TAGS_PER_CATEGORY), (n, 1)), axis=1)[:, :MAX_TAGS_PER_ITEM]
    tags = pools[category[:, None], slots]
    off = rng.random(tags.shape) < OFF_CATEGORY_TAG_SHARE
    tags = np.where(off, rng.integers(0, N_TAGS, tags.shape), tags)
    wanted = rng.integers(MIN_TAGS_PER_ITEM, MAX_TAGS_PER_ITEM + 1, n)
    keep = np.arange(MAX_TAGS_PER_ITEM)[None, :] < wanted[:, None]
    for j in range(1, MAX_TAGS_PER_ITEM):  # drop a tag equal to an earlier one in its row
        keep[:, j] &= ~(tags[:, :j] == tags[:, j : j + 1]).any(axis=1)
    counts = keep.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return tags[keep], offsets


class _World:
    """Everything fixed for a config: users, items, latent vectors, traffic and the intercept.

    Built once per stream from the seed's entity random stream, so any block of events can
    be generated independently of the others.
    """

    def __init__(self, config: SyntheticLogConfig) -> None:
        self.config = config
        rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_ENTITY_STREAM,)))
        d = config.latent_dim
        scale = 1.0 / np.sqrt(d)  # keeps <u, v> of order 1 whatever the latent dimension

        # Users: features, then latent vector = segment + age + individual noise.
        n_users = config.total_users  # == config.users unless users arrive over time
        self.user_segment = rng.integers(0, N_SEGMENTS, n_users)
        self.user_age = rng.integers(0, N_AGE_BUCKETS, n_users)
        self.user_device = rng.choice(len(DEVICES), n_users, p=DEVICE_SHARES)
        segment_vec = rng.normal(0.0, scale, (N_SEGMENTS, d))
        shifted_segment_vec = rng.normal(0.0, scale, (N_SEGMENTS, d))
        age_vec = rng.normal(0.0, scale * AGE_VECTOR_SCALE, (N_AGE_BUCKETS, d))
        user_noise = rng.normal(0.0, scale * USER_NOISE_SCALE, (n_users, d))
        activity = rng.lognormal(0.0, USER_ACTIVITY_LOG_STD, n_users)
        if config.new_users_per_10k_events:
            # Available users are an id prefix: sample by inverse CDF on the prefix's sums.
            self.user_cum_activity = np.cumsum(activity)
            self.user_arrival_event = _arrivals(config.users, n_users, config.new_users_per_10k_events)
        else:
            self.user_cum_activity = np.cumsum(activity / activity.sum())

        # Items: features, then latent vector = category + mean of tags + individual noise.
        n_items = config.total_items
        self.item_category = rng.integers(0, N_CATEGORIES, n_items)
        self.tag_flat, self.tag_offsets = _item_tags(rng, self.item_category)
        category_vec = rng.normal(0.0, scale, (N_CATEGORIES, d))
        tag_vec = rng.normal(0.0, scale * TAG_VECTOR_SCALE, (N_TAGS, d))
        item_noise = rng.normal(0.0, scale * ITEM_NOISE_SCALE, (n_items, d))
        category_log_price = rng.normal(PRICE_LOG_MEAN, PRICE_CATEGORY_LOG_STD, N_CATEGORIES)
        self.item_price = np.round(
            np.exp(category_log_price[self.item_category] + rng.normal(0.0, PRICE_ITEM_LOG_STD, n_items)), 2
        )
        # Zipf-like popularity by a random rank, so late arrivals can be hits too.
        rank = rng.permutation(n_items) + 1
        popularity = rank.astype(np.float64) ** -config.popularity_exponent
        self.item_cum_popularity = np.cumsum(popularity)  # items are available as an id prefix
        self.arrival_event = _arrivals(config.initial_items, n_items, config.new_items_per_10k_events)

        tag_counts = np.diff(self.tag_offsets)
        tag_sum = np.add.reduceat(tag_vec[self.tag_flat], self.tag_offsets[:-1], axis=0)
        self.item_vec = category_vec[self.item_category] + tag_sum / tag_counts[:, None] + item_noise
        self.item_bias = POPULARITY_BIAS * _zscore(np.log(popularity)) - PRICE_BIAS * _zscore(np.log(self.item_price))

        # The shift rotates each segment vector towards a fresh draw; the angle keeps the scale.
        angle = config.shift_strength * np.pi / 2.0
        after = np.cos(angle) * segment_vec + np.sin(angle) * shifted_segment_vec
        personal = age_vec[self.user_age] + user_noise
        self.user_vec_before = segment_vec[self.user_segment] + personal
        self.user_vec_after = after[self.user_segment] + personal
        self.user_bias = np.asarray(DEVICE_BIAS)[self.user_device]

        self.intercept = self._calibrate_intercept()

    # ---- traffic: which user sees which item at event index t

    def available_items(self, event_index: np.ndarray) -> np.ndarray:
        """How many items (an id prefix) exist at each event index."""
        return np.searchsorted(self.arrival_event, event_index, side="right")

    def sample_users(self, rng: np.random.Generator, event_index: np.ndarray) -> np.ndarray:
        """0-based user rows drawn by activity weight among the users present at each event index."""
        n = len(event_index)
        if not self.config.new_users_per_10k_events:
            return np.minimum(np.searchsorted(self.user_cum_activity, rng.random(n)), self.config.users - 1)
        n_avail = np.searchsorted(self.user_arrival_event, event_index, side="right")
        target = rng.random(n) * self.user_cum_activity[n_avail - 1]
        return np.minimum(np.searchsorted(self.user_cum_activity, target, side="right"), n_avail - 1)

    def sample_items(self, rng: np.random.Generator, event_index: np.ndarray) -> np.ndarray:
        """0-based item rows by power-law popularity among available items, with a fresh-item boost.

        Available items form an id prefix, so sampling among them is an inverse-CDF look-up
        on one cumulative array; fresh items are a contiguous id range inside that prefix.
        """
        cum = self.item_cum_popularity
        n_avail = self.available_items(event_index)
        first_fresh = np.searchsorted(self.arrival_event, event_index - FRESH_WINDOW_EVENTS, side="right")
        first_fresh = np.maximum(first_fresh, self.config.initial_items)  # initial items are never fresh
        to_fresh = (rng.random(len(event_index)) < FRESH_TRAFFIC_SHARE) & (first_fresh < n_avail)
        low = np.where(to_fresh, np.where(first_fresh > 0, cum[first_fresh - 1], 0.0), 0.0)
        high = cum[n_avail - 1]
        target = low + rng.random(len(event_index)) * (high - low)
        rows = np.searchsorted(cum, target, side="right")
        return np.clip(rows, np.where(to_fresh, first_fresh, 0), n_avail - 1)

    def logits(self, event_index: np.ndarray, users: np.ndarray, items: np.ndarray, intercept: float) -> np.ndarray:
        """a * <u, v> + item bias + device bias + c, with u taken before or after the shift."""
        after = event_index >= self.config.shift_event
        user_vec = np.where(after[:, None], self.user_vec_after[users], self.user_vec_before[users])
        affinity = np.einsum("ij,ij->i", user_vec, self.item_vec[items])
        return SIGNAL_SCALE * affinity + self.item_bias[items] + self.user_bias[users] + intercept

    def _calibrate_intercept(self) -> float:
        """Find c so the mean click probability over typical traffic equals ``base_ctr``.

        Traffic is sampled with the same mechanism as the stream at random positions, and
        the mean of sigmoid(logit + c) is monotone in c, so bisection converges.
        """
        config = self.config
        rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_CALIBRATION_STREAM,)))
        positions = rng.integers(0, max(config.events, 1), CALIBRATION_SAMPLES)
        users = self.sample_users(rng, positions)
        items = self.sample_items(rng, positions)
        base = self.logits(positions, users, items, 0.0)
        low, high = CALIBRATION_BRACKET
        for _ in range(CALIBRATION_ITERATIONS):
            mid = 0.5 * (low + high)
            if _sigmoid(base + mid).mean() < config.base_ctr:
                low = mid
            else:
                high = mid
        return 0.5 * (low + high)

    # ---- Arrow structs per entity, gathered per event

    @cached_property
    def user_struct(self) -> pa.StructArray:
        n = len(self.user_segment)
        return pa.StructArray.from_arrays(
            [
                pa.array(np.arange(FIRST_ID, FIRST_ID + n), pa.int64()),
                pa.array([f"seg{s}" for s in self.user_segment.tolist()], pa.string()),
                pa.array(self.user_age, pa.int64()),
                pa.array([DEVICES[k] for k in self.user_device.tolist()], pa.string()),
            ],
            fields=list(USER_STRUCT),
        )

    @cached_property
    def item_struct(self) -> pa.StructArray:
        n = len(self.item_category)
        tag_names = pa.array([f"tag{k}" for k in range(N_TAGS)], pa.string())
        tags = pa.ListArray.from_arrays(pa.array(self.tag_offsets), tag_names.take(pa.array(self.tag_flat)))
        return pa.StructArray.from_arrays(
            [
                pa.array(np.arange(FIRST_ID, FIRST_ID + n), pa.int64()),
                pa.array([f"cat{c}" for c in self.item_category.tolist()], pa.string()),
                tags,
                pa.array(self.item_price, pa.float64()),
            ],
            fields=list(ITEM_STRUCT),
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class _Block:
    """One internal block of events as plain arrays (0-based user/item rows)."""

    start: int  # global index of the first event
    ts_ms: np.ndarray
    users: np.ndarray
    items: np.ndarray
    probability: np.ndarray
    label: np.ndarray


def _iter_blocks(world: _World) -> Iterator[_Block]:
    """Generate the stream block by block; each block has its own seed-derived random stream.

    Event time is a running sum of exponential gaps carried from block to block, so the
    timestamps do not depend on how the caller chunks the output.
    """
    config = world.config
    clock_seconds = 0.0
    for block_index, start in enumerate(range(0, config.events, BLOCK_EVENTS)):
        n = min(BLOCK_EVENTS, config.events - start)
        rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_EVENT_STREAM, block_index)))
        event_index = np.arange(start, start + n)
        seconds = clock_seconds + np.cumsum(rng.exponential(1.0 / config.events_per_second, n))
        clock_seconds = float(seconds[-1])
        users = world.sample_users(rng, event_index)
        items = world.sample_items(rng, event_index)
        probability = _sigmoid(world.logits(event_index, users, items, world.intercept))
        label = (rng.random(n) < probability).astype(np.int8)
        ts_ms = config.start_ts_ms + np.floor(seconds * MS_PER_SECOND).astype(np.int64)
        yield _Block(start, ts_ms, users, items, probability, label)


def _block_table(world: _World, block: _Block) -> pa.Table:
    """Turn a block into click-log rows (ids are 1-based; event_id = "syn-{seed}-{i}")."""
    n = len(block.users)
    index = pa.array(np.arange(block.start, block.start + n), pa.int64())
    event_id = pc.binary_join_element_wise(
        pa.array([f"syn-{world.config.seed}"] * n, pa.string()), pc.cast(index, pa.string()), "-"
    )
    users, items = pa.array(block.users), pa.array(block.items)
    return pa.Table.from_arrays(
        [
            event_id,
            pa.array(block.ts_ms, pa.int64()),
            pa.array(block.users + FIRST_ID, pa.int64()),
            pa.array(block.items + FIRST_ID, pa.int64()),
            pa.array(block.label, pa.int8()),
            world.user_struct.take(users),
            world.item_struct.take(items),
        ],
        schema=SYNTHETIC_SCHEMA,
    )


def iter_synthetic_log(config: SyntheticLogConfig, chunk_events: int = 200_000) -> Iterator[pa.Table]:
    """Yield the stream as consecutive time-ordered tables of ``chunk_events`` rows (the last may be shorter).

    Concatenating the chunks gives exactly `generate_synthetic_log(config)`, whatever
    ``chunk_events`` is; memory stays bounded by the chunk and block sizes.
    """
    if chunk_events < 1:
        raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
    world = _World(config)
    pending: list[pa.Table] = []
    pending_rows = 0
    for block in _iter_blocks(world):
        pending.append(_block_table(world, block))
        pending_rows += len(block.users)
        while pending_rows >= chunk_events:
            buffered = pa.concat_tables(pending)
            yield buffered.slice(0, chunk_events).combine_chunks()
            rest = buffered.slice(chunk_events)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
    if pending_rows:
        yield pa.concat_tables(pending).combine_chunks()


def generate_synthetic_log(config: SyntheticLogConfig = SyntheticLogConfig()) -> pa.Table:
    """The whole stream as one time-ordered click-log table (deterministic for the seed)."""
    chunks = list(iter_synthetic_log(config))
    if not chunks:
        return SYNTHETIC_SCHEMA.empty_table()
    return pa.concat_tables(chunks).combine_chunks()


def planted_click_probability(config: SyntheticLogConfig) -> np.ndarray:
    """The true click probability of every event of the stream, in stream order (float64).

    For evaluation and tests only: it is what a perfect model would predict (it includes
    the individual user/item noise that features alone cannot reveal), so its AUC is an
    upper bound for any model trained on the log.
    """
    world = _World(config)
    parts = [block.probability for block in _iter_blocks(world)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def synthetic_items(config: SyntheticLogConfig) -> pa.Table:
    """Every item of the stream's world (``item_id`` and the ``item`` struct), seen in the log or not:
    a catalogue to index (bench.retrieval), of ``config.total_items`` rows."""
    world = _World(config)
    return pa.table({"item_id": pa.array(np.arange(FIRST_ID, FIRST_ID + len(world.item_category)), pa.int64()),
                     "item": world.item_struct})
