"""Drop an event sent twice (a producer retry): the last ``capacity`` event ids, remembered.

Ids are kept as 56-bit keys (`stream.ids.to_index_ids` of the ``event_id`` string), in a
ring with a set beside it: memory is bounded by ``capacity`` (about 100 bytes an id), and
two distinct ids collide with probability ~capacity / 2**56 per event. `fresh` only
looks; `record` remembers, so a caller can look before it knows whether the batch will
be trained (a batch dropped at shutdown must leave no trace, or its re-read after a
restart would be taken for a retry). The keys round-trip through `state_bytes` for
checkpoints.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from stream.ids import to_index_ids


class RecentIds:
    """The last ``capacity`` event ids seen (0: remember none, drop nothing)."""

    def __init__(self, capacity: int, keys: Iterable[int] = ()) -> None:
        self.capacity = capacity
        self._ring: deque[int] = deque()
        self._set: set[int] = set()
        self.record(list(keys))

    def __len__(self) -> int:
        return len(self._ring)

    def __contains__(self, key: int) -> bool:
        return key in self._set

    @staticmethod
    def keys(event_ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> list[int]:
        return to_index_ids(event_ids).tolist() if len(event_ids) else []

    def fresh(self, keys: Sequence[int]) -> np.ndarray:
        """Mask of keys neither remembered nor repeated earlier in ``keys`` (records nothing)."""
        mask = np.ones(len(keys), dtype=bool)
        if not self.capacity:
            return mask
        seen = self._set
        batch: set[int] = set()
        for i, key in enumerate(keys):
            if key in seen or key in batch:
                mask[i] = False
            else:
                batch.add(key)
        return mask

    def record(self, keys: Sequence[int]) -> None:
        if not self.capacity:
            return
        ring, seen = self._ring, self._set
        for key in keys:
            if key in seen:
                continue
            ring.append(key)
            seen.add(key)
            if len(ring) > self.capacity:
                seen.discard(ring.popleft())

    def state_bytes(self) -> bytes:
        return np.asarray(self._ring, dtype=np.int64).tobytes()

    @classmethod
    def from_states(cls, capacity: int, states: Iterable[bytes]) -> RecentIds:
        """One window from several (a multi-worker checkpoint's ranks), cut to ``capacity``."""
        keys = [k for data in states for k in np.frombuffer(data, dtype=np.int64).tolist()]
        return cls(capacity, keys[-capacity:] if capacity else ())
