"""Feature encoding from the spec: lists padded and masked, numerics standardised."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from model.config import FeatureField
from model.features import FeatureEncoder, FeatureError
from model.hashing import PADDING_ID
from model.towers import FieldEmbeddings

FIELDS = (
    FeatureField("uid", "categorical", "user", buckets=100),
    FeatureField("ctx", "categorical", "user", buckets=100, source="context"),
    FeatureField("tags", "multi_categorical", "item", buckets=50, max_len=3),
    FeatureField("price", "numeric", "item", mean=1.0, std=2.0),
)


def _table():
    return pa.table(
        {
            "label": pa.array([1, 0, 1], pa.int8()),
            "item_id": pa.array([1, 2, 3]),
            "user": pa.StructArray.from_arrays([pa.array(["a", None, "c"])], names=["uid"]),
            "context": pa.StructArray.from_arrays([pa.array(["m", "m", "n"])], names=["ctx"]),
            "item": pa.StructArray.from_arrays(
                [
                    pa.array([["x", "y", "z", "w"], [], None], type=pa.list_(pa.string())),
                    pa.array([3.0, None, float("nan")]),
                ],
                names=["tags", "price"],
            ),
        }
    )


def test_lists_are_truncated_padded_and_missing_values_map_to_padding():
    batch = FeatureEncoder(FIELDS).encode(_table())
    tags = batch.item.multi["tags"]
    assert tags.shape == (3, 3)
    assert (tags[0] != PADDING_ID).all()  # four tags truncated to max_len 3
    assert (tags[1:] == PADDING_ID).all()  # empty list and null list
    assert batch.user.categorical["uid"][1].item() == PADDING_ID
    assert batch.user.categorical["ctx"][0] == batch.user.categorical["ctx"][1]


def test_numerics_are_standardised_and_missing_or_nan_becomes_the_mean():
    batch = FeatureEncoder(FIELDS).encode(_table())
    torch.testing.assert_close(batch.item.numeric[:, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_mean_pooling_ignores_padding():
    fields = (FeatureField("tags", "multi_categorical", "item", buckets=50, max_len=3),)
    emb = FieldEmbeddings(fields, dim=2, init_std=1.0)
    batch = FeatureEncoder(FIELDS).encode(_table())
    pooled = emb(batch.item)[:, 0]
    ids = batch.item.multi["tags"][0]
    torch.testing.assert_close(pooled[0], emb.tables["tags"].weight[ids].mean(dim=0))
    torch.testing.assert_close(pooled[1], torch.zeros(2))


def test_missing_field_names_the_field_and_tower():
    table = _table().drop_columns(["context"])
    with pytest.raises(FeatureError, match="context"):
        FeatureEncoder(FIELDS).encode(table)
    bad = (FeatureField("nope", "categorical", "item"),)
    with pytest.raises(FeatureError, match="'nope'.*item"):
        FeatureEncoder(bad).encode_tower(_table(), "item")


def test_numeric_field_with_strings_is_a_clear_error():
    bad = (FeatureField("uid", "numeric", "user"),)
    with pytest.raises(FeatureError, match="numeric"):
        FeatureEncoder(bad).encode_tower(_table(), "user")


def test_encoding_is_deterministic_across_encoders():
    a = FeatureEncoder(FIELDS).encode(_table())
    b = FeatureEncoder(FIELDS).encode(_table())
    assert np.array_equal(a.item.multi["tags"].numpy(), b.item.multi["tags"].numpy())
