"""The prequential trainer: test-then-train, safety rails, window negatives, exact resume."""

import io
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from model.build import build_model
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.features import FeatureEncoder
from model.online import SKIP_NON_FINITE_GRADIENT, SKIP_NON_FINITE_LOSS, OnlineTrainer
from monitoring.quality import roc_auc
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import make_synthetic_like_table

SMALL = ModelConfig(hidden=(32, 32, 16), embedding_dim=8, heads=2, head_dim=8)


def _trainer(window=64, kind="inttower", seed=0):
    torch.manual_seed(seed)
    return OnlineTrainer(build_model(replace(SMALL, kind=kind)), TrainConfig(), OnlineConfig(cir_window=window))


def _batches(n=4, rows=32):
    encoder = FeatureEncoder(SMALL.features)
    return [encoder.encode(make_synthetic_like_table(rows, seed=i)) for i in range(n)]


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_predictions_come_before_the_step():
    trainer = _trainer()
    first, second = _batches(2)
    trainer.step(first)
    expected = trainer.predict(second).numpy()
    result = trainer.step(second)
    np.testing.assert_allclose(result.probabilities, expected)
    assert result.stepped and trainer.steps == 2
    assert not np.allclose(trainer.predict(second).numpy(), expected)  # the step changed the model


def test_non_finite_loss_is_skipped_and_never_applied():
    trainer = _trainer()
    batch = _batches(1)[0]
    trainer.step(batch)
    before = _weights(trainer.model)
    poisoned = replace(batch, labels=batch.labels.clone().fill_(float("nan")))
    result = trainer.step(poisoned)
    assert not result.stepped and result.skipped_reason == SKIP_NON_FINITE_LOSS
    assert trainer.skipped[SKIP_NON_FINITE_LOSS] == 1 and trainer.steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(trainer.model)))


def test_non_finite_gradient_is_skipped_and_never_applied():
    trainer = _trainer()
    batch = _batches(1)[0]
    trainer.step(batch)
    before = _weights(trainer.model)
    handle = next(trainer.model.parameters()).register_hook(lambda g: g * float("inf"))
    result = trainer.step(batch)
    handle.remove()
    assert result.skipped_reason == SKIP_NON_FINITE_GRADIENT
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(trainer.model)))
    assert trainer.step(batch).stepped  # and training goes on


def test_window_fills_fifo_and_feeds_cir():
    trainer = _trainer(window=48)
    batches = _batches(3)
    trainer.step(batches[0])
    assert trainer.window.size == 32
    trainer.step(batches[1])
    assert trainer.window.size == 48 and trainer.window.position == 16
    with_window = trainer.model.loss(batches[2].to("cpu"), None, trainer.window.negatives()).cir
    without = trainer.model.loss(batches[2], None, None).cir
    assert with_window.item() != without.item()


def test_single_event_batch_still_steps():
    trainer = _trainer()
    trainer.step(_batches(1)[0])
    one = _batches(1)[0].select(slice(0, 1))
    result = trainer.step(one)
    assert result.stepped and result.probabilities.shape == (1,)


def test_restored_trainer_continues_exactly():
    a = _trainer(seed=1)
    b1, b2 = _batches(2)
    a.step(b1)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = _trainer(seed=7)  # different initial weights, overwritten by the state
    b.load_state_dict(torch.load(buffer, weights_only=True))
    torch.manual_seed(3)
    ra = a.step(b2)
    torch.manual_seed(3)
    rb = b.step(b2)
    np.testing.assert_array_equal(ra.probabilities, rb.probabilities)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a.model), _weights(b.model)))
    assert b.steps == 2 and b.events_trained == 64


@pytest.mark.slow
def test_prequential_training_learns_the_synthetic_stream():
    table = generate_synthetic_log(SyntheticLogConfig(events=30_000, seed=1, shift_at=1.0))
    encoder = FeatureEncoder(ModelConfig().features)
    trainer = OnlineTrainer(build_model(replace(ModelConfig(), hidden=(64, 64, 32))), TrainConfig(), OnlineConfig())
    probabilities, labels = [], []
    for start in range(0, table.num_rows, 256):
        result = trainer.step(encoder.encode(table.slice(start, 256)))
        probabilities.append(result.probabilities)
        labels.append(result.labels)
    late = slice(len(probabilities) // 2, None)
    auc = roc_auc(np.concatenate(labels[late]), np.concatenate(probabilities[late]))
    assert auc > 0.68, auc


def test_window_negatives_wait_for_the_warm_up():
    torch.manual_seed(0)
    trainer = OnlineTrainer(build_model(SMALL), TrainConfig(), OnlineConfig(cir_window=64, cir_window_warmup_steps=2))
    seen = []
    original = trainer.model.loss

    def spy(batch, output=None, negatives=None):
        seen.append(negatives is not None)
        return original(batch, output, negatives)

    trainer.model.loss = spy
    for batch in _batches(4):
        trainer.step(batch)
    assert seen == [False, False, True, True]


def test_a_continued_fit_scales_step_size_and_batchnorm_momentum_to_each_steps_events():
    from model.offline import fit

    encoder = FeatureEncoder(SMALL.features)
    data = encoder.encode(make_synthetic_like_table(600, seed=3))
    torch.manual_seed(0)
    model = build_model(replace(SMALL, normalization="batch"))
    train = TrainConfig(batch_size=128, max_epochs=1, learning_rate=1e-3)
    result = fit(model, data.select(slice(0, 500)), data.select(slice(500, 600)), train, progress=False)
    assert result.batch_size == 128 and result.steps == 4
    cold, warm = _trainer(window=0), OnlineTrainer(model, train, OnlineConfig())
    warm.continue_from(result)
    norms = [m for m in warm.model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    warm.step(data.select(slice(0, 32)))
    assert warm.steps == 5  # went on from the fit's count: no data-dependent bias start
    assert warm.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 32 / 128)
    assert norms and all(m.momentum == pytest.approx(0.1 * 32 / 128) for m in norms)
    cold.step(_batches(1, rows=32)[0])
    assert cold.optimizer.param_groups[0]["lr"] == TrainConfig().learning_rate  # nothing to scale from
    restored = OnlineTrainer(build_model(replace(SMALL, normalization="batch")), train, OnlineConfig())
    restored.load_state_dict(warm.state_dict())
    assert restored.reference_batch == 128 and _trainer(window=0).reference_batch is None
    root = OnlineTrainer(model, train, OnlineConfig(scale_to_batch="sqrt"))
    root.continue_from(result)
    root.step(data.select(slice(0, 32)))
    assert root.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (32 / 128) ** 0.5)
    off = OnlineTrainer(model, train, OnlineConfig(scale_to_batch="off"))
    off.continue_from(result)
    off.step(data.select(slice(0, 32)))
    assert off.optimizer.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize(("fnw", "in_window"), [(False, 0.0), (True, 0.0), (True, 0.6)])
def test_fnw_weights_undo_the_fake_negatives_bias(fnw, in_window):
    """Each impression labelled once its window passes (positive if clicked within it: a share
    ``in_window`` of the clicks), plus a duplicate positive for each later click. Plain BCE
    learns p / (1 + p (1 - q)) (0.23 with no window); the FNW weights bring it back to p = 0.3."""
    torch.manual_seed(0)
    trainer = OnlineTrainer(build_model(replace(SMALL, kind="lr")), TrainConfig(learning_rate=0.05), OnlineConfig())
    encoder = FeatureEncoder(SMALL.features)
    impressions = pa.concat_tables([make_synthetic_like_table(1, seed=5)] * 200)  # one context: a constant to learn
    rng = np.random.default_rng(1)
    clicked = rng.random(200) < 0.3
    early = clicked & (rng.random(200) < in_window)  # clicked within the window: labelled 1 at once
    late = clicked & ~early  # labelled 0, then a duplicate positive
    label = impressions.schema.get_field_index("label")
    emitted = impressions.set_column(label, "label", pa.array(early.astype(np.int8)))
    duplicates = impressions.filter(pa.array(late)).set_column(label, "label", pa.array(np.ones(late.sum(), dtype=np.int8)))
    stream = encoder.encode(pa.concat_tables([emitted, duplicates]))
    rows = np.ones(len(stream), dtype=bool) if fnw else None
    q = early.sum() / clicked.sum()
    for _ in range(300):
        trainer.step(stream, fnw_rows=rows, fnw_in_window=q if fnw else 0.0)
    mean = float(trainer.predict(encoder.encode(impressions)).mean())
    truth = clicked.mean()
    expected = truth if fnw else truth / (1 + truth * (1 - q))
    assert abs(mean - expected) < 0.03, (mean, expected)
