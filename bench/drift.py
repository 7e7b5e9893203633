"""How fast the drift detector sees the synthetic stream's preference shift, and how often it cries wolf.

    python -m bench.drift [--events 200000] [--seeds 3]

The synthetic log (a preference shift at 60% of the stream, and the same stream with no
shift) is trained prequentially by IntTower as the daemon does (batches of 512); the
prequential log loss feeds the configured detector. Printed: the event index of each
detection, the delay from the shift to the first detection after it, and the false
alarms (detections before the shift, and any on the unshifted stream).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from inttower.config import default_config
from model.build import build_model
from model.features import FeatureEncoder
from model.online import OnlineTrainer
from monitoring.drift import LoglossDriftDetector
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

BATCH = 512


def detections(events: int, seed: int, shift_at: float) -> list[int]:
    config = default_config()
    m = config.monitoring
    table = generate_synthetic_log(dataclasses.replace(SyntheticLogConfig(), events=events, seed=seed, shift_at=shift_at))
    torch.manual_seed(seed)
    trainer = OnlineTrainer(build_model(config.model), config.train, config.online)
    encoder = FeatureEncoder(config.model.features)
    detector = LoglossDriftDetector(m.drift_block_events, m.drift_threshold, m.drift_delta, m.drift_min_blocks)
    found = []
    for start in range(0, table.num_rows, BATCH):
        result = trainer.step(encoder.encode(table.slice(start, BATCH)))
        if detector.update(result.labels, result.probabilities):
            found.append(start + BATCH)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    shift_at = SyntheticLogConfig().shift_at
    shift = int(args.events * shift_at)
    m = default_config().monitoring
    print(f"Page-Hinkley on the mean logloss of {m.drift_block_events}-event blocks (threshold {m.drift_threshold}, "
          f"delta {m.drift_delta}); shift at event {shift:,} of {args.events:,}")
    print("\n| seed | detections with the shift (event index) | delay after the shift | false alarms before it | detections without the shift |")
    print("|---|---|---|---|---|")
    for seed in range(args.seeds):
        shifted = detections(args.events, seed, shift_at)
        plain = detections(args.events, seed, 1.0)
        after = [d for d in shifted if d >= shift]
        delay = f"{after[0] - shift:,} events" if after else "not detected"
        print(f"| {seed} | {', '.join(f'{d:,}' for d in shifted) or '-'} | {delay} | {sum(d < shift for d in shifted)} | "
              f"{len(plain)} ({', '.join(f'{d:,}' for d in plain) or '-'}) |", flush=True)


if __name__ == "__main__":
    main()
