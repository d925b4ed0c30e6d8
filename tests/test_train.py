"""fine_tune / pretrain / the schedule: exact accumulation, freezing, early stopping."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from sensorlstm.checkpoint import build_fleet_model, load_pretrained
from sensorlstm.collate import ForecastCollator, RecordingItem
from sensorlstm.config import BucketConfig, ModelConfig, PretrainConfig, TrainConfig
from sensorlstm.model import LSTMForecaster
from sensorlstm.recording import RecordingSet
from sensorlstm.train import (
    WarmupSchedule,
    accumulate_gradients,
    build_optimizer,
    evaluate_loss,
    fine_tune,
    pretrain,
)

CHANNELS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fleet(n: int, seed: int, labels: bool = False) -> RecordingSet:
    """Noisy sines of random period and length; optional anomaly labels on a late stretch."""
    rng = np.random.default_rng(seed)
    recordings, label_rows = [], []
    for _ in range(n):
        length = int(rng.integers(20, 80))
        t = np.arange(length)[:, None]
        period = rng.uniform(6, 20)
        phase = rng.uniform(0, 2 * np.pi, CHANNELS)
        values = np.sin(2 * np.pi * t / period + phase) + 0.05 * rng.standard_normal(
            (length, CHANNELS)
        )
        row_labels = np.zeros(length, np.int8)
        if labels and rng.random() < 0.5:
            values[length // 2 :] += 3.0
            row_labels[length // 2 :] = 1
        recordings.append(values.astype(np.float32))
        label_rows.append(row_labels)
    return RecordingSet.from_arrays(recordings, labels=label_rows if labels else None)


def _train_cfg(**overrides) -> TrainConfig:
    base = {
        "epochs": 3,
        "lr": 1e-2,
        "warmup_steps": 2,
        "max_length": 16,
        "early_stopping_patience": None,
        "device": "cpu",
        "seed": 0,
    }
    return TrainConfig(**{**base, **overrides})


BUCKETS = BucketConfig(batch_size=4, num_buckets=2)
ALL = np.arange(CHANNELS)


def _model(seed: int = 0, **kwargs) -> LSTMForecaster:
    torch.manual_seed(seed)
    return LSTMForecaster(CHANNELS, CHANNELS, hidden_size=8, **kwargs)


def test_fine_tune_lowers_validation_loss_and_reports_every_epoch():
    train, val = fleet(16, 0), fleet(6, 1)
    model = _model()
    before = evaluate_loss(model, val, input_channels=ALL, target_channels=ALL)
    result = fine_tune(
        model,
        train,
        val,
        input_channels=ALL,
        target_channels=ALL,
        train_cfg=_train_cfg(),
        bucket_cfg=BUCKETS,
    )
    assert len(result.history) == 3 and not result.stopped_early
    for row in result.history:
        assert {
            "train/loss",
            "val/loss",
            "lr",
            "padding_efficiency",
            "epoch_seconds",
            "real_timesteps_per_s",
        } <= set(row)
        assert 0 < row["padding_efficiency"] <= 1
    after = evaluate_loss(model, val, input_channels=ALL, target_channels=ALL)
    assert after < before
    assert after == pytest.approx(result.best_val_loss, rel=1e-5)


def test_target_channels_subset_trains_a_smaller_head():
    train, val = fleet(8, 2), fleet(4, 3)
    model = LSTMForecaster(CHANNELS, 1, hidden_size=8)
    result = fine_tune(
        model,
        train,
        val,
        input_channels=ALL,
        target_channels=[2],
        train_cfg=_train_cfg(epochs=1),
        bucket_cfg=BUCKETS,
    )
    assert math.isfinite(result.history[0]["val/loss"])


def test_accumulated_windows_give_the_gradient_of_one_big_batch():
    recordings = fleet(6, 4)
    collator = ForecastCollator(ALL, ALL, pad_to_multiple_of=4)
    items = [RecordingItem(recordings.recording(i), None, i) for i in range(len(recordings))]
    model = _model(5)

    def grads(batches, max_length):
        model.zero_grad()
        stats = accumulate_gradients(model, batches, max_length=max_length)
        return stats, [p.grad.clone() for p in model.parameters()]

    # Windows start at multiples of max_length in every batch, so truncation points agree.
    one_stats, one = grads([collator(items)], 5)
    split_stats, split = grads([collator(items[:2]), collator(items[2:])], 5)
    assert one_stats.denominator == split_stats.denominator
    assert one_stats.loss_sum == pytest.approx(split_stats.loss_sum, rel=1e-5)
    for a, b in zip(one, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_frozen_epochs_leave_pretrained_weights_untouched_and_scale_their_lr():
    base = _model(6)
    model = LSTMForecaster(CHANNELS, 2, hidden_size=8)  # a new head: 2 targets
    report = load_pretrained(model, base.state_dict())
    lstm_before = [p.detach().clone() for p in model.lstm.parameters()]
    head_before = model.head.weight.detach().clone()
    cfg = _train_cfg(
        epochs=1, freeze_epochs=1, pretrained_lr_scale=0.25, scheduler="constant", warmup_steps=0
    )

    optimizer = build_optimizer(model, cfg, report.pretrained_names)
    rates = {g["pretrained"]: g["lr"] for g in optimizer.param_groups}
    assert rates == {True: pytest.approx(0.25 * cfg.lr), False: pytest.approx(cfg.lr)}

    fine_tune(
        model,
        fleet(8, 8),
        fleet(4, 9),
        input_channels=ALL,
        target_channels=[0, 1],
        train_cfg=cfg,
        bucket_cfg=BUCKETS,
    )
    after = list(model.lstm.parameters())
    assert all(torch.equal(a, b) for a, b in zip(lstm_before, after, strict=True))
    assert not torch.equal(head_before, model.head.weight)


class _Snapshots:
    """Copies the LSTM's (pre-trained) weights at the end of every epoch."""

    def __init__(self, model: LSTMForecaster) -> None:
        self.model = model
        self.epochs: list[list[torch.Tensor]] = []

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs.append([p.detach().clone() for p in self.model.lstm.parameters()])


def test_pretrained_weights_stay_fixed_while_frozen_and_train_after_freeze_epochs():
    model = LSTMForecaster(CHANNELS, 2, hidden_size=8)
    report = load_pretrained(model, _model(6).state_dict())
    initial = [p.detach().clone() for p in model.lstm.parameters()]
    snapshots = _Snapshots(model)
    fine_tune(
        model,
        fleet(8, 8),
        fleet(4, 9),
        input_channels=ALL,
        target_channels=[0, 1],
        train_cfg=_train_cfg(epochs=4, freeze_epochs=2),
        bucket_cfg=BUCKETS,
        callback=snapshots,
        pretrained_names=report.pretrained_names,
    )

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    frozen_0, frozen_1, unfrozen_2, unfrozen_3 = snapshots.epochs
    assert same(frozen_0, initial) and same(frozen_1, initial)
    assert all(not torch.equal(x, y) for x, y in zip(unfrozen_2, initial, strict=True))
    assert not same(unfrozen_3, unfrozen_2)


def test_early_stopping_restores_the_best_epoch():
    train, val = fleet(12, 10), fleet(4, 11)
    model = _model(12)
    cfg = _train_cfg(
        epochs=8, lr=0.3, scheduler="constant", early_stopping_patience=1, grad_clip=None
    )
    result = fine_tune(
        model,
        train,
        val,
        input_channels=ALL,
        target_channels=ALL,
        train_cfg=cfg,
        bucket_cfg=BUCKETS,
    )
    val_losses = [row["val/loss"] for row in result.history]
    assert result.best_val_loss == min(val_losses)
    assert result.best_epoch == int(np.argmin(val_losses))
    if result.stopped_early:
        assert len(val_losses) < cfg.epochs and val_losses[-1] >= result.best_val_loss
    restored = evaluate_loss(model, val, input_channels=ALL, target_channels=ALL, max_length=16)
    assert restored == pytest.approx(result.best_val_loss, rel=1e-5)


def _sequence_accuracy(model: LSTMForecaster, recordings: RecordingSet) -> tuple[float, float]:
    """(accuracy, majority-class rate) of one prediction per recording against its label."""
    model.eval()
    correct = positives = 0
    with torch.no_grad():
        for i in range(len(recordings)):
            values = torch.from_numpy(recordings.recording(i))
            label = int(recordings.recording_labels(i)[1:].max())  # labels of target steps
            logits, _ = model(values[None, :-1])
            correct += int(int(logits.argmax(dim=-1)) == label)
            positives += label
    n = len(recordings)
    return correct / n, max(positives, n - positives) / n


@pytest.mark.parametrize("head", ["mean", "max", "last", "attention"])
def test_configured_sequence_head_learns_which_recordings_have_a_level_shift(head):
    # Half the recordings shift by +3 halfway through; the label says which. Chance is ~50%.
    train, val = fleet(32, 13, labels=True), fleet(40, 14, labels=True)
    model, report = build_fleet_model(
        ModelConfig(head=head, num_classes=2), CHANNELS, CHANNELS, _model(15).state_dict(), seed=0
    )
    assert model.hparams["head"] == head and model.lstm.hidden_size == 8  # shape of the base
    untrained = evaluate_loss(model, val, input_channels=ALL, target_channels=ALL)
    result = fine_tune(
        model,
        train,
        val,
        input_channels=ALL,
        target_channels=ALL,
        train_cfg=_train_cfg(epochs=6, lr=2e-2, scheduler="constant"),
        bucket_cfg=BUCKETS,
        pretrained_names=report.pretrained_names,
    )
    # Cross entropy from chance level (ln 2 = 0.69) to well below it, and the accuracy to match.
    assert untrained > 0.6 and result.best_val_loss < 0.3
    accuracy, majority = _sequence_accuracy(model, val)
    assert majority < 0.7
    assert accuracy >= 0.85, f"{head}: accuracy {accuracy:.2f}, majority class {majority:.2f}"


def test_schedule_warms_up_then_decays_by_cosine_and_plateau():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [parameter], "lr": 1.0, "base_lr": 1.0}])
    cosine = WarmupSchedule(optimizer, kind="cosine", warmup_steps=4, total_steps=20)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        cosine.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(rates[3:]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)

    plateau = WarmupSchedule(optimizer, kind="plateau", warmup_steps=0, total_steps=10)
    plateau.epoch_end(1.0)
    plateau.epoch_end(1.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def test_pretrain_learns_next_step_on_fixed_windows():
    corpus = fleet(20, 16)
    cfg = PretrainConfig(window=12, epochs=4, batch_size=32, lr=1e-2, seed=0)
    model = pretrain(corpus, cfg=cfg, model_cfg=ModelConfig(hidden_size=8), device="cpu")
    untrained = LSTMForecaster(**model.hparams)
    loss = evaluate_loss(model, corpus, input_channels=ALL, target_channels=ALL)
    assert loss < evaluate_loss(untrained, corpus, input_channels=ALL, target_channels=ALL)
    assert model.hparams["num_layers"] == 2 and model.hparams["n_inputs"] == CHANNELS
