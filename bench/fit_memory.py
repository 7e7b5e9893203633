"""Peak memory of `inttower fit` against the size of the history it reads.

    python -m bench.fit_memory [--sizes 1000000,3000000,10000000] [--model lr] [--epochs 1]

For each size, a synthetic history is written as a directory of 1M-event Parquet files
(a partitioned log, in event-time order), then ``inttower fit`` runs on it in a child
process and the child's peak resident memory is read from the kernel (``wait4``'s
``ru_maxrss``). `inttower fit` reads the log in chunks of ``[train] fit_chunk_events``
and keeps at most ``[train] max_validation_events`` validation events, so its peak
should stay flat as the log grows; the table also shows what the log takes as one Arrow
table in memory, which a fit that loaded it whole would need on top. The default model
is the logistic regression: the bench measures the data path, and the towers' weights
and step time do not depend on the log's size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stream.clicklog import write_click_log
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

REPO = Path(__file__).resolve().parents[1]
PART_EVENTS = 1_000_000


def write_history(folder: Path, events: int) -> int:
    """``events`` synthetic events as files of PART_EVENTS, in time order; the bytes of one part as Arrow."""
    folder.mkdir(parents=True, exist_ok=True)
    arrow_bytes = 0
    defaults = SyntheticLogConfig()
    for part, start in enumerate(range(0, events, PART_EVENTS)):
        size = min(PART_EVENTS, events - start)
        span_ms = int(PART_EVENTS / defaults.events_per_second * 1000)
        table = generate_synthetic_log(SyntheticLogConfig(events=size, seed=part, start_ts_ms=defaults.start_ts_ms + part * span_ms))
        write_click_log(table, folder / f"part-{part:05d}.parquet")
        arrow_bytes += table.nbytes
    return arrow_bytes


def peak_rss_of(command: list[str]) -> tuple[int, float, str]:
    """(peak RSS in bytes, seconds, output) of a child process."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{text}")
    return usage.ru_maxrss * 1024, time.perf_counter() - started, text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,3000000,10000000", help="history sizes in events, comma-separated")
    parser.add_argument("--model", default="lr", choices=("lr", "two_tower", "inttower"))
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "fit.toml"
        config.write_text(f'[model]\nkind = "{args.model}"\n[train]\nmax_epochs = {args.epochs}\n')
        for size in sizes:
            folder = Path(tmp) / f"history-{size}"
            arrow_bytes = write_history(folder, size)
            on_disk = sum(p.stat().st_size for p in folder.iterdir())
            peak, seconds, _ = peak_rss_of([sys.executable, "-m", "inttower.cli", "fit", str(folder), "--config", str(config),
                                            "--out", str(Path(tmp) / f"fit-{size}")])
            rows.append((size, on_disk, arrow_bytes, peak, seconds))
            print(f"{size:,} events: peak RSS {peak / 2**20:,.0f} MiB, {seconds:.0f} s", flush=True)
    print(f"\n`inttower fit` ({args.model}, {args.epochs} epoch(s)) on a directory of {PART_EVENTS:,}-event Parquet files")
    print("| events | Parquet on disk | the log as one Arrow table | fit peak RSS | seconds |")
    print("|---|---|---|---|---|")
    for size, on_disk, arrow_bytes, peak, seconds in rows:
        print(f"| {size:,} | {on_disk / 2**20:,.0f} MiB | {arrow_bytes / 2**20:,.0f} MiB | {peak / 2**20:,.0f} MiB | {seconds:.0f} |")
    if len(rows) > 1:
        print(f"peak RSS ratio, largest / smallest history: {rows[-1][3] / rows[0][3]:.2f} "
              f"(history {rows[-1][0] / rows[0][0]:.0f}x larger)")


if __name__ == "__main__":
    main()
