"""Serving snapshots on disk: each index version with the model weights that go with it.

An index version alone cannot be scored: the user tower must be the one whose item
tower encoded it (both are taken from the same weight snapshot at sync time). So beside
``index-<v>.faiss`` the writer stores ``index-<v>.model.pt`` (a state dict, loaded with
``weights_only=True``) *before* the manifest names the version; a reader process builds
the same `ServingSnapshot` the trainer's in-process readers use.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch

from index_sync.disk import IndexReader, VersionWriter
from index_sync.serving import ServingSnapshot
from model.base import PreRanker
from model.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)
MODEL_FILE = re.compile(r"^index-(\d{10})\.model\.pt$")


def model_file_name(version: int) -> str:
    return f"index-{version:010d}.model.pt"


class SnapshotWriter:
    """Writes model file, then index file and manifest (via `VersionWriter`); prunes both."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = Path(directory)
        self.versions = VersionWriter(self.directory, keep)
        self.keep = keep

    @property
    def last_version(self) -> int | None:
        return self.versions.last_version

    def write(self, snapshot: ServingSnapshot) -> None:
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in snapshot.model.state_dict().items()}, buffer)
        atomic_write_bytes(self.directory / model_file_name(snapshot.version.version), buffer.getvalue())
        self.versions.write(snapshot.version)  # the manifest is written last
        models = sorted(p for p in self.directory.iterdir() if MODEL_FILE.match(p.name))
        for old in models[: -self.keep]:
            old.unlink(missing_ok=True)


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

    def __call__(self) -> ServingSnapshot | None:
        version = self.reader.current
        if version is not None and (self._snapshot is None or self._snapshot.version.version != version.version):
            path = self.reader.directory / model_file_name(version.version)
            try:
                model = self._build_model()
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                self._snapshot = ServingSnapshot(version, model.eval())
            except (OSError, RuntimeError, KeyError) as exc:
                log.error("index version %d: cannot load %s (%s); serving version %s", version.version, path, exc,
                          self._snapshot.version.version if self._snapshot else None)
        return self._snapshot
