"""malloc_info summarised: the free bytes a real heap holds land in the band of their chunk size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monitoring.heap_chunks import main, read_malloc_info, summary
from monitoring.memory import malloc_info

pytestmark = pytest.mark.skipif(malloc_info() is None, reason="needs glibc (malloc_info)")

_HOLES = """
import ctypes, sys
from monitoring.memory import MIB, tune_malloc, write_malloc_info
assert tune_malloc(arena_max=2, mmap_threshold_bytes=8 * MIB)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(512 * 1024) for _ in range(100)]
for block in blocks[::2]:
    libc.free(block)  # 50 holes of 512 KiB between live blocks
assert write_malloc_info(sys.argv[1] + "/malloc-000001-events-1234.xml")
"""


def test_holes_of_half_a_mebibyte_show_in_the_main_arenas_128k_band(tmp_path: Path, capsys) -> None:
    subprocess.run([sys.executable, "-c", _HOLES, str(tmp_path)], check=True, timeout=60)
    arenas = read_malloc_info(tmp_path / "malloc-000001-events-1234.xml")
    main_arena = next(a for a in arenas if a.arena == 0)
    assert main_arena.free_by_band["128K+"] >= 50 * 512 * 1024
    assert main_arena.system_bytes >= 100 * 512 * 1024 and main_arena.free_bytes >= main_arena.free_by_band["128K+"]
    assert summary(arenas).startswith("arena 0 ")
    main([str(tmp_path)])
    assert capsys.readouterr().out.startswith("1,234 events: arena 0 ")


def test_an_empty_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no malloc-"):
        main([str(tmp_path)])
