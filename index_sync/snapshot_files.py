"""Serving snapshots on disk: each index version with the model weights that go with it.

An index version alone cannot be scored: the user tower must be the one whose item
tower encoded it (both are taken from the same weight snapshot at sync time). So beside
``index-<v>.faiss`` the writer stores ``index-<v>.model.pt`` (a state dict, loaded with
``weights_only=True``) *before* the manifest names the version; a reader process builds
the same `ServingSnapshot` the trainer's in-process readers use.

Where the stream's item ids are not their own index ids (string ids), the writer also
stores ``index-<v>.keys.parquet`` (index id -> caller's id, `ItemKeys`) before the
manifest, so a serving process answers in the caller's ids. A version whose keys did not
change since the last one written gets a hard link to that file instead of a new copy.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from index_sync.disk import IndexReader, VersionWriter
from index_sync.keys import ItemKeys
from index_sync.serving import ServingSnapshot
from model.base import PreRanker
from model.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)
MODEL_FILE = re.compile(r"^index-(\d{10})\.model\.pt$")
KEYS_FILE = re.compile(r"^index-(\d{10})\.keys\.parquet$")


def model_file_name(version: int) -> str:
    return f"index-{version:010d}.model.pt"


def keys_file_name(version: int) -> str:
    return f"index-{version:010d}.keys.parquet"


class SnapshotWriter:
    """Writes model file, then index file and manifest (via `VersionWriter`); prunes both."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = Path(directory)
        self.versions = VersionWriter(self.directory, keep)
        self.keep = keep
        self._keys_written: tuple[int, Path] | None = None  # (ItemKeys.generation, file) of the last keys file

    @property
    def last_version(self) -> int | None:
        return self.versions.last_version

    def write(self, snapshot: ServingSnapshot) -> None:
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in snapshot.model.state_dict().items()}, buffer)
        atomic_write_bytes(self.directory / model_file_name(snapshot.version.version), buffer.getvalue())
        if snapshot.keys is not None and len(snapshot.keys):
            self._write_keys(snapshot.keys, snapshot.version.version)
        self.versions.write(snapshot.version)  # the manifest is written last
        for pattern in (MODEL_FILE, KEYS_FILE):
            files = sorted(p for p in self.directory.iterdir() if pattern.match(p.name))
            for old in files[: -self.keep]:
                old.unlink(missing_ok=True)

    def _write_keys(self, keys: ItemKeys, version: int) -> None:
        path = self.directory / keys_file_name(version)
        generation = keys.generation  # read before serialising: a later change always rewrites
        last = self._keys_written
        if last is not None and last[0] == generation and last[1].exists():
            path.unlink(missing_ok=True)
            try:
                os.link(last[1], path)
                self._keys_written = (generation, path)
                return
            except OSError:  # a file system without hard links: write a copy
                pass
        atomic_write_bytes(path, keys.to_parquet_bytes())
        self._keys_written = (generation, path)


class DiskSnapshots:
    """The snapshot source of a serving process that follows a trainer's index directory.

    Call it (or pass it to `Reader`) for the newest snapshot whose index and model both
    loaded; a version whose model file is missing or unreadable is skipped and the last
    good snapshot keeps serving.
    """

    def __init__(self, reader: IndexReader, build_model: Callable[[], PreRanker]) -> None:
        self.reader = reader
        self._build_model = build_model
        self._snapshot: ServingSnapshot | None = None
        # (device, inode, size, mtime) of the last keys file read: a hard link of it is not parsed
        # again; the size and mtime tell a new file apart from an old one whose inode was reused.
        self._keys: tuple[tuple[int, int, int, int], ItemKeys] | None = None

    def _load_keys(self, path: Path) -> ItemKeys | None:
        if not path.exists():
            return None
        stat = path.stat()
        identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._keys is None or self._keys[0] != identity:
            self._keys = (identity, ItemKeys.from_parquet_bytes(path.read_bytes()))
        return self._keys[1]

    def __call__(self) -> ServingSnapshot | None:
        version = self.reader.current
        if version is not None and (self._snapshot is None or self._snapshot.version.version != version.version):
            path = self.reader.directory / model_file_name(version.version)
            keys_path = self.reader.directory / keys_file_name(version.version)
            try:
                model = self._build_model()
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                self._snapshot = ServingSnapshot(version, model.eval(), self._load_keys(keys_path))
            except (OSError, RuntimeError, KeyError, ValueError) as exc:
                log.error("index version %d: cannot load %s (%s); serving version %s", version.version, path, exc,
                          self._snapshot.version.version if self._snapshot else None)
        return self._snapshot
