"""Stable, vectorised hashing of categorical values into bounded embedding tables.

Python's built-in string hashing is salted per process, so ids would change across restarts and
between the trainer and a serving process. Here every value is canonicalised to its
UTF-8 string form (so the integer 42 and the string "42" share an id) and hashed with a
polynomial hash over its bytes followed by the splitmix64 finaliser, all in numpy over
Arrow's string buffers: no Python loop per value, several million values a second.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_POLY = np.uint64(0x100000001B3)  # FNV-64 prime, as the polynomial base
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
PADDING_ID = 0  # reserved: missing values and list padding


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijection on uint64 with good avalanche."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def salt_for(name: str) -> np.uint64:
    """A per-field salt, so equal values in two fields land in unrelated rows."""
    return np.uint64(int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little"))


def _as_strings(values: pa.Array | pa.ChunkedArray | np.ndarray | list) -> pa.LargeStringArray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        try:
            values = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed Python types in one column
            values = pa.array([_canonical(v) for v in values], type=pa.large_string())
    if pa.types.is_floating(values.type):
        # 3.0 and 3 must agree: integral floats are written as integers.
        as_int = pc.cast(values, pa.int64(), safe=False)
        values = pc.if_else(pc.equal(pc.cast(as_int, values.type), values), pc.cast(as_int, pa.string()), pc.cast(values, pa.string()))
    if not pa.types.is_large_string(values.type):
        values = pc.cast(values, pa.large_string())
    return values


def stable_hash(values: pa.Array | pa.ChunkedArray | np.ndarray | list, salt: np.uint64 = np.uint64(0)) -> tuple[np.ndarray, np.ndarray]:
    """Hash every value to a uint64, identical in any process; also return the null mask.

    Returns ``(hashes, is_null)``; hashes of nulls are meaningless and must be masked.
    """
    strings = _as_strings(values)
    n = len(strings)
    is_null = np.asarray(strings.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    buffers = strings.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64, count=n + 1, offset=strings.offset * 8)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    sums = np.zeros(n, dtype=np.uint64)
    # Horner's rule, one vectorised pass per character position (ids are short), so
    # memory stays O(n) rather than O(total bytes): sum = sum * POLY + (byte + 1).
    for k in range(int(lengths.max()) if n else 0):
        active = lengths > k
        byte = data[np.where(active, starts + k, 0)].astype(np.uint64) + np.uint64(1)
        sums = np.where(active, sums * _POLY + byte, sums)
    hashes = splitmix64(sums ^ splitmix64(lengths.astype(np.uint64) ^ salt))
    return hashes, is_null


def _canonical(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def bucketize(values: pa.Array | pa.ChunkedArray | np.ndarray | list, buckets: int, salt: np.uint64 = np.uint64(0)) -> np.ndarray:
    """Map values to ids in ``[1, buckets)``; nulls map to `PADDING_ID` (0). Returns int64."""
    hashes, is_null = stable_hash(values, salt)
    ids = (hashes % np.uint64(buckets - 1)).astype(np.int64) + 1
    ids[is_null] = PADDING_ID
    return ids
