"""Does continuing a batch-fitted model online beat the batch model? ML-100K and the synthetic stream.

    python -m bench.online_vs_batch [--seeds 3] [--data PATH] [--datasets movielens,synthetic]
                                    [--models inttower,two_tower] [--batch 256] [--synthetic-events 100000]
                                    [--max-epochs N]

What users do without this project is fit a model on the log so far and serve it frozen,
perhaps re-fitting now and then. This bench puts that next to online training on the
same data. Both logs are in event-time order (ML-100K: `configs/movielens.toml`, its
features, [train] and [online]; synthetic: `SyntheticLogConfig(events, seed=0)` with
its default preference shift at 60% of the stream, `ModelConfig()` features,
`TrainConfig()` and `OnlineConfig()`). Every arm is scored on the same window E, the
latest 20% of events by time (rows [s, n), s = n - round(0.2 n)), with AUC and logloss
over exactly those rows:

- A, frozen batch: a fresh seeded model fitted on rows [0, s) (`model.offline.fit`,
  early stopping on the latest [train] validation_fraction of them, as
  `model.experiment.split_rows(n, "time", ...)` splits), E scored in one go.
- B, batch then online: A's fitted model (a deep copy) in an `OnlineTrainer` that
  `continue_from`s the fit (its Adam moments and step count), then test-then-train over
  E in stream batches of ``--batch`` events: each batch is scored before the model
  trains on it (the prequential score).
- B0, as before the fix (ablation): A's fitted model in a fresh `OnlineTrainer` with
  ``scale_to_batch = "off"`` and no `continue_from` (fresh Adam, data-dependent
  output-bias start on its first step, the full step size per small batch).
- C, online only: a fresh seeded model trained test-then-train over all rows [0, n);
  only its predictions of E count.
- D, periodic batch retraining: a fresh seeded model re-fitted from scratch on every
  event so far at s, s + 0.05 n, s + 0.10 n and s + 0.15 n (4 fits; the one at s is
  A's), each serving frozen predictions until the next fit.

Training cost per arm, measured in the same run: events trained (a fit counts its
training rows times the epochs it ran, early-stopped epochs included; an online pass
counts the events it stepped on; B and B0 include A's fit) and wall seconds of
training (fits; online steps including their scoring). The acceptance line per model:
B - A >= +0.005 AUC with B's logloss below A's, B >= D, and for IntTower
|C - A| <= 0.005 or C >= A (means over seeds; the ± are std over seeds of the paired
per-seed differences).

Cost, measured on 2 shared CPU cores: ML-100K, one model and one seed, 1,011 s for
IntTower and 1,701 s for Two-Tower (a busy machine), most of it D's four fits
(`configs/movielens.toml` allows 20 epochs). The full default run (2 data sets x 2 models
x 3 seeds) takes hours on such a machine: split it with ``--datasets``, ``--models`` and
``--seeds``, or lower ``--max-epochs``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from bench.logs import BENCH_LOGS, EncodedLog, encode_bench_log, load_bench_log, names_from
from model.build import build_model
from model.config import ModelConfig, TrainConfig
from model.device import resolve_device
from model.experiment import split_rows
from model.features import FeatureBatch
from model.offline import FitResult, fit, predict
from model.online import OnlineTrainer
from monitoring.quality import log_loss, roc_auc
from stream.synthetic import SyntheticLogConfig

DATASETS = BENCH_LOGS
MODELS = ("inttower", "two_tower")
ARMS = {
    "A": "frozen batch",
    "B": "batch then online",
    "B0": "batch then online, before the fix",
    "C": "online only",
    "D": "periodic batch retraining",
}
TEST_FRACTION = 0.2
RETRAIN_EVERY = 0.05  # D re-fits each time another 5% of the stream has passed...
RETRAIN_FITS = 4  # ...at s, s + 0.05 n, s + 0.10 n, s + 0.15 n
MIN_GAIN = 0.005  # B - A must reach this AUC; |C - A| may fall short by at most this


@dataclass(frozen=True)
class ArmResult:
    auc: float
    logloss: float
    events_trained: int
    seconds: float


def _load(name: str, args: argparse.Namespace) -> EncodedLog:
    synthetic = SyntheticLogConfig(events=args.synthetic_events, seed=0)
    log = load_bench_log(name, args.data, synthetic)
    table, train = log.table, log.train
    where = f"preferences shift at event {synthetic.shift_event}" if name == "synthetic" else "in time order"
    print(f"{name}: {table.num_rows} events ({where})", flush=True)
    if args.max_epochs is not None:
        train = dataclasses.replace(train, max_epochs=args.max_epochs)
    return encode_bench_log(log, train)


def _fit(model_config: ModelConfig, train: TrainConfig, data: FeatureBatch, rows: int,
         device: torch.device) -> tuple[torch.nn.Module, FitResult, int, float]:
    """A fresh seeded model fitted on rows [0, rows): early stopping on the latest of them."""
    split = split_rows(rows, "time", 0.0, train.validation_fraction, train.seed)
    torch.manual_seed(train.seed)
    model = build_model(model_config).to(device)
    started = time.perf_counter()
    result = fit(model, data.select(split.train), data.select(split.validation), train, progress=False)
    return model, result, len(split.train) * result.epochs_run, time.perf_counter() - started


def _prequential(trainer: OnlineTrainer, data: FeatureBatch, start: int, stop: int, batch: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Test-then-train over rows [start, stop) in time order: (labels, predictions, seconds)."""
    labels, probabilities, seconds = [], [], 0.0
    for first in range(start, stop, batch):
        result = trainer.step(data.select(slice(first, min(first + batch, stop))))
        labels.append(result.labels)
        probabilities.append(result.probabilities)
        seconds += result.seconds
    return np.concatenate(labels), np.concatenate(probabilities), seconds


def _score(y: np.ndarray, p: np.ndarray, events: int, seconds: float) -> ArmResult:
    return ArmResult(roc_auc(y, p), log_loss(y, p), events, seconds)


def _run_seed(ds: EncodedLog, kind: str, seed: int, batch: int, device: torch.device) -> dict[str, ArmResult]:
    data, n = ds.data, len(ds.data)
    model_config = dataclasses.replace(ds.model, kind=kind)
    train = dataclasses.replace(ds.train, seed=seed)
    s = n - int(round(n * TEST_FRACTION))
    window = data.select(slice(s, n))
    y = window.labels.numpy()
    tag = f"[{ds.name} {kind} seed {seed}]"
    out: dict[str, ArmResult] = {}

    def report(arm: str, extra: str = "") -> None:
        r = out[arm]
        print(f"  {tag} {arm} ({ARMS[arm]}): AUC {r.auc:.4f} logloss {r.logloss:.4f} over {len(y)} events; "
              f"trained {r.events_trained:,} events in {r.seconds:.0f} s{extra}", flush=True)

    # A: fit on [0, s), frozen.
    model, fitted, fit_events, fit_seconds = _fit(model_config, train, data, s, device)
    model_b, model_b0 = copy.deepcopy(model), copy.deepcopy(model)
    p_a = predict(model, window)
    out["A"] = _score(y, p_a, fit_events, fit_seconds)
    report("A", f" (best epoch {fitted.best_epoch} of {fitted.epochs_run})")

    # B: the same fit continued online with its optimizer state.
    trainer = OnlineTrainer(model_b, train, ds.online)
    trainer.continue_from(copy.deepcopy(fitted))
    yb, pb, seconds = _prequential(trainer, data, s, n, batch)
    out["B"] = _score(yb, pb, fit_events + trainer.events_trained - fitted.events_trained, fit_seconds + seconds)
    report("B", f" (online part: {seconds:.0f} s)")

    # B0: the same fit in a fresh trainer, as before the fix.
    trainer = OnlineTrainer(model_b0, train, dataclasses.replace(ds.online, scale_to_batch="off"))
    yb, pb, seconds = _prequential(trainer, data, s, n, batch)
    out["B0"] = _score(yb, pb, fit_events + trainer.events_trained, fit_seconds + seconds)
    report("B0", f" (online part: {seconds:.0f} s)")

    # C: online only, over the whole stream; E's predictions count.
    torch.manual_seed(seed)
    trainer = OnlineTrainer(build_model(model_config).to(device), train, ds.online)
    yc, pc, seconds = _prequential(trainer, data, 0, n, batch)
    out["C"] = _score(yc[s:], pc[s:], trainer.events_trained, seconds)
    report("C")

    # D: re-fit from scratch every 5% of the stream; the fit at s is A's.
    cuts = [s + int(round(k * RETRAIN_EVERY * n)) for k in range(RETRAIN_FITS)] + [n]
    p_d = [p_a[: cuts[1] - s]]
    events, seconds = fit_events, fit_seconds
    for t, t_next in zip(cuts[1:-1], cuts[2:]):
        model, refit, refit_events, refit_seconds = _fit(model_config, train, data, t, device)
        p_d.append(predict(model, data.select(slice(t, t_next))))
        events, seconds = events + refit_events, seconds + refit_seconds
        print(f"  {tag} D re-fit on [0, {t}): best epoch {refit.best_epoch} of {refit.epochs_run}, "
              f"{refit_seconds:.0f} s; serves [{t}, {t_next})", flush=True)
    out["D"] = _score(y, np.concatenate(p_d), events, seconds)
    report("D", f" ({RETRAIN_FITS} fits)")
    return out


def _fmt(values: list[float], digits: int = 4, sign: bool = False) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{'+' if sign else ''}.{digits}f} ± {sd:.{digits}f}"


def _print_table(ds: EncodedLog, models: list[str], runs: dict[str, list[dict[str, ArmResult]]], batch: int) -> None:
    n = len(ds.data)
    s = n - int(round(n * TEST_FRACTION))
    seeds = len(next(iter(runs.values())))
    print(f"\n### {ds.name}: {n} events, evaluation window E = rows [{s}, {n}) ({n - s} events); "
          f"stream batches of {batch}; {seeds} seed(s), mean ± std over seeds")
    print("| model | arm | AUC | logloss | events trained | train wall s |")
    print("|---|---|---|---|---|---|")
    for kind in models:
        for arm, label in ARMS.items():
            rs = [r[arm] for r in runs[kind]]
            print(f"| {kind} | {arm}: {label} | {_fmt([r.auc for r in rs])} | {_fmt([r.logloss for r in rs])} | "
                  f"{statistics.fmean(r.events_trained for r in rs):,.0f} | {statistics.fmean(r.seconds for r in rs):.0f} |")
    print("(events trained: fits count training rows x epochs run; B and B0 include A's fit, D its 4 fits)")
    for kind in models:
        rs = runs[kind]

        def diff(a: str, b: str, metric: str) -> list[float]:
            return [getattr(r[a], metric) - getattr(r[b], metric) for r in rs]

        mean = {arm: {m: statistics.fmean(getattr(r[arm], m) for r in rs) for m in ("auc", "logloss")} for arm in ARMS}
        b_vs_a = mean["B"]["auc"] - mean["A"]["auc"] >= MIN_GAIN and mean["B"]["logloss"] < mean["A"]["logloss"]
        b_vs_d = mean["B"]["auc"] >= mean["D"]["auc"]
        c_gap = mean["C"]["auc"] - mean["A"]["auc"]
        c_vs_a = abs(c_gap) <= MIN_GAIN or c_gap >= 0
        checks = [f"B-A >= +{MIN_GAIN} with lower logloss: {'yes' if b_vs_a else 'NO'}", f"B >= D: {'yes' if b_vs_d else 'NO'}"]
        checks.append(f"|C-A| <= {MIN_GAIN} or C >= A: {'yes' if c_vs_a else 'NO'}" + ("" if kind == "inttower" else " (not required)"))
        required = b_vs_a and b_vs_d and (c_vs_a or kind != "inttower")
        print(f"- {kind}: AUC B-A {_fmt(diff('B', 'A', 'auc'), sign=True)}, B-D {_fmt(diff('B', 'D', 'auc'), sign=True)}, "
              f"C-A {_fmt(diff('C', 'A', 'auc'), sign=True)}, B0-A {_fmt(diff('B0', 'A', 'auc'), sign=True)}; "
              f"logloss B-A {_fmt(diff('B', 'A', 'logloss'), sign=True)}, B-D {_fmt(diff('B', 'D', 'logloss'), sign=True)}, "
              f"C-A {_fmt(diff('C', 'A', 'logloss'), sign=True)}. "
              f"Acceptance {'HOLDS' if required else 'FAILS'}: {'; '.join(checks)}")
    print(flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="ML-100K folder (default: $INTTOWER_DATA/ml-100k or the download cache)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="stream batch (events per online step)")
    parser.add_argument("--synthetic-events", type=int, default=100_000)
    parser.add_argument("--max-epochs", type=int, default=None, help="override [train] max_epochs (default: the config's)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    datasets, models = names_from(parser, args.datasets, DATASETS, "data set"), names_from(parser, args.models, MODELS, "model")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tables = []
    for name in datasets:
        ds = _load(name, args)
        device = resolve_device(ds.train.device)
        print(f"{name}: max_epochs {ds.train.max_epochs}, fit batch {ds.train.batch_size}, device {device}", flush=True)
        runs: dict[str, list[dict[str, ArmResult]]] = {kind: [] for kind in models}
        for kind in models:
            for seed in range(args.seeds):
                runs[kind].append(_run_seed(ds, kind, seed, args.batch, device))
        _print_table(ds, models, runs, args.batch)
        tables.append(ds.name)
    print(f"done: {', '.join(tables)} in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
