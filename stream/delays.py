"""Feedback logs: a click log whose clicks come later, as the joiner (`stream.joiner`) meets them.

A *feedback log* is a click log (`stream.clicklog`) with one more column, ``click_ts``
(int64, epoch ms): when the impression's click came, null when it never did. ``label``
stays: it is the *true* label, what benchmarks score against; replaying a feedback log
(`stream.replay`) sends each row as an impression without ``label`` at ``ts`` and, where
``click_ts`` is set, a click message at ``click_ts``.

`add_click_times` makes one from a labelled log: each positive gets a click delay drawn
from an exponential or log-normal distribution. Real delays are heavy-tailed (Chapelle,
KDD 2014: half of conversions within an hour, a long tail over days; clicks within
seconds to minutes), so some delays exceed any sensible label window: they are the late
clicks a policy must handle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CLICK_TS_COLUMN = "click_ts"


@dataclass(frozen=True)
class DelayConfig:
    """The click-delay distribution of a synthetic feedback log (``[data.delays]``).

    ``exponential``: mean ``mean_s``. ``lognormal``: median ``mean_s`` and shape
    ``sigma`` (the log's standard deviation; 1.5 puts ~7% of clicks beyond 10x the median).
    """

    distribution: Literal["exponential", "lognormal"] = "lognormal"
    mean_s: float = field(default=300.0, metadata={"gt": 0.0})
    sigma: float = field(default=1.5, metadata={"gt": 0.0})
    seed: int = 0


def draw_delays_s(config: DelayConfig, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` click delays in seconds from ``config``'s distribution."""
    if config.distribution == "exponential":
        return rng.exponential(config.mean_s, count)
    return rng.lognormal(np.log(config.mean_s), config.sigma, count)


def add_click_times(table: pa.Table, config: DelayConfig) -> pa.Table:
    """``table`` with a ``click_ts`` column: ts + a drawn delay for positives, null for negatives."""
    rng = np.random.default_rng(config.seed)
    labels = table.column("label").to_numpy(zero_copy_only=False)
    ts = table.column("ts").to_numpy(zero_copy_only=False).astype(np.int64)
    delays_ms = np.round(draw_delays_s(config, len(ts), rng) * 1000.0).astype(np.int64)
    click_ts = pa.array(ts + delays_ms, pa.int64(), mask=labels != 1)
    if CLICK_TS_COLUMN in table.column_names:
        table = table.drop_columns([CLICK_TS_COLUMN])
    return table.append_column(CLICK_TS_COLUMN, click_ts)


def is_feedback_log(schema: pa.Schema) -> bool:
    return CLICK_TS_COLUMN in schema.names


def delay_quantiles_s(table: pa.Table, quantiles: tuple[float, ...]) -> tuple[float, ...]:
    """Quantiles of the log's click delays in seconds (benchmarks pick label windows from them)."""
    delays = pc.subtract(table.column(CLICK_TS_COLUMN), table.column("ts")).drop_null().to_numpy() / 1000.0
    return tuple(float(np.quantile(delays, q)) for q in quantiles)
