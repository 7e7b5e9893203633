"""Delayed feedback: what waiting for clicks costs and buys. Oracle, waiting windows, FNW, side by side.

    python -m bench.delayed_feedback [--seeds 3] [--events 60000] [--events-per-second 1]
                                     [--delays lognormal] [--delay-median-s 300] [--delay-sigma 1.5]
                                     [--batch 256] [--threads N] [--policies oracle,p50,p90,p99,fnw0,fnw-p50]

The synthetic stream (`stream.synthetic`, default features and configs) becomes a
feedback log (`stream.delays`): every event an impression, each positive clicked after a
drawn delay. Its messages (impressions at ``ts``, clicks at ``click_ts``) are cut in
event-time order into batches of ``--batch`` messages and go through the daemon's own
parts: `stream.feedback_wire.decode_feedback`-shaped tables, `stream.joiner.FeedbackJoiner`
and `model.online.OnlineTrainer` (FNW weights under ``fnw``), as `inttower.daemon` wires
them, without the broker. Every impression is scored when it arrives, by the model as it
then is (what serving would have returned); those arrival predictions are scored against
the **true** labels (the log's, whatever the policy saw), over the latest half of the
impressions. Latency is event time from an impression to the step that trained it (the
stream's position then), median over trained impressions.

Policies: ``oracle``: every label known at impression time (a labelled stream, the upper
bound); ``p50``/``p90``/``p99``: a waiting window at that quantile of the log's delays,
late clicks dropped; ``fnw0``: FNW with no window (every impression a negative at once,
a duplicate positive on its click; Ktena et al. 2019); ``fnw-p50``: FNW after a window at
the delay median. The horizon (the latest a click counts) is 24 h for all.

The stream runs at ``--events-per-second`` (default 1: 60k events span 16.7 hours, so
even a p99 window of ~2.8 h holds back under a fifth of the stream; at 5/s and 100k
events the p99 policy's model saw its first label only after half the stream had gone,
which measures the start-up more than the steady state). Mean and standard deviation
over seeds; each seed draws its own stream and delays.
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from model.build import build_model
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.features import FeatureEncoder, event_schema
from model.online import OnlineTrainer
from monitoring.quality import log_loss, roc_auc
from stream.config import FeedbackConfig
from stream.delays import CLICK_TS_COLUMN, DelayConfig, add_click_times, delay_quantiles_s
from stream.feedback_wire import click_table
from stream.joiner import LABELLED, FeedbackJoiner
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

POLICIES = ("oracle", "p50", "p90", "p99", "fnw0", "fnw-p50")
HORIZON_S = 86_400.0
EVAL_FRACTION = 0.5  # the latest half of the impressions are scored


@dataclass(frozen=True)
class Outcome:
    auc: float
    logloss: float
    latency_s: float  # median impression-to-step, event time
    seconds: float


def feedback_config(policy: str, quantiles: dict[str, float]) -> FeedbackConfig | None:
    """The joiner settings of a policy (None: the oracle, labels at impression time)."""
    if policy == "oracle":
        return None
    if policy.startswith("fnw"):
        window = 0.0 if policy == "fnw0" else quantiles[policy.split("-")[1]]
        return FeedbackConfig(mode="joined", label_window_s=window, late_click_policy="fnw", click_horizon_s=HORIZON_S,
                              max_pending=10**7, dedup_ids=0)
    return FeedbackConfig(mode="joined", label_window_s=quantiles[policy], late_click_policy="drop",
                          click_horizon_s=HORIZON_S, max_pending=10**7, dedup_ids=0)


def message_batches(log: pa.Table, batch: int, oracle: bool):
    """(impressions, clicks, max_ts) per batch of ``batch`` messages, in event-time order.

    The oracle's impressions carry their labels (they train at once); the others' carry
    none, and their clicks follow at ``click_ts``.
    """
    n = log.num_rows
    ts = log.column("ts").to_numpy()
    click_ts = log.column(CLICK_TS_COLUMN)
    clicked = np.flatnonzero(click_ts.is_valid().to_numpy(zero_copy_only=False))
    times = click_ts.to_numpy(zero_copy_only=False)[clicked].astype(np.int64)
    events = log.drop_columns([CLICK_TS_COLUMN])
    if not oracle:
        events = events.set_column(events.schema.get_field_index("label"), "label", pa.nulls(n, pa.int8()))
        order = list(heapq.merge(((int(t), 0, i) for i, t in enumerate(ts)), sorted(zip(times.tolist(), [1] * len(clicked),
                                                                                          clicked.tolist()))))
    else:
        order = [(int(t), 0, i) for i, t in enumerate(ts)]
    ids = log.column("event_id").to_pylist()
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        rows = [i for _, kind, i in chunk if kind == 0]
        clicks = [(when, i) for when, kind, i in chunk if kind == 1]
        clicked = click_table([(ids[i], when, None, 0, 0) for when, i in clicks])
        yield events.take(pa.array(rows, pa.int64())), np.array(rows, dtype=np.int64), clicked, {0: chunk[-1][0]}


def run_policy(log: pa.Table, policy: str, quantiles: dict[str, float], model: ModelConfig, train: TrainConfig,
               online: OnlineConfig, batch: int, seed: int) -> Outcome:
    """One policy on one stream: the arrival predictions against the true labels, and the training latency."""
    torch.manual_seed(seed)
    trainer = OnlineTrainer(build_model(model), train, online)
    encoder = FeatureEncoder(model.features)
    feedback = feedback_config(policy, quantiles)
    joiner = FeedbackJoiner(feedback or FeedbackConfig(mode="joined", dedup_ids=0), event_schema(model.features).arrow_schema(),
                            ["model"])
    arrival = np.full(log.num_rows, np.nan)
    index_of = {e: i for i, e in enumerate(log.column("event_id").to_pylist())}
    ts = log.column("ts").to_numpy()
    latencies: list[np.ndarray] = []
    started = time.perf_counter()
    for events, rows, clicks, max_ts in message_batches(log, batch, oracle=feedback is None):
        scores = np.zeros(0)
        if events.num_rows:
            scores = trainer.predict(encoder.encode(events)).numpy().astype(np.float64)
            arrival[rows] = scores
        joined = joiner.add(events, {"model": scores}, clicks, max_ts, now=0.0)
        if joined.table.num_rows:
            fnw = (joined.roles != LABELLED) if feedback is not None and feedback.late_click_policy == "fnw" else None
            trainer.step(encoder.encode(joined.table), fnw_rows=fnw, fnw_in_window=joiner.in_window_share)
            trained = np.array([index_of[e] for e in joined.table.column("event_id").to_pylist()])[joined.counted]
            latencies.append((max_ts[0] - ts[trained]) / 1000.0)
    seconds = time.perf_counter() - started
    start = log.num_rows - round(EVAL_FRACTION * log.num_rows)
    truth = log.column("label").to_numpy(zero_copy_only=False)[start:].astype(np.float64)
    predicted = arrival[start:]
    latency = float(np.median(np.concatenate(latencies))) if latencies else float("nan")
    return Outcome(roc_auc(truth, predicted), log_loss(truth, predicted), latency, seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--events-per-second", type=float, default=1.0)
    parser.add_argument("--delays", choices=("exponential", "lognormal"), default="lognormal")
    parser.add_argument("--delay-median-s", type=float, default=300.0, help="lognormal median / exponential mean")
    parser.add_argument("--delay-sigma", type=float, default=1.5)
    parser.add_argument("--batch", type=int, default=256, help="messages per batch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    args = parser.parse_args(argv)
    policies = args.policies.split(",")
    for p in policies:
        if p not in POLICIES:
            parser.error(f"unknown policy {p!r}; choose from {', '.join(POLICIES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, train, online = ModelConfig(), TrainConfig(), OnlineConfig()
    results: dict[str, list[Outcome]] = {p: [] for p in policies}
    for seed in range(args.seeds):
        stream = generate_synthetic_log(SyntheticLogConfig(events=args.events, seed=seed,
                                                           events_per_second=args.events_per_second))
        log = add_click_times(stream, DelayConfig(args.delays, args.delay_median_s, args.delay_sigma, seed=seed))
        p50, p90, p99 = delay_quantiles_s(log, (0.5, 0.9, 0.99))
        quantiles = {"p50": p50, "p90": p90, "p99": p99}
        print(f"seed {seed}: {log.num_rows} impressions over {(log['ts'][-1].as_py() - log['ts'][0].as_py()) / 3.6e6:.1f} h, "
              f"click delays p50 {p50:.0f} s, p90 {p90:.0f} s, p99 {p99:.0f} s", flush=True)
        for policy in policies:
            outcome = run_policy(log, policy, quantiles, model, train, online, args.batch, seed)
            results[policy].append(outcome)
            print(f"  {policy:8s} AUC {outcome.auc:.4f}  logloss {outcome.logloss:.4f}  "
                  f"median latency {outcome.latency_s:.0f} s  ({outcome.seconds:.0f} s)", flush=True)
    print(f"\nIntTower (default config), {args.events} synthetic impressions at {args.events_per_second:g}/s, "
          f"{args.delays} delays (median {args.delay_median_s:g} s), batches of {args.batch} messages, "
          f"{args.seeds} seeds; arrival predictions vs true labels, latest {EVAL_FRACTION:.0%} of impressions")
    print("| policy | window | AUC | logloss | median impression-to-step latency |")
    print("|---|---|---|---|---|")
    for policy, outcomes in results.items():
        window = {"oracle": "labels at once", "fnw0": "0 (FNW)", "fnw-p50": "p50 (FNW)"}.get(policy, f"{policy} (drop)")
        print(f"| {policy} | {window} | {_mean_std([o.auc for o in outcomes], 4)} | "
              f"{_mean_std([o.logloss for o in outcomes], 4)} | {_mean_std([o.latency_s for o in outcomes], 0)} s |")


def _mean_std(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


if __name__ == "__main__":
    main()
