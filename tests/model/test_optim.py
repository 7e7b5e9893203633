"""The trainers' optimizers: row-wise Adagrad on the tables, separate rates, exact checkpoints."""

import io
from dataclasses import replace

import pytest
import torch

from model.build import build_model
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.features import FeatureEncoder
from model.online import OnlineTrainer
from model.optim import RowwiseAdagrad, build_optimizer, clip_grad_norm, sparse_table_gradients
from tests.conftest import make_synthetic_like_table

SMALL = ModelConfig(hidden=(16, 16, 8), embedding_dim=4, heads=2, head_dim=4, normalization="layer", wide=True)
ROWWISE = TrainConfig(embedding_optimizer="rowwise_adagrad", embedding_learning_rate=0.05)
ADAM = TrainConfig(embedding_optimizer="adam")  # the paper's: one Adam over everything


def _batch(rows=16, seed=0):
    return FeatureEncoder(SMALL.features).encode(make_synthetic_like_table(rows, seed))


def test_rowwise_adagrad_steps_touched_rows_by_their_own_history():
    table = torch.nn.Embedding(6, 3, padding_idx=0)
    with torch.no_grad():
        table.weight[1:] = torch.arange(15, dtype=torch.float32).view(5, 3) / 10
    before = table.weight.detach().clone()
    optimizer = RowwiseAdagrad(table.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        table(torch.tensor([2, 2, 4, 0])).pow(2).sum().backward()
        grads = table.weight.grad.clone()
        optimizer.step()
    after = table.weight.detach()
    assert torch.equal(after[[0, 1, 3, 5]], before[[0, 1, 3, 5]])  # padding and untouched rows: no decay, no step
    state = optimizer.state[table.weight]["sum"]
    assert torch.equal(state[[0, 1, 3, 5]], torch.zeros(4))
    # row 4 by hand: g = 2 w + 0.5 w (looked up once; L2 on the touched row), s += mean(g^2)
    w, s = before[4].clone(), torch.zeros(())
    for _ in range(2):
        g = 2 * w + 0.5 * w
        s = s + g.pow(2).mean()
        w = w - 0.1 * g / (s.sqrt() + 1e-8)
    torch.testing.assert_close(after[4], w)
    torch.testing.assert_close(state[4], s)
    assert grads[2].abs().sum() > 0


@pytest.mark.parametrize("sum_events", [True, False])
def test_a_row_steps_on_its_own_events_however_many_share_the_batch(sum_events):
    """``[train] table_gradient = "event_sum"``: a row looked up once in a batch of 5 steps as in a batch of 1."""
    steps = {}
    for ids in ([3], [3, 1, 2, 4, 5]):
        torch.manual_seed(0)
        table = torch.nn.Embedding(6, 3, padding_idx=0)
        optimizer = _trainer_optimizer(table, sum_events)
        for _ in range(3):
            optimizer.zero_grad()
            table(torch.tensor(ids)).sum(dim=1).pow(2).mean().backward()  # a batch-mean loss
            optimizer.step(len(ids))
        steps[len(ids)] = table.weight[3].detach().clone()
    assert torch.allclose(steps[1], steps[5]) == sum_events


def _trainer_optimizer(table: torch.nn.Embedding, sum_events: bool):
    from model.optim import EMBEDDINGS, TrainOptimizer

    return TrainOptimizer({EMBEDDINGS: RowwiseAdagrad(table.parameters(), lr=0.1, weight_decay=0.5, sum_events=sum_events)})


def test_tables_and_dense_layers_get_their_own_optimizer_and_rate():
    model = build_model(SMALL)
    assert build_optimizer(model, TrainConfig()).param_groups[1]["lr"] == 0.01  # row-wise Adagrad's own default rate
    optimizer = build_optimizer(model, ROWWISE)
    assert not model.table_l2_in_loss  # the optimizer applies lambda_2 to the rows it steps
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["embeddings"]["lr"] == 0.05 and groups["dense"]["lr"] == TrainConfig().learning_rate
    tables = {id(p) for t in model.field_embeddings() for p in t.parameters()}
    assert {id(p) for p in groups["embeddings"]["params"]} == tables
    assert len(groups["dense"]["params"]) + len(tables) == len(list(model.parameters()))
    adam = build_optimizer(model, replace(ADAM, embedding_learning_rate=0.01))
    assert model.table_l2_in_loss
    assert [g["lr"] for g in adam.param_groups] == [TrainConfig().learning_rate, 0.01]
    single = build_optimizer(model, ADAM)
    assert [p for g in single.param_groups for p in g["params"]] == list(model.parameters())  # a single Adam, as before


def test_rowwise_trainer_restores_exactly_and_keeps_untouched_rows():
    torch.manual_seed(1)
    a = OnlineTrainer(build_model(SMALL), ROWWISE, OnlineConfig())
    first, second = _batch(seed=1), _batch(seed=2)
    a.step(first)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(7)
    b = OnlineTrainer(build_model(SMALL), ROWWISE, OnlineConfig())
    b.load_state_dict(torch.load(buffer, weights_only=True))
    item_table = b.model.item_encoder.embeddings.tables["item_id"].weight
    untouched = torch.ones(item_table.shape[0], dtype=torch.bool)
    untouched[second.item.categorical["item_id"]] = False
    before = item_table.detach().clone()
    torch.manual_seed(3)
    ra = a.step(second)
    torch.manual_seed(3)
    rb = b.step(second)
    assert (ra.probabilities == rb.probabilities).all()
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))
    assert torch.equal(item_table.detach()[untouched], before[untouched])
    assert not torch.equal(item_table.detach()[~untouched], before[~untouched])


def test_state_of_another_embedding_optimizer_is_refused():
    adam = OnlineTrainer(build_model(SMALL), ADAM, OnlineConfig())
    adam.step(_batch())
    rowwise = OnlineTrainer(build_model(SMALL), ROWWISE, OnlineConfig())
    with pytest.raises(ValueError, match="embedding_optimizer differs"):
        rowwise.load_state_dict(adam.state_dict())


def test_a_single_adams_state_from_before_the_split_still_loads():
    torch.manual_seed(0)
    trainer = OnlineTrainer(build_model(SMALL), ADAM, OnlineConfig())
    trainer.step(_batch())
    state = trainer.state_dict()
    old = {**state, "optimizer": state["optimizer"]["dense"]}  # what a checkpoint held: one Adam's state dict
    restored = OnlineTrainer(build_model(SMALL), ADAM, OnlineConfig())
    restored.load_state_dict(old)
    assert restored.optimizer.param_groups[0]["base_lr"] == TrainConfig().learning_rate
    moments = zip(state["optimizer"]["dense"]["state"].values(), restored.optimizer.state_dict()["dense"]["state"].values())
    assert all(torch.equal(a["exp_avg"], b["exp_avg"]) for a, b in moments)


def test_scaling_to_the_batch_keeps_each_groups_own_rate():
    trainer = OnlineTrainer(build_model(SMALL), replace(ROWWISE, batch_size=64), OnlineConfig())
    trainer.reference_batch = 64
    trainer.scale_to_batch(16)
    rates = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates == pytest.approx({"dense": 1e-3 / 4, "embeddings": 0.05 / 4})


def _one_step(sparse: bool, max_norm: float):
    torch.manual_seed(0)
    model = build_model(SMALL)
    optimizer = build_optimizer(model, ROWWISE)
    sparse_table_gradients(model, sparse)
    model.train()
    model.loss(_batch(seed=4)).total.backward()
    assert model.item_encoder.embeddings.tables["item_id"].weight.grad.is_sparse == sparse
    norm = clip_grad_norm(list(model.parameters()), max_norm)
    optimizer.step()
    return norm, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("max_norm", [1e-3, 1e3], ids=["clipped", "not clipped"])
def test_sparse_and_dense_table_gradients_step_alike(max_norm):
    """Sparse gradients (the fast path) and dense ones (all-reduced ranks) give the same step and norm."""
    sparse_norm, sparse_weights = _one_step(True, max_norm)
    dense_norm, dense_weights = _one_step(False, max_norm)
    torch.testing.assert_close(sparse_norm, dense_norm)
    for a, b in zip(sparse_weights, dense_weights):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
