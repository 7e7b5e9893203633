"""Versions on disk: atomic files + manifest, retention, readers in and out of process,
and refusal of truncated or corrupted files."""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from index_sync.disk import MANIFEST_NAME, IndexReader, VersionWriter, index_file_name
from index_sync.version import IndexVersion, head_ids, new_flat_index
from tests.conftest import REPO_ROOT

HEADS, DIM = 2, 8
ITEM_IDS = np.array([3, 10, 42, 7, 1_000_000_007], dtype=np.int64)


def vectors_for(version: int) -> np.ndarray:
    """(N, H, p) vectors that differ per version."""
    return np.random.default_rng(version).standard_normal((ITEM_IDS.size, HEADS, DIM)).astype(np.float32)


def make_version(version: int) -> IndexVersion:
    index = new_flat_index(DIM)
    index.add_with_ids(vectors_for(version).reshape(-1, DIM), head_ids(ITEM_IDS, HEADS))
    return IndexVersion(version, index, HEADS, DIM, checkpoint=f"ckpt-{version}")


def test_writer_keeps_the_newest_files_and_a_manifest_of_the_newest(tmp_path: Path) -> None:
    writer = VersionWriter(tmp_path, keep=2)
    for v in (1, 2, 3):
        path = writer.write(make_version(v))
        assert path.name == index_file_name(v)
    assert sorted(p.name for p in tmp_path.iterdir()) == [index_file_name(2), index_file_name(3), MANIFEST_NAME]
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    data = (tmp_path / index_file_name(3)).read_bytes()
    assert manifest["version"] == 3 and manifest["file"] == index_file_name(3)
    assert (manifest["item_count"], manifest["heads"], manifest["dim"]) == (ITEM_IDS.size, HEADS, DIM)
    assert manifest["checkpoint"] == "ckpt-3" and manifest["created_at"] > 0
    assert manifest["bytes"] == len(data) and manifest["sha256"] == hashlib.sha256(data).hexdigest()

    restarted = VersionWriter(tmp_path, keep=2)  # a restarted trainer must continue the numbering
    assert restarted.last_version == 3
    with pytest.raises(ValueError, match="not newer"):
        restarted.write(make_version(2))


def test_reader_in_process_follows_new_versions(tmp_path: Path) -> None:
    writer = VersionWriter(tmp_path, keep=1)
    with IndexReader(tmp_path, poll_interval_s=0.01) as reader:
        writer.write(make_version(1))
        first = reader.wait_for_version(1, timeout_s=5)
        writer.write(make_version(2))  # keep=1 deletes version 1's file...
        second = reader.wait_for_version(2, timeout_s=5)
    assert (first.version, second.version) == (1, 2) and reader.current is second
    # ...but a request still holding version 1 finishes on it: the mapping outlives the name.
    for version, expected in ((first, vectors_for(1)), (second, vectors_for(2))):
        got, known = version.vectors(np.append(ITEM_IDS, 99))
        assert known.tolist() == [True] * ITEM_IDS.size + [False]
        np.testing.assert_array_equal(got[:-1], expected)
        assert version.checkpoint == f"ckpt-{version.version}"
    assert reader.reloads_total == 2 and reader.refused_total == 0


def test_reader_memory_maps_the_vectors(tmp_path: Path) -> None:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc to see mappings")
    path = VersionWriter(tmp_path, keep=1).write(make_version(1))
    reader = IndexReader(tmp_path)
    assert reader.maybe_reload()
    assert str(path) in maps.read_text()


READER_SCRIPT = """
import hashlib, sys, time
from pathlib import Path
import numpy as np
from index_sync.disk import IndexReader

directory, final, ids = Path(sys.argv[1]), int(sys.argv[2]), np.array(sys.argv[3].split(","), dtype=np.int64)
reader = IndexReader(directory, poll_interval_s=0.02)
reader.start()
print("ready", flush=True)
seen, digest, deadline = [], "", time.monotonic() + 20
while time.monotonic() < deadline:
    current = reader.current
    if current is not None and (not seen or seen[-1] != current.version):
        seen.append(current.version)
        digest = hashlib.sha256(current.vectors(ids)[0].tobytes()).hexdigest()
    if seen and seen[-1] == final:
        break
    time.sleep(0.005)
reader.stop()
print("seen", *seen, flush=True)
print("digest", digest, flush=True)
"""


def test_reader_in_another_process_follows_versions(tmp_path: Path) -> None:
    final = 3
    proc = subprocess.Popen(
        [sys.executable, "-c", READER_SCRIPT, str(tmp_path), str(final), ",".join(map(str, ITEM_IDS))],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        assert lines.get(timeout=30).strip() == "ready"
        writer = VersionWriter(tmp_path, keep=2)
        for v in range(1, final + 1):
            writer.write(make_version(v))
            threading.Event().wait(0.3)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    out = {}
    while not lines.empty():
        key, *values = lines.get().split()
        out[key] = values
    seen = [int(v) for v in out["seen"]]
    print("reader process saw versions", seen)
    assert seen[-1] == final and seen == sorted(set(seen)), seen
    assert out["digest"] == [hashlib.sha256(vectors_for(final).tobytes()).hexdigest()]


def test_truncated_or_corrupted_files_are_refused_and_the_last_good_version_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = VersionWriter(tmp_path, keep=5)
    reader = IndexReader(tmp_path)  # driven by maybe_reload, no thread
    writer.write(make_version(1))
    assert reader.maybe_reload() and reader.current.version == 1

    truncated = writer.write(make_version(2))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with caplog.at_level(logging.ERROR, logger="index_sync.disk"):
        assert not reader.maybe_reload()
    assert reader.current.version == 1 and reader.refused_total == 1
    assert truncated.name in reader.last_error and "size" in reader.last_error
    assert any(truncated.name in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert not reader.maybe_reload() and reader.refused_total == 1  # not re-checked until the manifest changes

    corrupted = writer.write(make_version(3))
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit in the vectors: only the hash can tell
    corrupted.write_bytes(bytes(data))
    assert not reader.maybe_reload()
    assert reader.current.version == 1 and reader.refused_total == 2
    assert corrupted.name in reader.last_error and "sha256" in reader.last_error
    np.testing.assert_array_equal(reader.current.vectors(ITEM_IDS)[0], vectors_for(1))

    writer.write(make_version(4))
    assert reader.maybe_reload() and reader.current.version == 4
    np.testing.assert_array_equal(reader.current.vectors(ITEM_IDS)[0], vectors_for(4))


def test_a_manifest_naming_a_missing_file_is_refused(tmp_path: Path) -> None:
    writer = VersionWriter(tmp_path, keep=5)
    writer.write(make_version(1))
    reader = IndexReader(tmp_path)
    assert reader.maybe_reload()
    writer.write(make_version(2)).unlink()
    assert not reader.maybe_reload()
    assert reader.refused_total == 1 and "missing" in reader.last_error and reader.current.version == 1
