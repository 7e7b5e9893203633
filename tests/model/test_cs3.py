"""CS3's add-ons: still decoupled, neutral at the start, each doing what its equation says."""

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from model.build import build_model
from model.config import CS3Config, ModelConfig, OnlineConfig, TrainConfig
from model.features import FeatureEncoder
from model.online import OnlineTrainer
from tests.conftest import make_synthetic_like_table

SMALL = ModelConfig(hidden=(16, 16, 8), embedding_dim=4, heads=2, head_dim=4, normalization="batch")  # CS3's first-pass norms
ALL_ON = CS3Config(cycle_adaptive=True, cross_tower_sync=True, cascade_sharing=True)
ADDONS = {
    "cycle": CS3Config(cycle_adaptive=True),
    "sync": CS3Config(cross_tower_sync=True),
    "cascade": CS3Config(cascade_sharing=True),
    "all": ALL_ON,
}
BACKBONES = ["inttower", "two_tower"]


def _batch(rows=64, seed=0):
    return FeatureEncoder(SMALL.features).encode(make_synthetic_like_table(rows, seed))


def _model(kind, cs3=None, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(replace(SMALL, kind=kind, cs3=cs3 or CS3Config(), **overrides))


def _trained(kind, cs3, steps=5):
    """A model whose gates, FiLM maps, summaries and BatchNorm stats have moved off their start."""
    model = _model(kind, cs3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for i in range(steps):
        loss = model.loss(_batch(64, seed=i)).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _splice(into, row, at):
    """``into`` with ``row`` (a 1-row TowerInputs) inserted at position ``at``."""
    return type(into)(
        {k: torch.cat([v[:at], row.categorical[k], v[at:]]) for k, v in into.categorical.items()},
        {k: torch.cat([v[:at], row.multi[k], v[at:]]) for k, v in into.multi.items()},
        torch.cat([into.numeric[:at], row.numeric, into.numeric[at:]]),
    )


@pytest.mark.parametrize("kind", BACKBONES)
def test_with_every_addon_an_item_vector_depends_on_its_features_only(kind, cpu_threads):
    model = _trained(kind, ALL_ON)
    assert not torch.equal(model.item_encoder.cycle.gate.weight, torch.zeros_like(model.item_encoder.cycle.gate.weight))
    assert int(model.sync.updates) > 0
    batch = _batch(64)
    row = batch.item.select(slice(5, 6))
    alone = model.encode_items(row)
    assert torch.equal(model.encode_items(batch.item)[5:6], alone)
    assert torch.equal(model.encode_items(_splice(_batch(64, seed=9).item, row, 10))[10:11], alone)
    for size in (2, 3, 4, 7, 17):
        assert torch.equal(model.encode_items(batch.item.select(slice(5, 5 + size)))[:1], alone)
    # Scoring other users against it in eval mode changes no state the item side reads.
    summaries = (model.sync.user_summary.clone(), model.sync.item_summary.clone())
    model(_batch(64, seed=11))
    assert torch.equal(model.sync.user_summary, summaries[0]) and torch.equal(model.sync.item_summary, summaries[1])
    assert torch.equal(model.encode_items(row), alone)
    # The user side is decoupled the same way.
    user = batch.user.select(slice(3, 4))
    assert torch.equal(model.encode_user(batch.user)[3:4], model.encode_user(user))


@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("addon", list(ADDONS))
def test_each_addon_starts_exactly_as_the_plain_backbone(kind, addon):
    plain = _model(kind, dropout=0.0)
    extended = _model(kind, ADDONS[addon], dropout=0.0)
    missing, unexpected = extended.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing  # the add-on's own weights are the only difference
    batch = _batch(32)
    for mode in ("eval", "train"):
        getattr(plain, mode)()
        getattr(extended, mode)()
        assert torch.equal(extended(batch).logits, plain(batch).logits), mode
        assert torch.equal(extended.encode_items(batch.item), plain.encode_items(batch.item)), mode


@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("addon", list(ADDONS))
def test_each_addon_switched_off_is_the_plain_backbone_with_the_same_weights(kind, addon):
    trained = _trained(kind, ADDONS[addon])
    plain_state = {k: v for k, v in trained.state_dict().items() if k in _model(kind).state_dict()}
    switched_off = _model(kind, seed=5)
    switched_off.load_state_dict(plain_state)  # strict: every plain weight is there, nothing else
    reference = _model(kind, seed=6)
    reference.load_state_dict(plain_state)
    batch = _batch(32)
    switched_off.eval()
    reference.eval()
    assert switched_off.sync is None and switched_off.cascade is None
    assert switched_off.user_encoder.cycle is None and switched_off.user_encoder.film is None
    assert torch.equal(switched_off(batch).logits, reference(batch).logits)
    assert switched_off.loss(batch).cs3.item() == 0.0


@pytest.mark.parametrize("kind", BACKBONES)
def test_cycle_gates_reweight_the_fields_of_the_final_pass(kind):
    model = _trained(kind, CS3Config(cycle_adaptive=True))
    tower, inputs = model.item_encoder, _batch(16).item
    e = tower.embeddings(inputs)
    if tower.attention is not None:
        e = tower.attention(e)
    _, first = tower.mlp(torch.cat([e.flatten(1), inputs.numeric], dim=1), tower.cycle.first_pass_norms)
    gates = 2 * torch.sigmoid(first @ tower.cycle.gate.weight.T + tower.cycle.gate.bias)
    assert ((gates > 0) & (gates < 2)).all() and not torch.allclose(gates, torch.ones_like(gates))
    _, expected = tower.mlp(torch.cat([(e * gates.unsqueeze(-1)).flatten(1), inputs.numeric], dim=1))
    torch.testing.assert_close(tower(inputs)[1], expected)
    # The first pass keeps BatchNorm statistics of its own (ungated inputs).
    first_norm = tower.cycle.first_pass_norms[0]
    final_norm = tower.mlp.layers[0][1]
    assert not torch.equal(first_norm.running_mean, final_norm.running_mean)


def test_sync_summaries_are_moving_averages_of_the_other_towers_outputs():
    model = _model("two_tower", CS3Config(cross_tower_sync=True, sync_momentum=0.9)).train()
    b1, b2 = _batch(32, seed=1), _batch(32, seed=2)
    out1 = model(b1)
    torch.testing.assert_close(model.sync.user_summary, out1.user_tower.detach().mean(0))
    torch.testing.assert_close(model.sync.item_summary, out1.item_tower.detach().mean(0))
    out2 = model(b2)
    torch.testing.assert_close(model.sync.item_summary, 0.9 * out1.item_tower.detach().mean(0) + 0.1 * out2.item_tower.detach().mean(0))
    model.eval()
    before = model.sync.item_summary.clone()
    model(b1)
    assert torch.equal(model.sync.item_summary, before)  # frozen at serving time


def test_film_scales_and_shifts_the_first_hidden_layer_by_the_other_summary():
    model = _trained("inttower", CS3Config(cross_tower_sync=True))
    tower, inputs = model.user_encoder, _batch(16).user
    summary = model.sync.item_summary
    gamma, beta = (summary @ tower.film.film.weight.T + tower.film.film.bias).chunk(2)
    assert gamma.abs().sum() > 0 and beta.abs().sum() > 0
    x = torch.cat([tower.attention(tower.embeddings(inputs)).flatten(1), inputs.numeric], dim=1)
    h = tower.mlp.layers[0](x) * (1 + gamma) + beta
    for layer in tower.mlp.layers[1:]:
        h = layer(h)
    torch.testing.assert_close(tower(inputs, summary)[1], h)


def test_alignment_term_is_the_distance_between_batch_mean_representations():
    model = _model("inttower", CS3Config(cross_tower_sync=True, alignment_weight=0.3)).train()
    batch = _batch(32)
    torch.manual_seed(1)
    output = model(batch)
    u, v = F.normalize(output.user_tower, dim=-1), F.normalize(output.item_tower, dim=-1)
    expected = 0.3 * (u.mean(0) - v.mean(0)).pow(2).sum()
    torch.testing.assert_close(model.cs3_term(output, batch), expected)
    parts = model.loss(batch, output)
    torch.testing.assert_close(parts.total, parts.bce + parts.cir + parts.l2 + parts.cs3)


def test_cascade_ranker_shares_the_embedding_tables_and_is_distilled_from():
    config = CS3Config(cascade_sharing=True, ranker_weight=0.7, distill_weight=0.4, distill_temperature=2.0)
    model = _model("two_tower", config, dropout=0.0).train()  # two forwards below must agree
    ranker = model.cascade.ranker
    assert ranker.user_embeddings is model.user_encoder.embeddings
    assert ranker.item_embeddings is model.item_encoder.embeddings
    shared = {id(p) for p in model.user_encoder.embeddings.parameters()}
    assert len({id(p) for p in model.parameters()} & shared) == len(shared)  # counted once
    batch = _batch(32)
    output = model(batch)
    r, s, y = output.ranker_logits, output.logits, batch.labels
    t = 2.0
    expected = 0.7 * F.binary_cross_entropy_with_logits(r, y) + 0.4 * t * t * F.binary_cross_entropy_with_logits(
        s / t, torch.sigmoid(r.detach() / t)
    )
    torch.testing.assert_close(model.cs3_term(output, batch), expected)
    # The teacher is detached: distillation moves the pre-ranker, never the ranker head.
    model.zero_grad()
    model.cascade.loss(s, r, y).backward()
    head_with_distill = ranker.head.weight.grad.clone()
    model.zero_grad()
    output = model(batch)
    (0.7 * F.binary_cross_entropy_with_logits(output.ranker_logits, y)).backward()
    torch.testing.assert_close(ranker.head.weight.grad, head_with_distill)
    # Eval mode (serving, prequential scoring) does not run the ranker.
    assert model.eval()(batch).ranker_logits is None


def test_online_trainer_checkpoint_restores_every_addon():
    def trainer(seed):
        torch.manual_seed(seed)
        return OnlineTrainer(build_model(replace(SMALL, cs3=ALL_ON)), TrainConfig(), OnlineConfig())

    a = trainer(1)
    for i in range(3):
        a.step(_batch(32, seed=i))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = trainer(7)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(b.model.sync.item_summary, a.model.sync.item_summary)
    nxt = _batch(32, seed=9)
    torch.manual_seed(3)
    ra = a.step(nxt)
    torch.manual_seed(3)
    rb = b.step(nxt)
    np.testing.assert_array_equal(ra.probabilities, rb.probabilities)
    assert ra.loss == rb.loss
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_lr_rejects_the_addons():
    with pytest.raises(ValueError, match="tower model"):
        replace(SMALL, kind="lr", cs3=CS3Config(cycle_adaptive=True))


def test_a_stand_in_step_leaves_the_sync_summaries_alone():
    torch.manual_seed(0)
    trainer = OnlineTrainer(build_model(replace(SMALL, cs3=CS3Config(cross_tower_sync=True))), TrainConfig(), OnlineConfig())
    trainer.step(_batch(32, seed=1))
    before = trainer.model.sync.item_summary.clone(), int(trainer.model.sync.updates)
    trainer.step(_batch(32, seed=2), loss_weight=0.0)  # a replica without events of its own
    assert torch.equal(trainer.model.sync.item_summary, before[0]) and int(trainer.model.sync.updates) == before[1]
    trainer.step(_batch(32, seed=3))
    assert int(trainer.model.sync.updates) == before[1] + 1
