"""Where a long-running process's memory is: the kernel's view, glibc's heap, Arrow's pool, Python's.

Resident memory alone cannot tell a leak from an allocator that keeps freed pages: a
leak grows ``malloc in use`` (or Arrow's or Python's traced bytes), fragmentation grows
RSS while ``malloc free`` grows with it. `read_memory` reads every layer at once so the
daemon's log and metrics, and `bench.soak`, can say which one moved.

``tracemalloc`` is used only when the process already traces (``PYTHONTRACEMALLOC=1``,
or ``python -X tracemalloc``): tracing costs time on every allocation, so turning it
on is an explicit debugging choice, never a default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pyarrow as pa

MIB = 2**20


class _Mallinfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc >= 2.33): every field a size_t."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _Mallinfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.malloc_info.restype = ctypes.c_int
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.fopen.restype = ctypes.c_void_p
        libc.fclose.argtypes = [ctypes.c_void_p]
        libc.fclose.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc, or a glibc older than 2.33
        return None
    return libc


@dataclass(frozen=True)
class MallocInfo:
    """The C heap, over every arena: what the program holds and what the allocator keeps.

    Field notes are glibc's; under jemalloc (`jemalloc_info`) the same questions have
    its answers: in use = ``stats.allocated``, free = ``stats.resident`` less that,
    arenas = ``stats.mapped``, releasable = dirty pages (``resident - active``).
    """

    heap_bytes: int  # obtained with brk/mmap for arenas (mallinfo2.arena)
    mmapped_bytes: int  # large blocks mapped one by one (hblkhd); returned to the system on free
    in_use_bytes: int  # allocated and not yet freed, arenas plus mapped blocks (uordblks + hblkhd)
    free_bytes: int  # freed but kept by the allocator in its arenas (fordblks)
    releasable_bytes: int  # free at the top of the main heap, returnable by malloc_trim (keepcost)
    allocator: str = "glibc"


def malloc_info() -> MallocInfo | None:
    """The C heap of whichever allocator serves malloc here: jemalloc when preloaded, else glibc's ``mallinfo2()``.

    None where neither can be read (a C library other than glibc >= 2.33).
    """
    jemalloc = jemalloc_info()
    if jemalloc is not None:
        return jemalloc
    libc = _libc()
    if libc is None:
        return None
    info = libc.mallinfo2()
    return MallocInfo(int(info.arena), int(info.hblkhd), int(info.uordblks + info.hblkhd), int(info.fordblks),
                      int(info.keepcost))


def loaded_allocator(maps: str = "/proc/self/maps") -> str:
    """"jemalloc" when a jemalloc library is mapped into this process (preloaded: it serves malloc), else "glibc"."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as lines:
            return "jemalloc" if any("libjemalloc" in line for line in lines) else "glibc"
    except OSError:
        return "glibc"


@cache
def _mallctl() -> Callable[..., int] | None:
    """jemalloc's ``mallctl`` when jemalloc is this process's malloc (`inttower.allocator`); None otherwise.

    Mapped and exporting ``mallctl``: a library that merely defines the symbol (loaded
    after glibc's malloc was bound) must not make the reports read the wrong heap.
    Cached: an allocator is fixed when the process starts.
    """
    if loaded_allocator() != "jemalloc":
        return None
    try:
        mallctl = ctypes.CDLL(None).mallctl
    except (OSError, AttributeError):
        return None
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                        ctypes.c_size_t]
    mallctl.restype = ctypes.c_int
    return mallctl


def _glibc_heap() -> ctypes.CDLL | None:
    """glibc, when its malloc serves this process: its heap calls (trim, tuning, malloc_info) mean something."""
    return _libc() if _mallctl() is None else None


def jemalloc_info() -> MallocInfo | None:
    """jemalloc's own totals (its statistics, refreshed first); None when jemalloc is not preloaded."""
    mallctl = _mallctl()
    if mallctl is None:
        return None
    epoch = ctypes.c_uint64(1)
    size = ctypes.c_size_t(ctypes.sizeof(epoch))
    if mallctl(b"epoch", ctypes.byref(epoch), ctypes.byref(size), ctypes.byref(epoch), ctypes.sizeof(epoch)):
        return None
    stats = {}
    for name in ("allocated", "active", "resident", "mapped"):
        value, size = ctypes.c_size_t(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
        if mallctl(f"stats.{name}".encode(), ctypes.byref(value), ctypes.byref(size), None, 0):
            return None  # built without statistics
        stats[name] = int(value.value)
    return MallocInfo(stats["mapped"], 0, stats["allocated"], max(stats["resident"] - stats["allocated"], 0),
                      max(stats["resident"] - stats["active"], 0), "jemalloc")  # dirty pages and metadata


def malloc_trim() -> bool:
    """Return free heap pages to the system (glibc ``malloc_trim(0)``); False where unavailable, under jemalloc
    (which returns pages on its own timer) or nothing freed."""
    libc = _glibc_heap()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def write_malloc_info(path: str) -> bool:
    """Write glibc's ``malloc_info`` XML to ``path``: each arena's free chunks by size (False where unavailable).

    ``mallinfo2`` says how much is free; this says where and in what sizes, which tells a
    heap that trimming would shrink (free chunks of many pages) from one fragmented into
    holes smaller than a page (which only a different allocation pattern shrinks).
    Under jemalloc glibc's arenas sit unused, so nothing is written.
    """
    libc = _glibc_heap()
    if libc is None:
        return False
    stream = libc.fopen(path.encode(), b"w")
    if not stream:
        return False
    try:
        return libc.malloc_info(0, stream) == 0
    finally:
        libc.fclose(stream)


class PeriodicTrim:
    """`malloc_trim` every ``every_s`` seconds (0: never), counting what it gave back.

    A trim costs a walk of the arenas and, later, a page fault for every page reused;
    what it returns stays returned only if the heap does not reuse it soon. Joined
    feedback's free chunks (0.6-6 MiB, the main arena) are reused within seconds: trimming
    every 60 s gave back ~150 MiB each time and lowered neither RSS nor its slope over 12M
    events (README "Memory over weeks"), so the daemon does not trim by default.
    """

    def __init__(self, every_s: float, now: float) -> None:
        self.every_s = every_s
        self._last = now
        self.trims = 0
        self.returned_bytes = 0  # resident bytes the trims took off the process, in total
        self.seconds = 0.0  # spent in malloc_trim, in total (the training loop waits for it)

    def maybe_trim(self, now: float) -> bool:
        """Trim when the interval has passed; True when it ran."""
        if not self.every_s or now - self._last < self.every_s:
            return False
        self._last = now
        before = resident_bytes()[0]
        started = time.perf_counter()
        malloc_trim()
        self.seconds += time.perf_counter() - started
        self.returned_bytes += max(before - resident_bytes()[0], 0)
        self.trims += 1
        return True

    def line(self) -> str:
        """What the trims gave back so far, for the memory report ('' before the first)."""
        if not self.trims:
            return ""
        return f"trimmed {self.returned_bytes / MIB:.1f} MiB in {self.trims} trims ({self.seconds:.2f} s)"


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt parameters (malloc.h)


def tune_malloc(arena_max: int, mmap_threshold_bytes: int) -> bool:
    """Set glibc's arena cap and a fixed mmap threshold (``mallopt``); 0 leaves one as it is.

    Why (measured in `bench.soak`, README "Memory over weeks"): glibc gives threads their
    own arenas (up to 8 per core) and never moves free space between them, and its
    *dynamic* mmap threshold rises to the largest block ever freed (up to 32 MiB), after
    which big, rare buffers (index syncs, checkpoints) are carved from the heaps too and
    leave holes that per-step blocks only partly reuse. A fixed threshold above the
    per-step blocks (gradients of the hashed tables: ~6 MiB) keeps steps on the heap
    (an mmap per step halves the step rate) and sends the big, rare ones to mmap, which
    returns them on free. Call it early: arenas made before keep existing.
    False where the C library is not glibc, or jemalloc serves malloc (nothing to tune).
    """
    libc = _glibc_heap()
    if libc is None:
        return False
    ok = True
    if arena_max:
        ok = bool(libc.mallopt(M_ARENA_MAX, arena_max)) and ok
    if mmap_threshold_bytes:
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold_bytes)) and ok
    return ok


def resident_bytes() -> tuple[int, int]:
    """This process's resident set and its anonymous part (``/proc/self/status``); zeros where /proc is missing.

    The rest of the resident set is file pages: the shared libraries' code (torch, FAISS,
    Arrow), which is constant.
    """
    found = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    found[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found.get("VmRSS", 0), found.get("RssAnon", 0)


@dataclass(frozen=True)
class MemoryReading:
    """One look at every layer; None where a layer cannot be read here."""

    rss_bytes: int
    anon_bytes: int  # the anonymous part of the resident set: heaps, mapped blocks, pools (not library code)
    malloc: MallocInfo | None
    arrow_bytes: int  # held by Arrow's default memory pool
    arrow_backend: str  # mimalloc, jemalloc or system: each keeps freed memory its own way
    python_traced_bytes: int | None  # tracemalloc's current total, when the process traces
    python_blocks: int  # live blocks of Python's own allocator (sys.getallocatedblocks): leaked objects grow it

    def line(self) -> str:
        """A one-line summary for the daemon's log."""
        parts = [f"rss {self.rss_bytes / MIB:.1f} MiB (anon {self.anon_bytes / MIB:.1f})"]
        if self.malloc is not None:
            m = self.malloc
            named = "" if m.allocator == "glibc" else f" ({m.allocator})"
            parts.append(f"malloc{named} in use {m.in_use_bytes / MIB:.1f} / free {m.free_bytes / MIB:.1f} / "
                         f"arenas {m.heap_bytes / MIB:.1f} MiB")
        parts.append(f"arrow ({self.arrow_backend}) {self.arrow_bytes / MIB:.1f} MiB")
        parts.append(f"python blocks {self.python_blocks:,}")
        if self.python_traced_bytes is not None:
            parts.append(f"python traced {self.python_traced_bytes / MIB:.1f} MiB")
        return ", ".join(parts)


def read_memory() -> MemoryReading:
    pool = pa.default_memory_pool()
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
    return MemoryReading(*resident_bytes(), malloc_info(), pool.bytes_allocated(), pool.backend_name, traced,
                         sys.getallocatedblocks())


class TracedGrowth:
    """Python allocations that grew since a baseline snapshot, by source line (when tracing).

    The first `top` takes the baseline (and returns nothing); later calls name the lines
    whose live allocations grew the most since. ``reset_baseline`` starts over.
    """

    def __init__(self) -> None:
        self._baseline: tracemalloc.Snapshot | None = None

    @staticmethod
    def _snapshot() -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces((
            tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<unknown>")))

    def reset_baseline(self) -> None:
        self._baseline = self._snapshot() if tracemalloc.is_tracing() else None

    def top(self, limit: int = 8) -> list[str]:
        """The ``limit`` lines grown most since the baseline, as ``+X KiB (+N blocks) file:line``."""
        if not tracemalloc.is_tracing():
            return []
        if self._baseline is None:
            self.reset_baseline()
            return []
        stats = self._snapshot().compare_to(self._baseline, "lineno")
        grown = [s for s in stats if s.size_diff > 0][:limit]
        return [f"{s.size_diff / 1024:+,.0f} KiB ({s.count_diff:+,} blocks) {s.traceback[0].filename}:{s.traceback[0].lineno}"
                for s in grown]
