"""Caller ids -> index ids: the stable map from a log's ``user_id``/``item_id`` to int64.

Real logs carry string ids (UUIDs, hashed hex ids, ASINs) as often as integers. Inside
the trainer every id is an int64 *index id* (the FAISS id of an item, the key of the
catalogue, the checkpointed state), so the edges (decoders, click-log readers, importers,
readers of the index) map caller ids with `to_index_ids`:

* an integer, or a string that is the canonical decimal form of one ("42", not "042" or
  "+42"), in ``[0, 2**ID_BITS)`` is its own index id: logs with small integer ids keep
  the ids they had, and the integer 42 and the string "42" are one id (as for features);
* anything else (other strings, negative or huge integers) is hashed: SipHash-2-4 with a
  fixed key (pandas' ``hash_array``, implemented in C and identical in every process and
  release) of its UTF-8 string form, cut to ``ID_BITS`` bits.

``ID_BITS`` is 56 so that an item id times the number of heads (the FAISS row id of one
head, `index_sync.version.head_ids`) stays inside int64 for up to 128 heads. Two distinct
hashed ids collide with probability about n**2 / 2**57: ~7e-4 expected colliding pairs
at 10M ids (``python -m bench.hashing`` measures it). The map is one-way: decoders keep
the caller's item id beside its index id (`caller_keys`, the ``item_key`` column) and
the index keeps those pairs for readers (`index_sync.keys.ItemKeys`). A caller id that is
its own index id comes back as an integer: the string "1005" is answered as 1005.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ID_BITS = 56
ID_LIMIT = 1 << ID_BITS  # index ids are in [0, ID_LIMIT)
#: SipHash key of the id hash. Changing it re-keys every string id: never change it.
ID_HASH_KEY = "inttower-ids-v1!"  # 16 bytes, as SipHash needs
_CANONICAL_DECIMAL = r"^(0|[1-9][0-9]{0,16})$"  # up to 17 digits: 2**56 has 17

IdValues = pa.Array | pa.ChunkedArray | np.ndarray | Sequence[object]


def _hash_strings(strings: np.ndarray) -> np.ndarray:
    """SipHash of each string (object array of str), cut to ``ID_BITS`` bits, as int64."""
    hashed = pd.util.hash_array(strings, encoding="utf8", hash_key=ID_HASH_KEY, categorize=False)
    return (hashed >> np.uint64(64 - ID_BITS)).astype(np.int64)


def id_array(values: IdValues) -> pa.Array:
    """Caller ids as one Arrow array: integers or strings as given, mixed ones as strings."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # mixed ints and strings, or ints past int64
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def to_index_ids(values: IdValues) -> np.ndarray:
    """Index id (int64, in ``[0, 2**56)``) of every caller id; see the module docstring.

    Accepts integer or string Arrow arrays (dictionary-encoded too), numpy arrays and
    Python lists, mixed types included. Raises ValueError on nulls or other types: an id
    is required and is either a string or an integer.
    """
    array = id_array(values)
    if len(array) == 0:
        return np.zeros(0, dtype=np.int64)
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    if array.null_count:
        raise ValueError(f"{array.null_count} null id(s): every event needs a user_id and an item_id")
    if pa.types.is_integer(array.type):
        ints = array.to_numpy(zero_copy_only=False).astype(np.int64, copy=False) if not pa.types.is_uint64(array.type) else None
        if ints is not None and ints.min() >= 0 and ints.max() < ID_LIMIT:
            return np.ascontiguousarray(ints, dtype=np.int64)
        array = pc.cast(array, pa.string())
    elif pa.types.is_large_string(array.type) or pa.types.is_string_view(array.type):
        array = pc.cast(array, pa.string())
    if not pa.types.is_string(array.type):
        raise ValueError(f"ids must be strings or integers, got {array.type}")
    out = np.empty(len(array), dtype=np.int64)
    decimal = pc.match_substring_regex(array, _CANONICAL_DECIMAL).to_numpy(zero_copy_only=False)
    if decimal.any():
        parsed = pc.cast(pc.filter(array, decimal), pa.uint64()).to_numpy(zero_copy_only=False)
        small = parsed < np.uint64(ID_LIMIT)
        where = np.flatnonzero(decimal)
        out[where[small]] = parsed[small].astype(np.int64)
        decimal[where[~small]] = False  # too large for an index id: hashed below
    hashed = ~decimal
    if hashed.any():
        strings = pc.filter(array, pa.array(hashed)).to_numpy(zero_copy_only=False)
        out[hashed] = _hash_strings(strings.astype(object, copy=False))
    return out


def caller_keys(caller_ids: pa.Array, index_ids: np.ndarray) -> pa.Array:
    """The caller's ids as strings where they differ from their index ids, null where equal.

    What a reader needs to answer in the caller's ids (`index_sync.keys.ItemKeys`): null
    for every small integer id (logs with integer ids carry no keys at all).
    """
    if pa.types.is_dictionary(caller_ids.type):
        caller_ids = caller_ids.dictionary_decode()
    if pa.types.is_integer(caller_ids.type) and (len(index_ids) == 0 or np.array_equal(caller_ids.to_numpy(zero_copy_only=False), index_ids)):
        return pa.nulls(len(caller_ids), pa.string())
    as_text = pc.cast(caller_ids, pa.string())
    same = pc.equal(as_text, pc.cast(pa.array(index_ids, pa.int64()), pa.string()))
    return pc.if_else(same, pa.scalar(None, pa.string()), as_text)


def to_index_id(value: str | int) -> int:
    """`to_index_ids` of one id."""
    return int(to_index_ids([value])[0])


def is_id_type(tp: pa.DataType) -> bool:
    """Whether a column of type ``tp`` can hold caller ids (integers or strings)."""
    if pa.types.is_dictionary(tp):
        tp = tp.value_type
    return pa.types.is_integer(tp) or pa.types.is_string(tp) or pa.types.is_large_string(tp)
