"""CS3 ablation: each add-on alone and all three, on Two-Tower and IntTower, offline and online.

    python -m bench.cs3_ablation                        # ML-100K and the synthetic stream, 3 seeds
    python -m bench.cs3_ablation --data ml100k --modes offline --seeds 1   # a subset

For every data set (ML-100K from $INTTOWER_DATA or the download cache; the synthetic stream with its planted
preferences and mid-stream shift) and every mode:
- offline: the paper's seeded random 80/20 split, Adam with early stopping on
  validation AUC (as `bench.reproduce_paper`), test AUC / logloss; train events/s is
  training rows / seconds per epoch;
- online: one prequential pass in event-time order (each batch scored in eval mode,
  then one optimizer step, as the daemon does — in process, without Kafka, which
  `bench.stream_throughput` measures separately); AUC / logloss over every prediction;
  train events/s counts scoring + step.
The per-run events/s depend on what else the machine ran at the time, so two ratios to
plain Two-Tower are measured side by side in interleaved rounds in this process: train
speed (prequential steps of 256 events on the same batches) and user-side serving
latency (encode one user and score it against 1,000 pre-encoded items). Results are appended to a JSON-lines file as they
come (``--out``), and a rerun skips what is already there (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from inttower.config import AppConfig, load_config
from model.build import build_model
from model.config import CS3Config, ModelConfig, OnlineConfig, TrainConfig
from model.experiment import split_rows, train_and_test
from model.features import FeatureBatch, FeatureEncoder
from model.online import OnlineTrainer
from monitoring.quality import log_loss, rela_impr, roc_auc
from stream.datasets import require_movielens
from stream.movielens import import_movielens
from stream.synthetic import generate_synthetic_log

REPO = Path(__file__).resolve().parents[1]
DATA_CONFIGS = {"ml100k": REPO / "configs" / "movielens.toml", "synthetic": REPO / "configs" / "synthetic.toml"}
ADDONS: dict[str, CS3Config] = {
    "plain": CS3Config(),
    "+cycle": CS3Config(cycle_adaptive=True),
    "+sync": CS3Config(cross_tower_sync=True),
    "+cascade": CS3Config(cascade_sharing=True),
    "+all": CS3Config(cycle_adaptive=True, cross_tower_sync=True, cascade_sharing=True),
}
BACKBONES = {"two_tower": "Two-Tower", "inttower": "IntTower"}
OFFLINE_BATCH = 512  # small data sets: 2048 gives too few steps an epoch (see bench.reproduce_paper)
ONLINE_BATCH = 256  # one pass: smaller batches, more steps
LATENCY_ITEMS = 1_000
LATENCY_ROUNDS = 30
LATENCY_REPEATS = 20
SPEED_STEPS = 5
SPEED_ROUNDS = 5


def _load(data: str, synthetic_events: int) -> tuple[AppConfig, FeatureBatch]:
    config = load_config(DATA_CONFIGS[data])
    if data == "ml100k":
        table = import_movielens(require_movielens("ml-100k"), config.data.movielens)
    else:
        table = generate_synthetic_log(dataclasses.replace(config.data.synthetic, events=synthetic_events))
    return config, FeatureEncoder(config.model.features).encode(table)  # both in event-time order


def _offline(model: ModelConfig, train: TrainConfig, data: FeatureBatch, seed: int) -> dict:
    indices = split_rows(len(data), "random", 0.2, train.validation_fraction, seed)
    run = train_and_test(model, dataclasses.replace(train, seed=seed, batch_size=OFFLINE_BATCH), data, indices)
    return {"auc": run.test.auc, "logloss": run.test.logloss, "events_per_s": len(indices.train) / run.fit.seconds_per_epoch,
            "best_epoch": run.fit.best_epoch}


def _online(model: ModelConfig, train: TrainConfig, online: OnlineConfig, data: FeatureBatch, seed: int) -> dict:
    torch.manual_seed(seed)
    trainer = OnlineTrainer(build_model(model), dataclasses.replace(train, seed=seed), online)
    labels, probabilities, seconds = [], [], 0.0
    for start in range(0, len(data), ONLINE_BATCH):
        result = trainer.step(data.select(slice(start, start + ONLINE_BATCH)))
        labels.append(result.labels)
        probabilities.append(result.probabilities)
        seconds += result.seconds
    y, p = np.concatenate(labels), np.concatenate(probabilities)
    return {"auc": roc_auc(y, p), "logloss": log_loss(y, p), "events_per_s": len(data) / seconds}


@torch.no_grad()
def _latency_ratios(model_configs: dict[str, ModelConfig], data: FeatureBatch) -> dict[str, float]:
    """Median seconds to encode one user and score it against pre-encoded items, / plain Two-Tower's."""
    models = {name: build_model(config).eval() for name, config in model_configs.items()}
    items = {name: m.encode_items(data.item.select(slice(0, LATENCY_ITEMS))) for name, m in models.items()}
    users = [data.user.select(slice(i, i + 1)) for i in range(LATENCY_REPEATS)]

    def serve(name: str) -> None:
        model = models[name]
        for user in users:
            model.score(model.encode_user(user), items[name])

    return _interleaved_ratios(list(models), serve, LATENCY_ROUNDS)


def _train_speed_ratios(model_configs: dict[str, ModelConfig], train: TrainConfig, online: OnlineConfig,
                        data: FeatureBatch) -> dict[str, float]:
    """Events/s of prequential steps (score + train, batch ONLINE_BATCH), / plain Two-Tower's.

    Measured side by side in interleaved rounds on the same batches, so the ratio holds
    whatever else the machine is doing; the per-run events/s in the JSON lines do not.
    """
    batches = [data.select(slice(i * ONLINE_BATCH, (i + 1) * ONLINE_BATCH)) for i in range(SPEED_STEPS)]
    trainers = {}
    for name, config in model_configs.items():
        torch.manual_seed(0)
        trainers[name] = OnlineTrainer(build_model(config), train, online)
        trainers[name].step(batches[0])  # warm-up: first-step bias start, allocator

    def steps(name: str) -> None:
        for batch in batches:
            trainers[name].step(batch)

    return {name: 1.0 / ratio for name, ratio in _interleaved_ratios(list(trainers), steps, SPEED_ROUNDS).items()}


def _interleaved_ratios(names: list[str], run, rounds: int) -> dict[str, float]:
    """Median seconds of ``run(name)`` per name over interleaved rounds, / plain Two-Tower's."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):  # interleaved, so drift in machine load hits every model alike
        for name in names:
            started = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["Two-Tower plain"])
    return {name: statistics.median(t) / base for name, t in times.items()}


def _key(data: str, mode: str, name: str, seed: int) -> str:
    return f"{data}|{mode}|{name}|{seed}"


def _fmt(values: list[float], digits: int = 4) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def _print_table(rows: dict[str, dict], datas: list[str], modes: list[str], names: list[str], seeds: int,
                 latency: dict[str, dict[str, float]], speed: dict[str, dict[str, float]]) -> None:
    print(f"\n### CS3 ablation ({seeds} seeds: mean ± std over seeds; RelaImpr over plain Two-Tower of the same data and mode)")
    print("train events/s: mean over the runs (machine load varied between runs); train speed and user-side latency:")
    print("ratios to plain Two-Tower measured side by side in interleaved rounds (see the module docstring).")
    print("| data | mode | model | AUC | logloss | RelaImpr | train events/s | train speed ratio | user-side latency ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for data in datas:
        for mode in modes:
            runs = {n: [rows[k] for s in range(seeds) if (k := _key(data, mode, n, s)) in rows] for n in names}
            base = runs.get("Two-Tower plain") or []
            base_auc = statistics.fmean(r["auc"] for r in base) if base else None
            for name in names:
                if not runs[name]:
                    continue
                aucs = [r["auc"] for r in runs[name]]
                impr = f"{rela_impr(statistics.fmean(aucs), base_auc):+.2f}%" if base_auc else "n/a"
                ratio, fast = latency.get(data, {}).get(name), speed.get(data, {}).get(name)
                print(f"| {data} | {mode} | {name} | {_fmt(aucs)} | {_fmt([r['logloss'] for r in runs[name]])} | {impr} | "
                      f"{statistics.fmean(r['events_per_s'] for r in runs[name]):,.0f} | "
                      f"{'n/a' if fast is None else f'{fast:.2f}'} | {'n/a' if ratio is None else f'{ratio:.2f}'} |")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="ml100k,synthetic", help="comma-separated: ml100k, synthetic")
    parser.add_argument("--modes", default="offline,online", help="comma-separated: offline, online")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--synthetic-events", type=int, default=100_000)
    parser.add_argument("--max-epochs", type=int, default=None, help="override [train] max_epochs")
    parser.add_argument("--backbones", default="two_tower,inttower")
    parser.add_argument("--addons", default=",".join(ADDONS), help="comma-separated: " + ", ".join(ADDONS))
    parser.add_argument("--out", default=str(REPO / "runs" / "cs3_ablation.jsonl"))
    parser.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    datas, modes = args.data.split(","), args.modes.split(",")
    variants = {"Two-Tower plain": ("two_tower", ADDONS["plain"])}  # the RelaImpr and latency base, always run
    variants.update({f"{BACKBONES[b]} {a}": (b, ADDONS[a]) for b in args.backbones.split(",") for a in args.addons.split(",")})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh and out.exists():
        out.unlink()
    rows = {}
    if out.exists():
        for line in out.read_text().splitlines():
            record = json.loads(line)
            rows[record["key"]] = record
    started = time.perf_counter()
    latency: dict[str, dict[str, float]] = {}
    speed: dict[str, dict[str, float]] = {}
    for data in datas:
        config, encoded = _load(data, args.synthetic_events)
        train = config.train if args.max_epochs is None else dataclasses.replace(config.train, max_epochs=args.max_epochs)
        configs = {name: dataclasses.replace(config.model, kind=kind, cs3=cs3) for name, (kind, cs3) in variants.items()}
        print(f"{data}: {len(encoded)} events, {float(encoded.labels.mean()):.1%} positive; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; offline batch {OFFLINE_BATCH} (max {train.max_epochs} epochs, "
              f"patience {train.patience}), online batch {ONLINE_BATCH}", flush=True)
        latency[data] = _latency_ratios(configs, encoded)
        speed[data] = _train_speed_ratios(configs, train, config.online, encoded)
        for mode in modes:
            for seed in range(args.seeds):
                for name, model in configs.items():
                    key = _key(data, mode, name, seed)
                    if key in rows:
                        continue
                    t0 = time.perf_counter()
                    result = _offline(model, train, encoded, seed) if mode == "offline" else _online(model, train, config.online, encoded, seed)
                    rows[key] = {"key": key, **result}
                    with out.open("a") as f:
                        f.write(json.dumps(rows[key]) + "\n")
                    print(f"  [{data} {mode} seed {seed}] {name}: AUC {result['auc']:.4f} logloss {result['logloss']:.4f} "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    _print_table(rows, datas, modes, list(variants), args.seeds, latency, speed)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
