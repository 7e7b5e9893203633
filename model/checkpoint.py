"""Atomic, self-verifying checkpoints on disk, the newest K kept.

A checkpoint is a directory ``ckpt-<seq>`` of named parts (bytes from each component:
trainer weights and optimizer, consumed offsets, metric state, item catalogue) plus a
``manifest.json`` with each part's SHA-256. It is written into a temporary directory,
every file and the directory fsync'ed, then renamed into place: a crash leaves either
the complete new checkpoint or none. Loading skips any checkpoint whose manifest or
checksums do not verify and falls back to the next newest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREFIX = "ckpt-"
TMP_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint on disk."""

    path: Path
    sequence: int
    created_at: float
    metadata: dict

    def read(self, part: str) -> bytes:
        return (self.path / part).read_bytes()

    def has(self, part: str) -> bool:
        return (self.path / part).is_file()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, tmp_suffix: str = TMP_SUFFIX) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, rename over ``path``, fsync the dir.

    Readers see the old file or the new one, never a partial one, even across a crash.
    """
    tmp = path.with_name(path.name + tmp_suffix)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class CheckpointStore:
    """Writes and finds checkpoints under one directory. Not safe for concurrent writers."""

    def __init__(self, directory: str | Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(f"{PREFIX}*{TMP_SUFFIX}"):  # left by a crash mid-write
            shutil.rmtree(stale, ignore_errors=True)

    def _sequences(self) -> list[int]:
        out = []
        for p in self.directory.glob(f"{PREFIX}*"):
            suffix = p.name[len(PREFIX) :]
            if p.is_dir() and suffix.isdigit():
                out.append(int(suffix))
        return sorted(out)

    def save(self, parts: dict[str, bytes], metadata: dict) -> Checkpoint:
        """Write a new checkpoint atomically and prune the oldest beyond ``keep``."""
        sequence = (self._sequences() or [0])[-1] + 1
        final = self.directory / f"{PREFIX}{sequence:010d}"
        tmp = self.directory / f"{final.name}{TMP_SUFFIX}"
        created_at = time.time()
        try:
            tmp.mkdir()
            checksums = {}
            for name, data in parts.items():
                (tmp / name).write_bytes(data)
                _fsync_file(tmp / name)
                checksums[name] = hashlib.sha256(data).hexdigest()
            manifest = {"sequence": sequence, "created_at": created_at, "parts": checksums, "metadata": metadata}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            _fsync_file(tmp / MANIFEST)
            fsync_dir(tmp)
            tmp.rename(final)
            fsync_dir(self.directory)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"cannot write checkpoint under {self.directory}: {exc}") from exc
        self._prune()
        return Checkpoint(final, sequence, created_at, metadata)

    def _prune(self) -> None:
        for sequence in self._sequences()[: -self.keep]:
            shutil.rmtree(self.directory / f"{PREFIX}{sequence:010d}", ignore_errors=True)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies, or None."""
        for sequence in reversed(self._sequences()):
            path = self.directory / f"{PREFIX}{sequence:010d}"
            checkpoint = self._verify(path)
            if checkpoint is not None:
                return checkpoint
            log.warning("skipping checkpoint %s: incomplete or corrupt", path)
        return None

    def all(self) -> list[Checkpoint]:
        found = (self._verify(self.directory / f"{PREFIX}{s:010d}") for s in self._sequences())
        return [c for c in found if c is not None]

    @staticmethod
    def _verify(path: Path) -> Checkpoint | None:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            for name, digest in manifest["parts"].items():
                if hashlib.sha256((path / name).read_bytes()).hexdigest() != digest:
                    return None
            return Checkpoint(path, int(manifest["sequence"]), float(manifest["created_at"]), manifest["metadata"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
