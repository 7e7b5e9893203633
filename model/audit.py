"""An auditable record of which events reached an optimizer step.

One event id per line, appended after each step. Its byte length is stored in every
checkpoint; on restore the file is cut back to that length, so the record always agrees
with the restored model: after any crash, the ids in the file are exactly the events
the model has learned from, each once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class TrainedEventLog:
    """Append-only file of trained event ids. Owned by the one training process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")

    def append(self, event_ids: Iterable[str]) -> None:
        data = "".join(f"{event_id}\n" for event_id in event_ids).encode()
        self._file.write(data)
        self._file.flush()

    def position(self) -> int:
        """Bytes written so far (what a checkpoint records)."""
        return self._file.tell()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def truncate(self, position: int) -> None:
        """Cut the record back to ``position`` bytes (the restored checkpoint's)."""
        self._file.flush()
        self._file.truncate(position)
        self._file.seek(position)

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def read(path: str | Path) -> list[str]:
        return Path(path).read_text().splitlines() if Path(path).exists() else []
