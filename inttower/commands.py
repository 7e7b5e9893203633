"""What each CLI command does, wired from the packages; no model or stream logic here."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from inttower.config import AppConfig
from stream.clicklog import write_click_log
from stream.movielens import import_movielens
from stream.synthetic import generate_synthetic_log


def import_movielens_log(path: Path, out: Path, config: AppConfig) -> None:
    started = time.perf_counter()
    table = import_movielens(path, config.data.movielens)
    write_click_log(table, out)
    positives = sum(table.column("label").to_pylist())
    print(
        f"wrote {out}: {table.num_rows} events, {positives / max(table.num_rows, 1):.1%} positive, "
        f"{time.perf_counter() - started:.1f} s"
    )


def write_synthetic_log(out: Path, config: AppConfig, events: int | None = None, seed: int | None = None) -> None:
    started = time.perf_counter()
    options = config.data.synthetic
    overrides = {k: v for k, v in {"events": events, "seed": seed}.items() if v is not None}
    table = generate_synthetic_log(dataclasses.replace(options, **overrides))
    write_click_log(table, out)
    print(f"wrote {out}: {table.num_rows} events, {time.perf_counter() - started:.1f} s")
