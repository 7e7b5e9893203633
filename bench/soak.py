"""Soak: does the training daemon's memory stay flat over millions of events?

    python -m bench.soak [--preset quick|standard|long|day] [--events 20M] [--sample-s 10] [--out runs/soak]

Starts the embedded broker and a topic, runs ``inttower train`` as a separate process
with checkpoints, index syncs (bounded catalogue) and metrics on, and replays an
endless-looking synthetic stream into it as Arrow messages: generated chunk by chunk
(this process never holds the whole stream) with new users *and* new items arriving for
the whole run, produced at most ``--max-ahead-events`` ahead of what the daemon trained.

Every ``--sample-s`` seconds it reads the daemon's resident memory (VmRSS from
/proc/PID/status) and the events trained (the daemon's status line, written every
second), and prints a row. At the end it fits a line to RSS against events trained over
the samples after warm-up (events >= ``--warmup-fraction`` of the total: start-up,
allocator growth, the catalogue filling up to ``max_items`` and the first full index
refresh all happen early) and prints the slope in MiB per million events, the growth
after warm-up and a verdict: flat when |slope| < ``--flat-mib-per-m``.

Writes ``soak.json`` (settings, series, fit), ``soak.png`` and ``daemon.log`` to
``--out``; ``--refit runs/soak/soak.json --warmup-fraction 0.35`` refits a saved run
without running anything (where the heap settles is only known afterwards). The
daemon's checkpoints and index versions go to a temp directory removed at the end. The broker keeps the topic in memory (Tansu here is memory-only), so its RSS
grows with the events produced: it is sampled and reported too, but not judged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import t as t_dist

from stream.broker import EmbeddedBroker, create_topic
from stream.config import StreamConfig
from stream.delays import CLICK_TS_COLUMN, DelayConfig, add_click_times
from stream.feedback_replay import replay_feedback
from stream.replay import replay
from stream.synthetic import SyntheticLogConfig, iter_synthetic_log

REPO = Path(__file__).resolve().parents[1]
TOPIC = "soak-clicks"
DEAD_LETTERS = f"{TOPIC}.dead-letter"
KIB_PER_MIB = 1024
STOP_TIMEOUT_S = 120.0  # SIGTERM -> final checkpoint -> exit; then SIGKILL
POLL_S = 0.2  # how often the main loop checks for the end between samples
LOG_TAIL_LINES = 40
TRACED_REPORT_MIN_S = 300.0  # memory reports under tracemalloc: each snapshot stalls the daemon for seconds

# The daemon's log lines this bench reads (inttower/daemon.py, inttower/cli.py).
STATUS_RE = re.compile(r"\bevents (\d+) \(\d+/s\)\s+lag (-?\d+)")
INDEX_RE = re.compile(r"\bindex v(\d+) \((\d+) items")
CHECKPOINT_RE = re.compile(r"\bcheckpoint \S+ at (\d+) events")
STOPPED_RE = re.compile(r"^stopped after (\d+) events")
# inttower/daemon.py's memory report (monitoring/memory.py `MemoryReading.line`).
MEMORY_RE = re.compile(
    r"memory at (?P<events>\d+) events: rss (?P<rss>[\d.]+) MiB(?: \(anon (?P<anon>[\d.]+)\))?"
    r"(?:, malloc(?: \((?P<allocator>\w+)\))? in use (?P<in_use>[\d.]+) / free (?P<free>[\d.]+) / arenas (?P<arenas>[\d.]+) MiB)?"
    r", arrow \((?P<arrow_backend>\w+)\) (?P<arrow>[\d.]+) MiB(?:, python blocks (?P<blocks>[\d,]+))?"
    r"(?:, python traced (?P<traced>[\d.]+) MiB)?(?:; trimmed [\d.]+ MiB in \d+ trims(?: \([\d.]+ s\))?)?"
    r"; sizes: (?P<sizes>.*)$")
#: The layers of a memory report, as (MEMORY_RE group, label); all in MiB but the block count.
MEMORY_LAYERS = (("rss", "RSS"), ("anon", "RSS anonymous"), ("in_use", "malloc in use"), ("free", "malloc free"),
                 ("arenas", "malloc arenas"), ("arrow", "Arrow pool"), ("traced", "Python traced"), ("blocks", "Python blocks"))
COUNT_LAYERS = frozenset({"blocks"})
#: `Sample` fields saved as null when NaN (a process already gone when sampled).
NAN_FIELDS = frozenset({"rss_mib", "broker_rss_mib"})


@dataclass(frozen=True)
class SoakSettings:
    """One soak run; the defaults are the 10M-event run."""

    events: int = 10_000_000
    sample_s: float = 10.0
    out: Path = Path("runs/soak")
    partitions: int = 4
    batch_events: int = 2048  # events per Arrow message and per training batch
    chunk_events: int = 100_000  # events generated and produced at a time
    max_ahead_events: int = 1_000_000  # produced minus trained, at most (bounds broker memory per unit time)
    seed: int = 0
    users: int = 5_000
    initial_items: int = 2_000
    new_users_per_10k: int = 100
    new_items_per_10k: int = 100
    max_items: int = 10_000  # catalogue bound: reached early, then items are evicted
    checkpoint_every_s: float = 30.0
    sync_interval_s: float = 5.0
    full_refresh_interval_s: float = 60.0
    status_every_s: float = 1.0
    warmup_fraction: float = 0.2
    flat_mib_per_m: float = 2.0
    stall_s: float = 300.0  # give up when trained events stop moving for this long
    memory_report_s: float = 30.0  # [daemon] memory_report_every_s: where memory is, by layer
    tracemalloc: bool = False  # run the daemon under PYTHONTRACEMALLOC=1: Python growth by source line (slower)
    daemon_env: tuple[str, ...] = ()  # KEY=VALUE for the daemon's environment (MALLOC_ARENA_MAX=2, LD_PRELOAD=...)
    daemon_settings: tuple[str, ...] = ()  # extra TOML lines for the daemon's [daemon] table
    plot: bool = True
    # Joined feedback: impressions and later clicks (JSON) instead of labelled events, a
    # label window longer than the run, so the join state fills to max_pending and stays there.
    feedback: bool = False
    feedback_window_s: float = 86_400.0
    max_pending: int = 200_000

    @property
    def trained_target(self) -> int:
        """Events the daemon trains: all of them; joined, all but the max_pending still held at the end."""
        return self.events - self.max_pending if self.feedback else self.events


@dataclass
class Sample:
    elapsed_s: float
    events: int  # trained, from the daemon's last status line
    produced: int  # acknowledged by the broker (whole chunks)
    lag: int | None  # the daemon's consumer lag in Kafka messages (Arrow: up to batch_events events each)
    rss_mib: float  # daemon VmRSS
    broker_rss_mib: float
    index_version: int | None
    index_items: int | None


@dataclass(frozen=True)
class Slope:
    """A least-squares slope with a 95% confidence interval that allows for autocorrelation.

    Memory samples are a time series: consecutive residuals are correlated, so the plain
    OLS interval would be too narrow. The standard error is widened by the lag-1
    autocorrelation of the residuals (effective sample size n (1 - r) / (1 + r)), and
    the interval uses Student's t with n_eff - 2 degrees of freedom.
    """

    slope: float
    low: float
    high: float
    points: int
    effective_points: float

    def text(self, unit: str = "MiB per 1M events") -> str:
        return f"{self.slope:+.2f} {unit} (95% CI {self.low:+.2f} .. {self.high:+.2f}; n {self.points}, n_eff {self.effective_points:.0f})"


def fit_slope(x: np.ndarray, y: np.ndarray) -> Slope | None:
    """``y`` against ``x`` (None with fewer than 3 points or one distinct x)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = x.size
    if n < 3 or np.unique(x).size < 2:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (slope * x + intercept)
    sxx = float(np.sum((x - x.mean()) ** 2))
    r1 = 0.0
    if n > 3 and float(np.dot(residuals, residuals)) > 0:
        r1 = float(np.dot(residuals[1:], residuals[:-1]) / np.dot(residuals, residuals))
    r1 = min(max(r1, 0.0), 0.99)  # negative autocorrelation would narrow the interval: ignore it
    n_eff = max(n * (1 - r1) / (1 + r1), 3.0)
    sigma2 = float(np.dot(residuals, residuals)) / (n - 2)
    se = math.sqrt(sigma2 / sxx * n / n_eff)
    half = float(t_dist.ppf(0.975, n_eff - 2)) * se
    return Slope(float(slope), float(slope) - half, float(slope) + half, n, n_eff)


@dataclass
class Fit:
    warmup_events: int
    points: int
    slope_mib_per_m: float | None  # RSS MiB per million events trained
    growth_mib: float | None  # last minus first RSS after warm-up
    fitted_growth_mib: float | None  # slope times the events spanned after warm-up
    flat: bool | None  # None: undecided (too few samples, or the interval straddles the threshold)
    ci_low: float | None = None  # 95% confidence interval of the slope (see `Slope`)
    ci_high: float | None = None

    def verdict(self, threshold: float) -> str:
        if self.slope_mib_per_m is None:
            return f"VERDICT: undecided (only {self.points} samples after warm-up; need 3)"
        interval = f"slope {self.slope_mib_per_m:+.2f}, 95% CI {self.ci_low:+.2f} .. {self.ci_high:+.2f} MiB per 1M events"
        if self.flat:
            return f"VERDICT: flat ({interval}: all within +-{threshold:g})"
        if self.flat is None:
            return f"VERDICT: undecided ({interval}: straddles +-{threshold:g}; run longer)"
        return f"VERDICT: GROWING ({interval}: beyond +-{threshold:g})"


@dataclass
class SoakResult:
    settings: SoakSettings
    samples: list[Sample]
    fit: Fit
    trained: int
    seconds: float
    checkpoints: int
    daemon_exit: int | None
    workdir_bytes: int  # checkpoints + index versions on disk at the end
    memory: list[dict[str, float]] = field(default_factory=list)  # the daemon's memory reports (MiB by layer)
    sizes: str = ""  # bounded structures at the last memory report
    traced_growth: list[str] = field(default_factory=list)  # Python growth by line (with --tracemalloc)
    outputs: dict[str, str] = field(default_factory=dict)


def read_rss_mib(pid: int, key: str = "VmRSS") -> float:
    """``key`` (kB) from /proc/PID/status in MiB; NaN once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / KIB_PER_MIB
    except (OSError, ValueError):
        pass
    return float("nan")


class DaemonLog:
    """Reads the daemon's output in a thread: copies it to a file, keeps the latest counts.

    The counts are plain ints replaced whole, so other threads read them without a lock.
    """

    def __init__(self, stream: IO[str], path: Path) -> None:
        self.events = 0
        self.lag: int | None = None
        self.index_version: int | None = None
        self.index_items: int | None = None
        self.checkpoints = 0
        self.stopped_after: int | None = None
        self.memory: list[dict[str, float]] = []  # one per memory report: events and MiB by layer
        self.sizes = ""  # the last report's bounded-structure sizes
        self.traced_growth: list[str] = []  # the last "python allocations grown" lines
        self._in_growth = False
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._stream, self._path = stream, path
        self._thread = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with open(self._path, "w", encoding="utf-8") as copy:
            for line in self._stream:
                copy.write(line)
                copy.flush()
                self.tail.append(line.rstrip())
                if self._in_growth and line.startswith("  "):
                    self.traced_growth.append(line.strip())
                    continue
                self._in_growth = "python allocations grown" in line
                if self._in_growth:
                    self.traced_growth = []
                if (m := MEMORY_RE.search(line)) is not None:
                    self.memory.append({k: float(v.replace(",", "")) for k, v in m.groupdict().items()
                                        if v is not None and k not in ("sizes", "arrow_backend", "allocator")})
                    self.sizes = m.group("sizes")
                elif (m := STATUS_RE.search(line)) is not None:
                    self.events, self.lag = int(m.group(1)), int(m.group(2))
                    if (i := INDEX_RE.search(line)) is not None:
                        self.index_version, self.index_items = int(i.group(1)), int(i.group(2))
                elif (m := CHECKPOINT_RE.search(line)) is not None:
                    self.checkpoints += 1
                    self.events = max(self.events, int(m.group(1)))
                elif (m := STOPPED_RE.search(line)) is not None:
                    self.stopped_after = int(m.group(1))

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)


def daemon_config_toml(settings: SoakSettings, bootstrap: str, workdir: Path) -> str:
    """The daemon's TOML: the embedded model defaults, plus checkpoints, index sync and metrics on."""
    q = json.dumps  # a JSON string is a valid TOML basic string for these paths and names
    return f"""# generated by bench.soak
[stream]
bootstrap_servers = [{q(bootstrap)}]
topic = {q(TOPIC)}
dead_letter_topic = {q(DEAD_LETTERS)}
group_id = "inttower-soak"
max_batch_events = {settings.batch_events}

[daemon]
checkpoint_dir = {q(str(workdir / "checkpoints"))}
checkpoint_every_s = {settings.checkpoint_every_s}
status_every_s = {settings.status_every_s}
stop_when_idle_s = {max(600.0, 2 * settings.stall_s)}
memory_report_every_s = {settings.memory_report_s}
{chr(10).join(settings.daemon_settings)}

[index]
enabled = true
index_dir = {q(str(workdir / "index"))}
sync_interval_s = {settings.sync_interval_s}
full_refresh_interval_s = {settings.full_refresh_interval_s}
max_items = {settings.max_items}
# A sync job waiting for a hand-over when the daemon stops holds its exit for this long.
handoff_timeout_s = 10.0

[monitoring]
enabled = true
port = 0
""" + (f"""
[feedback]
mode = "joined"
label_window_s = {settings.feedback_window_s}
click_horizon_s = {settings.feedback_window_s}
max_pending = {settings.max_pending}
""" if settings.feedback else "")


def synthetic_config(settings: SoakSettings) -> SyntheticLogConfig:
    # No preference shift: the soak is about memory, and a shift only adds a quality dip.
    return SyntheticLogConfig(
        events=settings.events, seed=settings.seed, users=settings.users, initial_items=settings.initial_items,
        new_users_per_10k_events=settings.new_users_per_10k, new_items_per_10k_events=settings.new_items_per_10k,
        shift_at=1.0,
    )


class Producer:
    """Replays the synthetic stream chunk by chunk, staying at most ``max_ahead_events`` ahead of training."""

    def __init__(self, settings: SoakSettings, stream: StreamConfig, trained: DaemonLog, stop: threading.Event) -> None:
        self.produced = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._settings, self._stream, self._trained, self._stop = settings, stream, trained, stop
        self._thread = threading.Thread(target=self._run, name="soak-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            chunks = iter_synthetic_log(synthetic_config(self._settings), chunk_events=self._settings.chunk_events)
            for chunk in chunks:
                while self.produced - self._trained.events > self._settings.max_ahead_events:
                    if self._stop.wait(POLL_S):
                        return
                if self._stop.is_set():
                    return
                if self._settings.feedback:
                    replay_feedback(feedback_chunk(chunk, self._settings.seed + self.produced), self._stream,
                                    progress=False, end_watermark_ms=int(pc.max(chunk.column("ts")).as_py()))
                else:
                    replay(chunk, self._stream, fmt="arrow", arrow_batch_events=self._settings.batch_events,
                           progress=False)
                self.produced += chunk.num_rows
        except Exception as exc:  # noqa: BLE001 - reported by the main loop, which stops the run
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)


def feedback_chunk(chunk: pa.Table, seed: int) -> pa.Table:
    """A chunk as a feedback log whose clicks all fall within it: each partition stays in event-time order
    across chunks (a click from a later time would move the watermark past the next chunk's impressions)."""
    log = add_click_times(chunk, DelayConfig(seed=seed))
    click_ts = log.column(CLICK_TS_COLUMN)
    within = pc.fill_null(pc.less_equal(click_ts, pc.max(chunk.column("ts"))), False)
    kept = pc.if_else(within, click_ts, pa.scalar(None, pa.int64()))
    return log.set_column(log.schema.get_field_index(CLICK_TS_COLUMN), CLICK_TS_COLUMN, kept)


def fit_growth(samples: list[Sample], total_events: int, warmup_fraction: float, flat_mib_per_m: float) -> Fit:
    """Daemon RSS against events trained over the samples after warm-up, with a verdict.

    Flat when the slope's whole 95% interval lies within +-``flat_mib_per_m``; growing when
    it lies wholly beyond; undecided otherwise (too short a run to tell).
    """
    warmup = int(total_events * warmup_fraction)
    kept = [s for s in samples if s.events >= warmup and math.isfinite(s.rss_mib)]
    x = np.array([s.events for s in kept], dtype=np.float64) / 1e6
    y = np.array([s.rss_mib for s in kept])
    fitted = fit_slope(x, y)
    if fitted is None:
        return Fit(warmup, len(kept), None, None, None, None)
    if max(abs(fitted.low), abs(fitted.high)) < flat_mib_per_m:
        flat: bool | None = True
    elif fitted.low >= flat_mib_per_m or fitted.high <= -flat_mib_per_m:
        flat = False
    else:
        flat = None
    return Fit(warmup, len(kept), fitted.slope, float(y[-1] - y[0]), fitted.slope * float(x[-1] - x[0]), flat,
               fitted.low, fitted.high)


def medians_by_million(samples: list[Sample], step: int = 1_000_000) -> list[tuple[int, float]]:
    """Median daemon RSS per ``step`` events trained, as (bucket end, MiB): a level read at a glance,
    which a slope fitted from one warm-up cut hides when the heap settles late."""
    buckets: dict[int, list[float]] = {}
    for s in samples:
        if math.isfinite(s.rss_mib) and s.events > 0:
            buckets.setdefault(-(-s.events // step) * step, []).append(s.rss_mib)
    return [(end, float(np.median(values))) for end, values in sorted(buckets.items())]


def baseline_slope(samples: list[Sample], warmup_events: int, step: int = 1_000_000) -> Slope | None:
    """The slope of the median RSS per ``step`` events, over buckets wholly after warm-up.

    Reported beside the verdict, never instead of it: checkpoints lift RSS for a few
    samples (up to +150 MiB) and those spikes dominate the all-samples fit's interval; a
    bucket's median is the level between them, so this says whether the baseline moves.
    """
    kept = [(end, mib) for end, mib in medians_by_million(samples, step) if end - step >= warmup_events]
    return fit_slope(np.array([end for end, _ in kept]) / 1e6, np.array([mib for _, mib in kept])) if kept else None


def layer_slopes(reports: list[dict[str, float]], warmup_events: int) -> dict[str, Slope]:
    """Slope of every memory layer (`MEMORY_LAYERS`) over the daemon's memory reports after warm-up."""
    kept = [r for r in reports if r["events"] >= warmup_events]
    x = np.array([r["events"] for r in kept], dtype=np.float64) / 1e6
    slopes = {}
    for key, label in MEMORY_LAYERS:
        if kept and all(key in r for r in kept):
            fitted = fit_slope(x, np.array([r[key] for r in kept]))
            if fitted is not None:
                slopes[label] = fitted
    return slopes


def _stop_daemon(process: subprocess.Popen) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"daemon pid {process.pid} did not exit {STOP_TIMEOUT_S:.0f} s after SIGTERM; killing it", flush=True)
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    return process.returncode


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _row(s: Sample) -> str:
    index = "-" if s.index_version is None else f"v{s.index_version}/{s.index_items}"
    return (f"{s.elapsed_s:>9.0f} {s.events:>11,} {s.produced:>11,} {_fmt(s.lag, ','):>10} "
            f"{s.rss_mib:>9.1f} {s.broker_rss_mib:>10.1f}  {index}")


HEADER = (f"{'elapsed s':>9} {'events':>11} {'produced':>11} {'lag msgs':>10} {'RSS MiB':>9} {'broker MiB':>10}  index (version/items)\n"
          + "-" * 86)


def run_soak(settings: SoakSettings) -> SoakResult:
    """Run one soak; everything it starts is stopped in ``finally`` blocks (daemon by SIGTERM, broker by PID)."""
    settings.out.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    stop = threading.Event()
    started = time.monotonic()
    print(f"soak: {settings.events:,} events ({settings.new_users_per_10k} new users and {settings.new_items_per_10k} "
          f"new items per 10k events), sample every {settings.sample_s:g} s, out {settings.out}", flush=True)
    with tempfile.TemporaryDirectory(prefix="inttower-soak-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
        process: subprocess.Popen | None = None
        producer: Producer | None = None
        daemon_exit: int | None = None
        log: DaemonLog | None = None
        workdir_bytes = 0
        try:
            create_topic(broker.bootstrap, TOPIC, settings.partitions)
            create_topic(broker.bootstrap, DEAD_LETTERS, 1)
            config = workdir / "soak.toml"
            config.write_text(daemon_config_toml(settings, broker.bootstrap, workdir))
            shutil.copy(config, settings.out / "soak.toml")
            process = subprocess.Popen(
                [sys.executable, "-m", "inttower.cli", "train", "--config", str(config)], cwd=REPO,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **({"PYTHONTRACEMALLOC": "1"} if settings.tracemalloc else {}),
                     **dict(kv.split("=", 1) for kv in settings.daemon_env)},
            )
            log = DaemonLog(process.stdout, settings.out / "daemon.log")
            print(f"broker pid {broker.pid} on {broker.bootstrap}; daemon pid {process.pid}; "
                  f"topic {TOPIC} x {settings.partitions} partitions; workdir {workdir}", flush=True)
            stream = StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=TOPIC, dead_letter_topic=DEAD_LETTERS)
            producer = Producer(settings, stream, log, stop)
            producer.start()
            print(HEADER, flush=True)
            next_sample = started
            last_events, last_move = -1, time.monotonic()
            while True:
                now = time.monotonic()
                finished = log.events >= settings.trained_target
                if now >= next_sample or finished:
                    sample = Sample(round(now - started, 1), log.events, producer.produced, log.lag,
                                    read_rss_mib(process.pid), read_rss_mib(broker.pid), log.index_version, log.index_items)
                    samples.append(sample)
                    print(_row(sample), flush=True)
                    while next_sample <= now:
                        next_sample += settings.sample_s
                if finished:
                    break
                if producer.error is not None:
                    raise RuntimeError(f"producer failed: {producer.error!r}") from producer.error
                if process.poll() is not None:
                    raise RuntimeError(f"daemon exited with {process.returncode} at {log.events} events; "
                                       "log tail:\n" + "\n".join(log.tail))
                if log.events != last_events:
                    last_events, last_move = log.events, now
                elif now - last_move > settings.stall_s:
                    raise RuntimeError(f"no training progress for {settings.stall_s:.0f} s at {log.events} events "
                                       f"({producer.produced} produced); log tail:\n" + "\n".join(log.tail))
                time.sleep(POLL_S)
        finally:
            stop.set()
            if process is not None:
                daemon_exit = _stop_daemon(process)
            if log is not None:
                log.join(5.0)
            if producer is not None:
                producer.join(30.0)
            broker.stop()
            workdir_bytes = _dir_bytes(workdir)
    seconds = time.monotonic() - started
    assert log is not None
    trained = log.stopped_after if log.stopped_after is not None else log.events
    fit = fit_growth(samples, settings.trained_target, settings.warmup_fraction, settings.flat_mib_per_m)
    result = SoakResult(settings, samples, fit, trained, seconds, log.checkpoints, daemon_exit, workdir_bytes,
                        log.memory, log.sizes, log.traced_growth)
    _report(result)
    return result


def _report(result: SoakResult, write: bool = True) -> None:
    s, fit = result.settings, result.fit
    print(f"\ntrained {result.trained:,} events in {result.seconds:.0f} s "
          f"({result.trained / max(result.seconds, 1e-9):,.0f}/s); {result.checkpoints} checkpoints; "
          f"daemon exit {result.daemon_exit}; checkpoints + index on disk at the end {result.workdir_bytes / 2**20:.1f} MiB "
          f"(temp dir, removed)")
    rss = [x.rss_mib for x in result.samples if math.isfinite(x.rss_mib)]
    if rss:
        print(f"daemon RSS: min {min(rss):.1f}, max {max(rss):.1f}, last {rss[-1]:.1f} MiB; "
              f"broker RSS last {result.samples[-1].broker_rss_mib:.1f} MiB (memory-only topic: grows with events produced)")
    medians = medians_by_million(result.samples)
    if medians:
        print("daemon RSS median per 1M events trained (MiB): "
              + ", ".join(f"{end / 1e6:g}M {mib:.0f}" for end, mib in medians))
    print(f"fit: RSS vs events trained over {fit.points} samples with events >= {fit.warmup_events:,} "
          f"(warm-up = first {s.warmup_fraction:.0%} of events)")
    print(f"slope: {_fmt(fit.slope_mib_per_m, '+.2f')} MiB per 1M events; growth after warm-up: "
          f"{_fmt(fit.growth_mib, '+.1f')} MiB observed (first to last sample), {_fmt(fit.fitted_growth_mib, '+.1f')} MiB fitted")
    baseline = baseline_slope(result.samples, fit.warmup_events)
    if baseline is not None:
        print(f"baseline (median RSS per 1M events, buckets after warm-up; spike-robust, not the verdict's fit): "
              f"{baseline.text()}")
    slopes = layer_slopes(result.memory, fit.warmup_events)
    if slopes:
        print(f"by layer, from the daemon's {len(result.memory)} memory reports after warm-up "
              "(MiB, or blocks, per 1M events):")
        for key, label in MEMORY_LAYERS:
            if label in slopes:
                last = result.memory[-1][key]
                unit = "blocks" if key in COUNT_LAYERS else "MiB"
                print(f"  {label:<14} {slopes[label].text('')}  last {last:,.{0 if key in COUNT_LAYERS else 1}f} {unit}")
    if result.sizes:
        print(f"bounded structures at the end: {result.sizes}")
    if result.traced_growth:
        print("python allocations grown since the first memory report (tracemalloc):")
        for line in result.traced_growth:
            print(f"  {line}")
    print(fit.verdict(s.flat_mib_per_m), flush=True)
    if not write:
        return
    result.outputs["json"] = str(save_result(result))
    if s.plot:
        result.outputs["png"] = str(_plot(result))
    print(f"wrote {', '.join(result.outputs.values())} and {s.out / 'daemon.log'}", flush=True)


def save_result(result: SoakResult) -> Path:
    path = result.settings.out / "soak.json"
    data = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result.settings).items()},
        "trained": result.trained,
        "seconds": round(result.seconds, 1),
        "checkpoints": result.checkpoints,
        "daemon_exit": result.daemon_exit,
        "workdir_bytes": result.workdir_bytes,
        "fit": dataclasses.asdict(result.fit),
        "layers": {label: dataclasses.asdict(slope) for label, slope in layer_slopes(result.memory, result.fit.warmup_events).items()},
        "memory_reports": result.memory,
        "sizes": result.sizes,
        "traced_growth": result.traced_growth,
        "verdict": result.fit.verdict(result.settings.flat_mib_per_m),
        "samples": [dataclasses.asdict(x) for x in result.samples],
    }
    path.write_text(json.dumps(_finite(data), indent=1, allow_nan=False))
    return path


def load_result(path: Path, warmup_fraction: float | None = None, flat_mib_per_m: float | None = None) -> SoakResult:
    """A saved run (``soak.json``) refitted, optionally with another warm-up or threshold: a run is
    expensive, and where its heap settles is only known after it."""
    data = json.loads(path.read_text())
    saved = data["settings"]
    names = {f.name for f in dataclasses.fields(SoakSettings)}
    known = {k: v for k, v in saved.items() if k in names}
    known["out"] = Path(known.get("out", path.parent))
    for name in ("daemon_env", "daemon_settings"):
        known[name] = tuple(known.get(name, ()))
    if warmup_fraction is not None:
        known["warmup_fraction"] = warmup_fraction
    if flat_mib_per_m is not None:
        known["flat_mib_per_m"] = flat_mib_per_m
    settings = SoakSettings(**known)
    nan = float("nan")
    samples = [Sample(**{k: (nan if k in NAN_FIELDS and v is None else v) for k, v in x.items()}) for x in data["samples"]]
    fit = fit_growth(samples, settings.trained_target, settings.warmup_fraction, settings.flat_mib_per_m)
    return SoakResult(settings, samples, fit, data["trained"], data["seconds"], data["checkpoints"], data["daemon_exit"],
                      data["workdir_bytes"], data.get("memory_reports", []), data.get("sizes", ""),
                      data.get("traced_growth", []))


def _finite(value: object) -> object:
    """``value`` with NaN (a process already gone when sampled) as null, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _plot(result: SoakResult) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, fit = result.samples, result.fit
    events_m = np.array([x.events for x in samples]) / 1e6
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(events_m, [x.rss_mib for x in samples], ".-", label="daemon VmRSS")
    left.axvspan(0, fit.warmup_events / 1e6, color="0.9", label="warm-up (not fitted)")
    if fit.slope_mib_per_m is not None:
        kept = [x for x in samples if x.events >= fit.warmup_events]
        xs = np.array([x.events for x in kept]) / 1e6
        intercept = np.mean([x.rss_mib for x in kept]) - fit.slope_mib_per_m * xs.mean()
        left.plot(xs, intercept + fit.slope_mib_per_m * xs, "--", label=f"fit: {fit.slope_mib_per_m:+.2f} MiB / 1M events")
    reports = result.memory
    for key, label in MEMORY_LAYERS[1:]:
        if reports and all(key in r for r in reports) and key not in COUNT_LAYERS:
            left.plot([r["events"] / 1e6 for r in reports], [r[key] for r in reports], ".-", ms=3, lw=0.8, label=label)
    left.set_xlabel("events trained (millions)")
    left.set_ylabel("MiB")
    left.set_title("Training daemon memory")
    left.legend(loc="center right", fontsize="x-small", framealpha=0.7)
    elapsed = [x.elapsed_s for x in samples]
    right.plot(elapsed, events_m, label="trained")
    right.plot(elapsed, [x.produced / 1e6 for x in samples], label="produced")
    right.set_xlabel("elapsed s")
    right.set_ylabel("events (millions)")
    right.set_title("Progress")
    right.legend()
    fig.tight_layout()
    path = result.settings.out / "soak.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: Named run lengths (``--preset``): events, seconds between samples. At ~10k events/s on
#: 2 cores: quick ~2 min, standard ~17 min, long ~35 min per 20M, day ~3 h.
PRESETS: dict[str, tuple[int, float]] = {
    "quick": (1_000_000, 5.0),
    "standard": (10_000_000, 10.0),
    "long": (20_000_000, 15.0),
    "day": (100_000_000, 60.0),
}


def event_count(text: str) -> int:
    """``20000000``, ``20M``, ``500k`` or ``2.5M`` as an event count (argparse type)."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an event count such as 20000000, 20M or 500k") from None
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of events >= 1")
    return int(value)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: stop the daemon and the broker


def main(argv: list[str] | None = None) -> None:
    defaults = SoakSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named run length: " + ", ".join(
        f"{name} {events / 1e6:g}M events" for name, (events, _) in PRESETS.items()) + " (--events / --sample-s override)")
    parser.add_argument("--events", type=event_count, help=f"events to train (e.g. 20M; default {defaults.events / 1e6:g}M)")
    parser.add_argument("--sample-s", type=float, help=f"seconds between memory samples (default {defaults.sample_s:g})")
    parser.add_argument("--out", type=Path, default=defaults.out, help="soak.json, soak.png, daemon.log go here")
    parser.add_argument("--partitions", type=int, default=defaults.partitions)
    parser.add_argument("--batch-events", type=int, default=defaults.batch_events, help="events per Arrow message and per training batch")
    parser.add_argument("--chunk-events", type=int, default=defaults.chunk_events, help="events generated and produced at a time")
    parser.add_argument("--max-ahead-events", type=int, default=defaults.max_ahead_events, help="most events produced but not yet trained")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--new-users-per-10k", type=int, default=defaults.new_users_per_10k)
    parser.add_argument("--new-items-per-10k", type=int, default=defaults.new_items_per_10k)
    parser.add_argument("--max-items", type=int, default=defaults.max_items, help="[index] max_items: the catalogue bound")
    parser.add_argument("--checkpoint-every-s", type=float, default=defaults.checkpoint_every_s)
    parser.add_argument("--sync-interval-s", type=float, default=defaults.sync_interval_s)
    parser.add_argument("--full-refresh-interval-s", type=float, default=defaults.full_refresh_interval_s)
    parser.add_argument("--warmup-fraction", type=float,
                        help=f"events left out of the fit (default {defaults.warmup_fraction:g}, or the saved run's with --refit)")
    parser.add_argument("--flat-mib-per-m", type=float,
                        help=f"verdict threshold on |slope| (default {defaults.flat_mib_per_m:g}, or the saved run's with --refit)")
    parser.add_argument("--stall-s", type=float, default=defaults.stall_s)
    parser.add_argument("--memory-report-s", type=float, default=defaults.memory_report_s,
                        help="[daemon] memory_report_every_s: the daemon's memory-by-layer line")
    parser.add_argument("--tracemalloc", action="store_true", help="run the daemon under PYTHONTRACEMALLOC=1 (slower)")
    parser.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                        help="set in the daemon's environment (repeatable), e.g. MALLOC_ARENA_MAX=2")
    parser.add_argument("--daemon-setting", dest="daemon_settings", action="append", default=[], metavar="TOML",
                        help="a line added to the daemon's [daemon] table (repeatable), e.g. 'malloc_arena_max = 2'")
    parser.add_argument("--no-plot", dest="plot", action="store_false")
    parser.add_argument("--refit", type=Path, metavar="SOAK_JSON",
                        help="run nothing: refit a saved soak.json (with --warmup-fraction / --flat-mib-per-m if given)")
    parser.add_argument("--feedback", action="store_true",
                        help="joined feedback: impressions and later clicks (JSON); the join state fills to --max-pending")
    parser.add_argument("--feedback-window-s", type=float, default=defaults.feedback_window_s,
                        help="[feedback] label_window_s (longer than the run: impressions leave only by max_pending)")
    parser.add_argument("--max-pending", type=int, default=defaults.max_pending, help="[feedback] max_pending")
    args = parser.parse_args(argv)
    if args.refit is not None:
        _report(load_result(args.refit, args.warmup_fraction, args.flat_mib_per_m), write=False)
        return
    args.warmup_fraction = defaults.warmup_fraction if args.warmup_fraction is None else args.warmup_fraction
    args.flat_mib_per_m = defaults.flat_mib_per_m if args.flat_mib_per_m is None else args.flat_mib_per_m
    preset_events, preset_sample_s = PRESETS[args.preset] if args.preset else (defaults.events, defaults.sample_s)
    args.events = args.events if args.events is not None else preset_events
    args.sample_s = args.sample_s if args.sample_s is not None else preset_sample_s
    args.daemon_env, args.daemon_settings = tuple(args.daemon_env), tuple(args.daemon_settings)
    for kv in args.daemon_env:
        if "=" not in kv:
            parser.error(f"--daemon-env {kv!r}: expected KEY=VALUE")
    if args.tracemalloc and args.memory_report_s < TRACED_REPORT_MIN_S:
        # A tracemalloc snapshot of a torch process holds the loop for tens of seconds.
        print(f"--tracemalloc: memory reports every {TRACED_REPORT_MIN_S:.0f} s (snapshots are slow)", flush=True)
        args.memory_report_s = TRACED_REPORT_MIN_S
    settings = SoakSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SoakSettings) if hasattr(args, f.name)})
    signal.signal(signal.SIGTERM, _terminate)
    run_soak(settings)


if __name__ == "__main__":
    main()
