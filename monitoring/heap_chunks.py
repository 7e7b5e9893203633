"""Where glibc's free heap bytes are: ``malloc_info`` XML summarised by arena and chunk size.

``malloc free`` in the memory report says how much the allocator keeps; the size of the
free chunks says what to do about it. Chunks of many pages are returned to the system
by ``malloc_trim`` (`monitoring.memory.PeriodicTrim`); holes smaller than a page are
not, and only a different allocation pattern shrinks them. The daemon writes the XML
beside each memory report with ``[daemon] malloc_info_dir``; then

    python -m monitoring.heap_chunks DIR

prints one line per report: each arena's size and its free bytes by chunk size.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

KIB, MIB = 2**10, 2**20
#: Chunk-size bands by the smallest size of each glibc bin (a bin may reach past its band's
#: next bound: the last bins span 600 KiB-6 MiB): sub-page holes stay resident, bigger ones trim.
BANDS = ((0, "<4K"), (4 * KIB, "4K+"), (128 * KIB, "128K+"), (MIB, "1M+"))


@dataclass(frozen=True)
class ArenaFree:
    """One arena: the memory it holds from the system, and its free chunks' bytes per band."""

    arena: int
    system_bytes: int
    free_by_band: dict[str, int]

    @property
    def free_bytes(self) -> int:
        return sum(self.free_by_band.values())


def _band(size_from: int) -> str:
    return [name for low, name in BANDS if size_from >= low][-1]


def read_malloc_info(path: Path) -> list[ArenaFree]:
    """Every arena of one ``malloc_info`` file (unsorted free chunks, of unknown sizes, band ``unsorted``)."""
    arenas = []
    for heap in ElementTree.parse(path).getroot().findall("heap"):
        bands = dict.fromkeys([name for _, name in BANDS], 0)
        sizes = heap.find("sizes")
        for size in sizes if sizes is not None else ():
            if size.tag == "size":
                bands[_band(int(size.get("from", 0)))] += int(size.get("total", 0))
            elif size.tag == "unsorted":
                bands["unsorted"] = bands.get("unsorted", 0) + int(size.get("total", 0))
        system = next((int(s.get("size", 0)) for s in heap.findall("system") if s.get("type") == "current"), 0)
        arenas.append(ArenaFree(int(heap.get("nr", 0)), system, bands))
    return arenas


def summary(arenas: Sequence[ArenaFree]) -> str:
    """``arena 0 296 MiB, free 121.0 MiB (<4K 0.1, 4K+ 7.0, 128K+ 114.0, 1M+ 0.0)`` per arena."""
    return "; ".join(
        f"arena {a.arena} {a.system_bytes / MIB:.0f} MiB, free {a.free_bytes / MIB:.1f} MiB ("
        + ", ".join(f"{band} {size / MIB:.1f}" for band, size in a.free_by_band.items()) + ")"
        for a in arenas)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="[daemon] malloc_info_dir: malloc-*.xml, one per memory report")
    args = parser.parse_args(argv)
    paths = sorted(args.directory.glob("malloc-*.xml"))
    if not paths:
        raise SystemExit(f"no malloc-*.xml in {args.directory}")
    for path in paths:
        events = re.search(r"events-(\d+)", path.name)
        label = f"{int(events[1]):,} events" if events else path.stem
        print(f"{label}: {summary(read_malloc_info(path))}")


if __name__ == "__main__":
    main()
