"""Stable hashing: same id in any process, bounded, and canonical across value types."""

import subprocess
import sys

import numpy as np
import pyarrow as pa

from model.config import FeatureField
from model.features import FeatureEncoder
from model.hashing import PADDING_ID, bucketize, salt_for
from tests.conftest import REPO_ROOT

VALUES = ["alice", "bob", "", "ünïcode", 42, 7.0, None]


def _ids_in_fresh_process() -> list[int]:
    code = (
        "from model.hashing import bucketize, salt_for;"
        f"print(bucketize({VALUES!r}, 1000, salt_for('user_id')).tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "random", "PATH": ""},
    )
    return [int(x) for x in out.stdout.strip().strip("[]").split(",")]


def test_value_hashes_to_the_same_id_in_two_separate_processes():
    here = bucketize(VALUES, 1000, salt_for("user_id")).tolist()
    assert _ids_in_fresh_process() == here
    assert _ids_in_fresh_process() == here


def test_ids_are_bounded_and_nulls_get_the_padding_row():
    values = pa.array(np.arange(100_000))
    ids = bucketize(values, 97, salt_for("f"))
    assert ids.min() >= 1 and ids.max() < 97
    assert bucketize([None, "x"], 97)[0] == PADDING_ID
    # roughly uniform over the buckets
    counts = np.bincount(ids, minlength=97)[1:]
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_integer_and_string_forms_of_a_value_share_an_id():
    ids = bucketize(pa.array([42, 7]), 1000, salt_for("x"))
    assert ids.tolist() == bucketize(["42", "7"], 1000, salt_for("x")).tolist()
    assert ids.tolist() == bucketize(pa.array([42.0, 7.0]), 1000, salt_for("x")).tolist()


def test_fields_are_salted_apart():
    a = bucketize(pa.array(np.arange(1000)), 1 << 20, salt_for("user_id"))
    b = bucketize(pa.array(np.arange(1000)), 1 << 20, salt_for("item_id"))
    assert (a != b).mean() > 0.99


def test_collision_rate_is_reported_per_field():
    rows = 5000
    table = pa.table(
        {
            "user": pa.StructArray.from_arrays([pa.array(np.arange(rows))], names=["user_id"]),
            "item": pa.StructArray.from_arrays([pa.array(np.arange(rows) % 10)], names=["item_id"]),
        }
    )
    encoder = FeatureEncoder((FeatureField("user_id", "categorical", "user", buckets=1001), FeatureField("item_id", "categorical", "item", buckets=1 << 20)))
    report = encoder.collision_report(table)
    assert report["user_id"].distinct_values == rows
    assert report["user_id"].distinct_ids <= 1000
    assert report["user_id"].rate >= 0.8  # 5000 values into 1000 rows
    assert report["item_id"].rate == 0.0
