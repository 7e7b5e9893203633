"""The models' contracts: decoupled item vectors, switchable parts, the loss of eq 12."""

from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from model.build import build_model
from model.config import ModelConfig
from model.features import FeatureEncoder
from model.inttower import IntTower, LightSE
from tests.conftest import make_synthetic_like_table

#: The paper's towers (BatchNorm, no per-side scalars) and the defaults (LayerNorm, scalars):
#: the same contracts hold for both.
SMALL = ModelConfig(hidden=(16, 16, 8), embedding_dim=4, heads=2, head_dim=4, normalization="batch", wide=False)
FRESH = replace(SMALL, normalization="layer", wide=True)
STREAM = replace(FRESH, normalization="stream")


def _batch(rows=64, seed=0):
    return FeatureEncoder(SMALL.features).encode(make_synthetic_like_table(rows, seed))


@pytest.mark.parametrize("base", [SMALL, FRESH, STREAM], ids=["paper", "fresh", "stream"])
@pytest.mark.parametrize("kind", ["inttower", "two_tower", "lr"])
def test_item_vector_is_bit_identical_whatever_else_is_in_the_batch(kind, base, cpu_threads):
    torch.manual_seed(0)
    model = build_model(replace(base, kind=kind))
    batch = _batch(64)
    model.train()
    model.loss(batch).total.backward()  # moves BatchNorm running stats off their defaults
    model.eval()
    alone = model.encode_items(batch.item.select(slice(5, 6)))
    with_others = model.encode_items(batch.item)[5:6]
    other_batch = _batch(64, seed=9).item
    mixed = model.encode_items(
        type(other_batch)(
            {k: torch.cat([v[:10], batch.item.categorical[k][5:6], v[10:]]) for k, v in other_batch.categorical.items()},
            {k: torch.cat([v[:10], batch.item.multi[k][5:6], v[10:]]) for k, v in other_batch.multi.items()},
            torch.cat([other_batch.numeric[:10], batch.item.numeric[5:6], other_batch.numeric[10:]]),
        )
    )[10:11]
    assert torch.equal(alone, with_others)
    assert torch.equal(alone, mixed)
    for size in (2, 3, 4, 7, 17):  # small batches take other GEMM code paths
        assert torch.equal(model.encode_items(batch.item.select(slice(5, 5 + size)))[:1], alone)


@pytest.mark.parametrize("base", [SMALL, FRESH, STREAM], ids=["paper", "fresh", "stream"])
@pytest.mark.parametrize("kind", ["inttower", "two_tower", "lr"])
def test_score_of_encoded_parts_equals_forward(kind, base):
    torch.manual_seed(0)
    model = build_model(replace(base, kind=kind)).eval()
    batch = _batch(16)
    logits = model(batch).logits
    torch.testing.assert_close(model.score(model.encode_user(batch.user), model.encode_items(batch.item)), logits)
    # one user against every candidate equals that user paired row by row
    one_user = model.encode_user(batch.user.select(slice(3, 4)))
    items = model.encode_items(batch.item)
    paired = model.score(one_user.expand(16, *one_user.shape[1:]), items)
    torch.testing.assert_close(model.score(one_user, items), paired)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("kind", ["inttower", "two_tower"])
def test_wide_scalars_add_exactly_to_the_towers_logit(kind, similarity):
    torch.manual_seed(0)
    model = build_model(replace(FRESH, kind=kind, similarity=similarity)).eval()
    with torch.no_grad():
        for side in (model.user_wide, model.item_wide):
            for table in side.weights.tables.values():
                table.weight.normal_()  # scalars of order 1, far from their start
        model.fe.log_scale.add_(0.7)  # a learnt temperature: the user coordinates must follow it
        batch = _batch(32)
        logits = model(batch).logits
        scalars = model.user_wide(batch.user) + model.item_wide(batch.item)
        items = model.encode_items(batch.item)
        assert items.shape[-1] == (4 if kind == "inttower" else 8) + 2  # the item's scalar is stored with its heads
        model.user_wide = model.item_wide = None
        towers_alone = model(batch).logits
    assert scalars.abs().mean() > 1.0
    torch.testing.assert_close(logits, towers_alone + scalars, rtol=0, atol=1e-5)


def test_layer_norm_trains_on_one_event_as_on_a_batch():
    """BatchNorm has no statistics of one row; LayerNorm normalises each row alone."""
    torch.manual_seed(0)
    model = build_model(FRESH)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    one = _batch(8).select(slice(2, 3))
    model.train()
    model.loss(one).total.backward()
    first_linear = model.user_encoder.mlp.layers[0][0]
    assert first_linear.weight.grad.abs().sum() > 0
    model.eval()
    torch.testing.assert_close(model(_batch(8)).logits[2:3], model(one).logits)


def test_inttower_switches_remove_their_parts():
    assert isinstance(IntTower(SMALL).user_encoder.attention, LightSE)
    assert IntTower(replace(SMALL, light_se="off")).user_encoder.attention is None
    no_fe = IntTower(replace(SMALL, fe_block=False)).eval()
    assert no_fe.user_projections is None
    batch = _batch(8)
    assert no_fe.encode_items(batch.item).shape == (8, 1, SMALL.hidden[-1])
    assert IntTower(SMALL).encode_user(batch.user).shape == (8, len(SMALL.hidden), SMALL.heads, SMALL.head_dim)


def test_fe_projects_layer_inputs_like_the_authors_code_or_layer_outputs():
    inputs = IntTower(SMALL)
    outputs = IntTower(replace(SMALL, fe_user_layers="layer_outputs"))
    first_in = inputs.user_encoder.mlp.dims[0]
    assert [p.in_features for p in inputs.user_projections] == [first_in, 16, 16]
    assert [p.in_features for p in outputs.user_projections] == [16, 16, 8]


def test_loss_is_bce_plus_weighted_cir_plus_weighted_l2():
    torch.manual_seed(0)
    config = replace(SMALL, cir_weight=0.3, l2_embedding=1e-3)
    model = IntTower(config)
    batch = _batch(32)
    output = model(batch)
    parts = model.loss(batch, output)
    from model.inttower import cir_loss

    bce = F.binary_cross_entropy_with_logits(output.logits, batch.labels)
    cir = cir_loss(output.cir_user, output.cir_item, batch.labels, batch.item_ids, config.cir_temperature)
    l2 = sum(t.weight.pow(2).sum() for enc in (model.user_encoder, model.item_encoder) for t in enc.embeddings.tables.values())
    torch.testing.assert_close(parts.total, bce + 0.3 * cir + 1e-3 * l2)
    assert IntTower(replace(SMALL, cir_weight=0.0)).loss(batch).cir.item() == 0.0


def test_two_tower_logit_is_scaled_cosine_plus_bias():
    torch.manual_seed(0)
    model = build_model(replace(SMALL, kind="two_tower")).eval()
    batch = _batch(8)
    _, u = model.user_encoder(batch.user)
    _, v = model.item_encoder(batch.item)
    expected = model.fe.log_scale.exp() * F.cosine_similarity(u, v) + model.fe.bias
    torch.testing.assert_close(model(batch).logits, expected)


def test_user_tower_parameters_count_only_the_user_side():
    model = IntTower(SMALL)
    user = sum(p.numel() for p in model.user_encoder.parameters()) + sum(p.numel() for p in model.user_projections.parameters())
    assert model.user_tower_parameters() == user
    assert user < sum(p.numel() for p in model.parameters())
