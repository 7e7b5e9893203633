"""Memory by layer: each layer moves when, and only when, memory of its kind is held."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path
from xml.etree import ElementTree

import pyarrow as pa
import pytest

from monitoring.memory import (
    MIB,
    PeriodicTrim,
    TracedGrowth,
    malloc_info,
    malloc_trim,
    read_memory,
    write_malloc_info,
)

pytestmark = pytest.mark.skipif(malloc_info() is None, reason="needs glibc >= 2.33 (mallinfo2)")


_LARGE_ARRAY_PROBE = """
import numpy as np
from monitoring.memory import MIB, read_memory
before = read_memory()
held = np.ones(64 * MIB // 8)  # 64 MiB through glibc malloc, every page touched
after = read_memory()
assert after.malloc.in_use_bytes - before.malloc.in_use_bytes >= 60 * MIB, (before, after)
assert after.anon_bytes - before.anon_bytes >= 60 * MIB, (before, after)
assert after.rss_bytes >= after.anon_bytes
assert after.arrow_bytes == before.arrow_bytes  # not Arrow's
del held
assert read_memory().malloc.in_use_bytes < after.malloc.in_use_bytes - 60 * MIB
print("ok")
"""


def test_a_large_numpy_array_shows_in_malloc_in_use_and_anonymous_rss() -> None:
    """In a fresh process: a long-running one may serve the array from free heap pages already resident."""
    done = subprocess.run([sys.executable, "-c", _LARGE_ARRAY_PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_an_arrow_buffer_shows_in_arrows_pool_only() -> None:
    before = read_memory()
    buffer = pa.allocate_buffer(32 * MIB)
    after = read_memory()
    assert after.arrow_bytes - before.arrow_bytes >= 32 * MIB
    assert abs(after.malloc.in_use_bytes - before.malloc.in_use_bytes) < 8 * MIB
    assert after.arrow_backend == pa.default_memory_pool().backend_name
    del buffer


def test_freed_small_blocks_are_kept_as_free_until_trimmed() -> None:
    blocks = [bytearray(4096) for _ in range(20_000)]  # ~80 MiB of small heap blocks
    del blocks[:-1]  # the last one pins the top of the heap: the rest stays as free space inside it
    kept = read_memory().malloc.free_bytes
    assert kept >= 40 * MIB
    malloc_trim()
    assert read_memory().malloc.free_bytes <= kept  # trimming returns pages, never invents free space
    del blocks


def test_line_names_every_layer() -> None:
    line = read_memory().line()
    assert line.startswith("rss ") and "(anon " in line and "malloc in use" in line and "arrow (" in line


def test_traced_growth_names_the_line_that_grew() -> None:
    tracemalloc.start()
    try:
        growth = TracedGrowth()
        assert growth.top() == []  # the first call takes the baseline
        blocks = read_memory().python_blocks
        hoard = [str(i) * 10 for i in range(50_000)]  # this line grows
        assert read_memory().python_blocks >= blocks + 50_000
        top = growth.top(limit=3)
        assert top and "test_memory.py" in top[0] and "KiB" in top[0]
        del hoard
    finally:
        tracemalloc.stop()
    assert read_memory().python_traced_bytes is None  # not tracing: no figure, no cost


_THRESHOLD_PROBE = """
import sys
import numpy as np
from monitoring.memory import MIB, malloc_info, tune_malloc
if sys.argv[1] == "fixed":
    assert tune_malloc(arena_max=2, mmap_threshold_bytes=2 * MIB)
big = np.ones(16 * MIB // 8); del big  # freeing a mapped 16 MiB block raises glibc's dynamic threshold
before = malloc_info().mmapped_bytes
block = np.ones(4 * MIB // 8)
print(malloc_info().mmapped_bytes - before)
"""


@pytest.mark.parametrize(("mode", "mapped"), [("dynamic", False), ("fixed", True)])
def test_a_fixed_mmap_threshold_sends_big_blocks_to_mmap_where_glibc_would_use_the_heap(mode: str, mapped: bool) -> None:
    """The soak's finding in small: after one big free, glibc carves 4 MiB blocks from the heap; a fixed threshold maps them."""
    done = subprocess.run([sys.executable, "-c", _THRESHOLD_PROBE, mode], capture_output=True, text=True, timeout=60,
                          check=True)
    grew = int(done.stdout.strip())
    assert (grew >= 4 * MIB) == mapped, (mode, grew)


_HOLES_PROBE = """
import ctypes
from monitoring.memory import MIB, PeriodicTrim, resident_bytes, tune_malloc
assert tune_malloc(arena_max=2, mmap_threshold_bytes=8 * MIB)  # 1 MiB blocks from the heap, as in the daemon
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
blocks = []
for _ in range(300):  # ~1 MiB blocks from the top of the heap, every page touched
    block = libc.malloc(MIB - 4096)
    ctypes.memset(block, 1, MIB - 4096)
    blocks.append(block)
for block in blocks[::2]:  # every other one freed: holes between live blocks, what joined mode's heap holds
    libc.free(block)
trim = PeriodicTrim(every_s=60.0, now=0.0)
assert not trim.maybe_trim(now=30.0) and trim.trims == 0 and trim.line() == ""
held = resident_bytes()[0]
assert trim.maybe_trim(now=60.0)
print(held - resident_bytes()[0], trim.returned_bytes, trim.line())
"""


def test_a_periodic_trim_returns_free_holes_between_live_blocks_to_the_system() -> None:
    """Freed ~1 MiB blocks between live ones stay resident until `malloc_trim` (the shape of joined mode's free heap)."""
    done = subprocess.run([sys.executable, "-c", _HOLES_PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    dropped, returned, line = done.stdout.split(maxsplit=2)
    assert int(dropped) >= 120 * MIB and int(returned) >= 120 * MIB, done.stdout
    assert line.startswith("trimmed ") and " in 1 trims (" in line


def test_an_interval_of_zero_never_trims() -> None:
    trim = PeriodicTrim(every_s=0.0, now=0.0)
    assert not trim.maybe_trim(now=1e9) and trim.trims == 0


def test_malloc_info_xml_lists_every_arenas_free_chunks(tmp_path: Path) -> None:
    path = tmp_path / "malloc.xml"
    assert write_malloc_info(str(path))
    root = ElementTree.parse(path).getroot()
    assert root.tag == "malloc" and root.findall("heap") and root.find("heap/sizes") is not None
    assert not write_malloc_info(str(tmp_path / "missing-dir" / "malloc.xml"))
