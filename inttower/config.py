"""Typed configuration: TOML loaded into the frozen dataclasses of each package.

Each package owns one frozen dataclass with its defaults (`model.config.ModelConfig`,
...); this module composes them into `AppConfig` and converts TOML into them with strict
checking, so a typo fails loudly instead of silently running on a default.

Range limits live beside the defaults as field metadata: ``{"ge": 1}``, ``{"gt": 0.0}``,
``{"le": 1.0}``, ``{"lt": ...}``. Cross-field rules live in each dataclass's
``__post_init__`` (raising ValueError), which this loader reports with the key path.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from inttower.errors import ConfigError
from index_sync.config import IndexSyncConfig
from model.config import ModelConfig, OnlineConfig, TrainConfig
from monitoring.config import MonitoringConfig
from serving.config import ServingConfig
from stream.config import FeedbackConfig, StreamConfig
from stream.delays import DelayConfig
from stream.movielens import MovieLensImport
from stream.synthetic import SyntheticLogConfig
from stream.table_import import TableImport


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how the importers build click logs."""

    movielens: MovieLensImport = field(default_factory=MovieLensImport)
    synthetic: SyntheticLogConfig = field(default_factory=SyntheticLogConfig)
    table: TableImport = field(default_factory=TableImport)
    # `inttower data synthetic --delays`: click delays of a feedback log (`stream.delays`).
    delays: DelayConfig = field(default_factory=DelayConfig)


@dataclass(frozen=True)
class DemoConfig:
    """`make demo`: the embedded broker, a synthetic stream, two models side by side."""

    events: int = field(default=200_000, metadata={"ge": 1000})
    partitions: int = field(default=4, metadata={"ge": 1})
    format: Literal["json", "arrow"] = "arrow"
    topic: str = "demo-clicks"
    # Events per training batch (and per Arrow message): one pass over the stream, so
    # smaller batches mean more optimizer steps.
    batch_events: int = field(default=512, metadata={"ge": 2})
    # The first is the daemon's model; the others train as shadows on the same batches.
    models: tuple[Literal["inttower", "two_tower", "lr"], ...] = ("inttower", "two_tower")
    history_every_events: int = field(default=2_000, metadata={"ge": 1})
    timeout_s: float = field(default=900.0, metadata={"gt": 0.0})


@dataclass(frozen=True)
class DaemonConfig:
    """The long-running trainer: checkpoints, status, and when (if ever) to stop by itself."""

    checkpoint_dir: str = "runs/checkpoints"
    # A fitted checkpoint (`inttower fit --out DIR`) to start from when checkpoint_dir has
    # none of its own; the daemon's own checkpoints take over after its first one.
    init_from: str | None = None
    checkpoint_every_s: float = field(default=60.0, metadata={"gt": 0.0})
    checkpoint_every_events: int = field(default=500_000, metadata={"ge": 1})
    keep_checkpoints: int = field(default=3, metadata={"ge": 1})
    status_every_s: float = field(default=5.0, metadata={"gt": 0.0})
    commit_every_s: float = field(default=5.0, metadata={"gt": 0.0})
    # Window of the streaming AUC / logloss on the status line and in checkpoints.
    metric_window: int = field(default=10_000, metadata={"ge": 10})
    # Other model kinds trained on the very same batches, for side-by-side comparison.
    shadow_models: tuple[Literal["inttower", "two_tower", "lr"], ...] = ()
    # A file recording every event id that reached an optimizer step (audits, tests).
    audit_log: str | None = None
    # Stop by itself after this many consumed events, or after this long without any.
    stop_after_events: int | None = None
    stop_when_idle_s: float | None = None
    # Points of the quality-vs-event-time history kept for reports (every N events).
    history_every_events: int = field(default=5_000, metadata={"ge": 1})
    # At most this many history points per model: beyond, every other point is dropped and
    # the spacing doubles, so weeks of running keep a bounded history of the whole run.
    history_max_points: int = field(default=2_000, metadata={"ge": 2})
    # A log line on where memory is (RSS, the C heap in use / free, Arrow's pool, Python's
    # traced bytes under PYTHONTRACEMALLOC) and the size of every bounded structure; 0: never.
    memory_report_every_s: float = field(default=600.0, metadata={"ge": 0.0})
    # The C allocator (inttower.allocator; README "Memory over weeks"): "auto" runs `inttower
    # train` in joined-feedback mode on jemalloc where it is installed (re-executed with it
    # in LD_PRELOAD), and otherwise on glibc tuned as below; "jemalloc" insists (either
    # mode); "glibc" never preloads. "auto" leaves alone a process whose LD_PRELOAD is already set.
    # allocator_library: the jemalloc library's path, when the dynamic linker does not find it.
    allocator: Literal["auto", "jemalloc", "glibc"] = "auto"
    allocator_library: str | None = None
    # glibc's allocator (monitoring.memory.tune_malloc; README "Memory over weeks"; ignored
    # under jemalloc): at most this many malloc arenas, and a fixed mmap threshold so big,
    # rare buffers go to mmap and are returned on free. 0 leaves glibc's default; a
    # threshold of -1 picks by `[feedback] mode` (`malloc_mmap_threshold`).
    malloc_arena_max: int = field(default=2, metadata={"ge": 0})
    malloc_mmap_threshold_bytes: int = field(default=-1, metadata={"ge": -1, "le": 32 * 2**20})
    # Every this many seconds, hand glibc's free heap pages back to the system
    # (`malloc_trim(0)`; glibc only); 0: never. Off by default: measured in joined mode (README "Memory
    # over weeks"), the free chunks are reused within seconds, so trimming faults them
    # back in and neither lowers RSS nor its slope. Useful after a burst that will not recur.
    malloc_trim_every_s: float = field(default=0.0, metadata={"ge": 0.0})
    # Debug: each memory report also writes glibc's malloc_info XML (every arena's free
    # chunks by size) to <dir>/malloc-<report number>-events-<events>.xml (glibc only:
    # nothing under jemalloc, whose totals are in the report line).
    malloc_info_dir: str | None = None
    # Debug: each rank appends a sha256 of its parameters after every step to
    # <dir>/digests-rank<r>.txt (multi-worker tests check the replicas stay identical).
    parameter_digest_dir: str | None = None


@dataclass(frozen=True)
class AppConfig:
    """The whole configuration of one inttower process."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    index: IndexSyncConfig = field(default_factory=IndexSyncConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


_RANGE_CHECKS: dict[str, tuple[str, typing.Callable[[Any, Any], bool]]] = {
    "ge": (">=", lambda v, b: v >= b),
    "gt": (">", lambda v, b: v > b),
    "le": ("<=", lambda v, b: v <= b),
    "lt": ("<", lambda v, b: v < b),
}


def load_config(path: str | Path) -> AppConfig:
    """Read ``path`` (TOML) into an `AppConfig`; raise `ConfigError` on any problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(AppConfig, raw, source=str(path))


def default_config() -> AppConfig:
    """The embedded defaults (what `make demo` runs on)."""
    return AppConfig()


T = typing.TypeVar("T")


def config_from_dict(cls: type[T], data: Any, source: str, key_path: str = "") -> T:
    """Build dataclass ``cls`` from a TOML table, checking keys, types and ranges."""
    where = key_path or "<top level>"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where}: expected a table, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = _join(key_path, unknown[0])
        raise ConfigError(f"{source}: {key}: unknown key (expected one of: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = _join(key_path, name)
        converted = _convert(hints[name], value, source, key)
        _check_range(fields[name], converted, source, key)
        kwargs[name] = converted
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: {where}: {exc}") from None


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value, source, key)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"{source}: {key}: expected one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(option, value, source, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{source}: {key}: expected {_type_name(tp)}, got {_describe(value)}"
        )
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list of {_type_name(args[0])}, got {_describe(value)}")
        return tuple(_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"config type {tp!r} at {key} is not supported by the loader")  # a bug, not user error


def _check_range(f: dataclasses.Field, value: Any, source: str, key: str) -> None:
    if value is None:
        return
    for name, (symbol, ok) in _RANGE_CHECKS.items():
        bound = f.metadata.get(name)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{source}: {key}: expected a value {symbol} {bound}, got {value!r}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    kind = {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    return f"{kind.get(type(value), type(value).__name__)} ({value!r})" if not isinstance(value, (dict, list)) else kind[type(value)]


#: mmap thresholds `[daemon] malloc_mmap_threshold_bytes = -1` picks (bench.soak, README
#: "Memory over weeks"): labelled events keep the hashed tables' ~6 MiB gradients on the
#: heap (a lower threshold maps and zeroes them every step: half the step rate). Joined
#: feedback at 8 MiB grew glibc's free memory by ~12 MiB per 1M events (in use flat);
#: at 1 MiB by ~3.5-5 (decelerating; ~1 over 20M events), at the same events/s, its steps
#: bound by decoding and joining. One arena instead of two grew it faster (~17 per 1M).
#: At 256 KiB it stayed ~20 MiB and RSS ~120 MiB lower, but 10-25% fewer events/s.
LABELLED_MMAP_THRESHOLD_BYTES = 8 * 2**20
JOINED_MMAP_THRESHOLD_BYTES = 1 * 2**20


def malloc_mmap_threshold(config: AppConfig) -> int:
    """The mmap threshold the daemon sets: the configured one, or by feedback mode for -1."""
    chosen = config.daemon.malloc_mmap_threshold_bytes
    if chosen >= 0:
        return chosen
    return JOINED_MMAP_THRESHOLD_BYTES if config.feedback.mode == "joined" else LABELLED_MMAP_THRESHOLD_BYTES
