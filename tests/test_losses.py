"""The masked loss equals the per-recording unpadded computation, for any padding value."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pad_sequence

from sensorlstm.losses import loss_denominator, masked_loss
from sensorlstm.mask import lengths_to_mask
from sensorlstm.model import LSTMForecaster

N_IN, N_OUT = 3, 2

lengths_strategy = st.lists(st.integers(1, 12), min_size=1, max_size=5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _recordings(lengths: list[int], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(length + 1, N_IN, generator=generator) for length in lengths]


def _model(seed: int = 0) -> LSTMForecaster:
    torch.manual_seed(seed)
    return LSTMForecaster(N_IN, N_OUT, hidden_size=8, num_layers=2)


def _padded(recordings: list[torch.Tensor], pad_value: float):
    """Inputs x[t], targets x[t + 1] (first N_OUT channels), right-padded with ``pad_value``."""
    inputs = pad_sequence([r[:-1] for r in recordings], batch_first=True, padding_value=pad_value)
    targets = pad_sequence(
        [r[1:, :N_OUT] for r in recordings], batch_first=True, padding_value=pad_value
    )
    lengths = torch.tensor([len(r) - 1 for r in recordings])
    return inputs, targets, lengths, lengths_to_mask(lengths, inputs.shape[1])


TORCH_LOSSES = {
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "huber": F.huber_loss,  # delta 1.0, masked_loss's default
}


def _reference(model: LSTMForecaster, recordings: list[torch.Tensor], kind: str):
    """torch's own loss, recording by recording without padding, divided by all real steps.

    Independent of :func:`masked_loss`: no mask, no padding, ``torch.nn.functional``'s loss.
    """
    model.zero_grad()
    total_entries = sum(len(r) - 1 for r in recordings) * N_OUT
    loss = torch.zeros(())
    for recording in recordings:
        prediction, _ = model(recording[None, :-1])
        target = recording[None, 1:, :N_OUT]
        loss = loss + TORCH_LOSSES[kind](prediction, target, reduction="sum")
    loss = loss / total_entries
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _batched(model, inputs, targets, lengths, mask, kind, packed):
    model.zero_grad()
    prediction, _ = model(inputs, lengths, packed=packed)
    loss = masked_loss(prediction, targets, mask, kind)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_close(a, b) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    lengths=lengths_strategy,
    seed=st.integers(0, 1000),
    kind=st.sampled_from(["mse", "mae", "huber"]),
    packed=st.booleans(),
    pad_value=st.sampled_from([0.0, 1e6, math.nan]),
)
def test_padded_and_packed_loss_and_gradients_equal_per_recording_computation(
    lengths, seed, kind, packed, pad_value
):
    recordings = _recordings(lengths, seed)
    model = _model(seed)
    inputs, targets, lens, mask = _padded(recordings, pad_value)
    _assert_close(
        _batched(model, inputs, targets, lens, mask, kind, packed),
        _reference(model, recordings, kind),
    )


@settings(max_examples=10, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 10), min_size=2, max_size=6),
    split=st.integers(1, 5),
    seed=st.integers(0, 1000),
    packed=st.booleans(),
)
def test_accumulated_sum_over_total_real_steps_equals_one_big_batch(lengths, split, seed, packed):
    split = min(split, len(lengths) - 1)
    recordings = _recordings(lengths, seed)
    model = _model(seed)
    micro_batches = [_padded(recordings[:split], 0.0), _padded(recordings[split:], math.nan)]
    denominator = loss_denominator([m for *_, m in micro_batches], N_OUT)

    model.zero_grad()
    total = torch.zeros(())
    for inputs, targets, lens, mask in micro_batches:
        prediction, _ = model(inputs, lens, packed=packed)
        loss = masked_loss(prediction, targets, mask, reduction="sum") / denominator
        loss.backward()
        total += loss.detach()
    accumulated = (total, [p.grad.clone() for p in model.parameters()])

    _assert_close(accumulated, _reference(model, recordings, "mse"))


@pytest.mark.parametrize("pad_value", [0.0, 1e6, math.nan, math.inf])
def test_padding_values_change_neither_loss_nor_gradients(pad_value):
    recordings = _recordings([7, 2, 5], seed=3)
    model = _model(3)
    baseline = _batched(model, *_padded(recordings, 0.0), "mse", packed=False)
    padded = _batched(model, *_padded(recordings, pad_value), "mse", packed=False)
    _assert_close(padded, baseline)
    assert all(torch.isfinite(g).all() for g in padded[1])


def test_mean_is_over_real_timesteps_not_mean_of_per_recording_means():
    prediction = torch.zeros(2, 4, 1)
    target = torch.tensor([[1.0, 0, 0, 0], [3.0, 3.0, 3.0, 3.0]]).unsqueeze(-1)
    mask = torch.tensor([[True, False, False, False], [True, True, True, True]])
    # Real squared errors: 1 and 9, 9, 9, 9 -> mean 37 / 5, not (1 + 9) / 2.
    assert masked_loss(prediction, target, mask).item() == pytest.approx(37 / 5)
    assert masked_loss(prediction, target, mask, reduction="sum").item() == pytest.approx(37)


def test_empty_mask_gives_zero_not_nan():
    prediction = torch.randn(2, 3, 2, requires_grad=True)
    loss = masked_loss(prediction, torch.randn(2, 3, 2), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(prediction.grad, torch.zeros_like(prediction))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 2\) and \(2, 3, 1\)"):
        masked_loss(torch.zeros(2, 3, 2), torch.zeros(2, 3, 1), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="huber"):
        masked_loss(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), torch.ones(1, 1), kind="l3")
