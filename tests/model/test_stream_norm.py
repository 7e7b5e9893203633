"""StreamNorm: train forward = eval forward at any batch size, statistics that move per event."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from model.build import build_model
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.features import FeatureEncoder
from model.online import OnlineTrainer
from model.stream_norm import StreamNorm, batch_gradients
from tests.conftest import make_synthetic_like_table

STREAM = ModelConfig(hidden=(16, 16, 8), embedding_dim=4, heads=2, head_dim=4, normalization="stream", norm_horizon_events=50)


def _norm(features: int = 6, horizon: int = 1000, batch_gradient: bool = False) -> StreamNorm:
    torch.manual_seed(0)
    norm = StreamNorm(features, horizon_events=horizon)
    norm.batch_gradient = batch_gradient
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm


def _served(norm: StreamNorm, x: torch.Tensor) -> torch.Tensor:
    norm.eval()
    try:
        with torch.no_grad():
            return norm(x)
    finally:
        norm.train()


# (Two shuffled rows are left out: their scale is often clipped, r outside [1/3, 3].)
@pytest.mark.parametrize(("rows", "batch_gradient"), [(1, False), (2, False), (64, False), (1, True), (64, True)])
def test_training_forward_equals_the_served_forward_before_the_update(rows, batch_gradient):
    norm = _norm(batch_gradient=batch_gradient)
    norm(torch.randn(500, 6) * 2.0 + 3.0)  # statistics away from the (0, 1) start
    x = torch.randn(rows, 6) * 2.0 + 3.0
    served = _served(norm, x)
    trained = norm(x)
    assert torch.allclose(trained, served, atol=1e-5)
    assert not torch.allclose(_served(norm, x), served)  # and the step moved the statistics


@pytest.mark.parametrize("rows", [2, 3, 64])
def test_a_stream_batch_trains_on_running_statistics_not_on_its_own(rows):
    """A time-ordered batch's own mean is signal (a user's burst): BatchNorm's gradient removes it."""
    x = torch.randn(1, 6) + 3.0 * torch.arange(rows).unsqueeze(1)  # rows 3 apart: eps is negligible
    for norm in (_norm(), nn.BatchNorm1d(6)):
        inputs, sigma = x.clone().requires_grad_(), (norm.running_var + norm.eps).sqrt()
        output = norm(inputs)
        output.square().sum().backward()
        if isinstance(norm, StreamNorm):  # the gradient of (x - mu) / sigma * w + b
            assert torch.allclose(inputs.grad, 2 * output.detach() * norm.weight.detach() / sigma, atol=1e-5)
        elif rows == 2:
            assert float(inputs.grad.abs().max()) < 1e-4  # two rows normalise to +-1 whatever x is


def test_a_batch_whose_statistics_are_the_running_ones_trains_as_batchnorm():
    """Shuffled batches (`batch_gradients`), r = 1 and d = 0: the forward and the input gradient are BatchNorm's."""
    x = torch.randn(32, 6) * 2.0 + 3.0
    norm, reference = _norm(), nn.BatchNorm1d(6)
    reference.load_state_dict({k: v for k, v in norm.state_dict().items() if k != "events_tracked"})
    with torch.no_grad():
        norm.running_mean.copy_(x.mean(0))
        norm.running_var.copy_(x.var(0, unbiased=False))
    grad = torch.randn(32, 6)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    with batch_gradients(nn.Sequential(norm)):
        norm(ours).backward(grad)
    assert not norm.batch_gradient
    expected = reference(theirs)
    expected.backward(grad)
    assert torch.allclose(norm.eval()(x), expected, atol=1e-4)
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 7, 500])
def test_running_statistics_track_the_data_at_any_batch_size(batch):
    torch.manual_seed(1)
    data = torch.randn(6000, 6) * torch.linspace(0.5, 3.0, 6) + torch.linspace(-4.0, 4.0, 6)
    norm = _norm(horizon=1000)
    for start in range(0, len(data), batch):
        norm(data[start : start + batch])
    assert int(norm.events_tracked) == len(data)
    recent = data[-3000:]
    assert torch.allclose(norm.running_mean, recent.mean(0), atol=0.25)
    assert torch.allclose(norm.running_var.sqrt(), recent.std(0), rtol=0.15)


def test_the_first_events_replace_the_start_at_once():
    """A cumulative mean while fewer than the horizon's events are seen: no wait on (0, 1)."""
    norm = _norm(horizon=10_000)
    for value in (10.0, 12.0, 14.0):
        norm(torch.full((1, 6), value))
    assert torch.allclose(norm.running_mean, torch.full((6,), 12.0 * 3 / 4))  # the start counts as one event
    assert bool((norm.running_var > 1.0).all())


def test_a_model_on_stream_norm_steps_on_single_events_and_checkpoints_exactly():
    encoder = FeatureEncoder(STREAM.features)
    data = encoder.encode(make_synthetic_like_table(40, seed=4))
    torch.manual_seed(0)
    trainer = OnlineTrainer(build_model(STREAM), TrainConfig(), OnlineConfig())
    norms = [m for m in trainer.model.modules() if isinstance(m, StreamNorm)]
    assert len(norms) == 2 * len(STREAM.hidden)
    for row in range(20):
        result = trainer.step(data.select(slice(row, row + 1)))
        assert result.stepped
    assert all(int(m.events_tracked) == 20 for m in norms)  # (one event: no data-dependent bias start)
    before = [m.running_mean.clone() for m in norms]
    trainer.step(data.select(slice(20, 22)), loss_weight=0.0)  # a stand-in leaves them alone
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, before))
    restored = OnlineTrainer(build_model(STREAM), TrainConfig(), OnlineConfig())
    restored.load_state_dict(trainer.state_dict())
    batch = data.select(slice(22, 40))
    assert torch.equal(trainer.predict(batch), restored.predict(batch))
    losses = []
    for each in (trainer, restored):
        torch.manual_seed(5)  # the same dropout masks
        losses.append(each.step(batch).loss)
    assert losses[0] == losses[1]


def test_cs3_first_pass_norms_are_stream_norms_too():
    model = build_model(replace(STREAM, cs3=replace(STREAM.cs3, cycle_adaptive=True)))
    gates = [m for m in model.modules() if hasattr(m, "first_pass_norms")]
    assert gates and all(isinstance(n, StreamNorm) and n.horizon_events == 50 for g in gates for n in g.first_pass_norms)
