"""Anomaly scores: equal to a one-recording-at-a-time reference, whatever the batching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from sensorlstm.model import LSTMForecaster
from sensorlstm.recording import RecordingSet
from sensorlstm.scoring import fit_error_scale, rolling_mean, score_recordings

CHANNELS = ["a", "b", "c"]
TARGETS = ["a", "c"]


class ZeroForecaster(nn.Module):
    """Predicts 0 for every target: the squared error is the target squared."""

    def __init__(self, n_outputs: int) -> None:
        super().__init__()
        self.n_outputs = n_outputs
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, inputs: Tensor, lengths=None, state=None, packed=False):
        return inputs.new_zeros(*inputs.shape[:2], self.n_outputs), state


def _fleet(lengths: list[int], seed: int = 0) -> RecordingSet:
    rng = np.random.default_rng(seed)
    recordings = [rng.normal(size=(n, len(CHANNELS))).astype(np.float32) for n in lengths]
    labels = [np.zeros(n, np.int8) for n in lengths]
    return RecordingSet.from_arrays(recordings, channels=CHANNELS, labels=labels)


def _model(seed: int = 0) -> LSTMForecaster:
    torch.manual_seed(seed)
    return LSTMForecaster(len(CHANNELS), len(TARGETS), hidden_size=8, num_layers=2)


def _reference(model: nn.Module, rs: RecordingSet, scale: np.ndarray | None) -> list[np.ndarray]:
    """One recording per forward pass, no padding, no batching: the definition of the score."""
    inputs_idx, target_idx = rs.select_channels(CHANNELS), rs.select_channels(TARGETS)
    out = []
    with torch.no_grad():
        for i in range(len(rs)):
            x = torch.from_numpy(rs.recording(i))
            prediction, _ = model(x[None, :-1, inputs_idx])
            errors = (prediction[0] - x[1:, target_idx]).pow(2).double().numpy()
            per_step = (errors if scale is None else errors / scale).mean(axis=1)
            out.append(np.r_[per_step[:1], per_step])
    return out


@settings(max_examples=20, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 40), min_size=1, max_size=9),
    batch_size=st.integers(1, 5),
    max_length=st.one_of(st.none(), st.integers(1, 17)),
    scaled=st.booleans(),
    packed=st.booleans(),
)
def test_scores_match_the_unbatched_reference(
    lengths, batch_size, max_length, scaled, packed
) -> None:
    rs = _fleet(lengths)
    model = _model()
    scale = np.array([0.5, 4.0]) if scaled else None

    scores = score_recordings(
        model,
        rs,
        input_channels=CHANNELS,
        target_channels=TARGETS,
        batch_size=batch_size,
        max_length=max_length,
        packed=packed,
        error_scale=scale,
    )

    assert [len(s) for s in scores] == lengths, "one score per row, in the set's order"
    for got, expected in zip(scores, _reference(model, rs, scale), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
        assert got[0] == got[1], "step 0 has no prediction and copies step 1"


def test_channel_indices_work_like_names() -> None:
    rs, model = _fleet([12, 30, 7]), _model(1)
    by_name = score_recordings(model, rs, input_channels=CHANNELS, target_channels=TARGETS)
    by_index = score_recordings(model, rs, input_channels=[0, 1, 2], target_channels=[0, 2])
    for a, b in zip(by_name, by_index, strict=True):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=60),
    window=st.integers(1, 10),
)
def test_rolling_mean_is_a_trailing_mean(values, window) -> None:
    values = np.array(values)
    expected = pd.Series(values).rolling(window, min_periods=1).mean().to_numpy()
    np.testing.assert_allclose(rolling_mean(values, window), expected, rtol=1e-9, atol=1e-9)


def test_smoothing_is_causal() -> None:
    rs = _fleet([50])
    later = RecordingSet.from_arrays(
        [np.r_[rs.recording(0)[:30], rs.recording(0)[30:] + 100.0]], channels=CHANNELS
    )
    kwargs = {"input_channels": CHANNELS, "target_channels": TARGETS, "smoothing": 5}
    model = ZeroForecaster(len(TARGETS))
    before = score_recordings(model, rs, **kwargs)[0]
    after = score_recordings(model, later, **kwargs)[0]
    np.testing.assert_array_equal(before[:30], after[:30])
    assert (after[30:] > before[30:]).all()


def test_error_scale_estimates_each_channels_error_variance() -> None:
    rng = np.random.default_rng(3)
    spread = np.array([1.0, 7.0, 20.0])
    recordings = [(rng.normal(size=(400, 3)) * spread).astype(np.float32) for _ in range(5)]
    labels = [np.zeros(400, np.int8) for _ in range(5)]
    for rec, lab in zip(recordings, labels, strict=True):
        rec[100:140] = 1e4  # labelled anomalies must not inflate the estimate
        lab[100:140] = 1
    rs = RecordingSet.from_arrays(recordings, channels=CHANNELS, labels=labels)

    scale = fit_error_scale(
        ZeroForecaster(len(TARGETS)), rs, input_channels=CHANNELS, target_channels=TARGETS
    )

    np.testing.assert_allclose(scale, spread[[0, 2]] ** 2, rtol=0.15)


def test_scaled_scores_weigh_channels_equally() -> None:
    # Channel "c" is 20x noisier than "a"; after scaling both contribute about 1 per step.
    rng = np.random.default_rng(4)
    recording = (rng.normal(size=(3000, 3)) * [1.0, 1.0, 20.0]).astype(np.float32)
    rs = RecordingSet.from_arrays([recording], channels=CHANNELS)
    model = ZeroForecaster(len(TARGETS))
    kwargs = {"input_channels": CHANNELS, "target_channels": TARGETS}
    scale = fit_error_scale(model, rs, **kwargs)
    scores = score_recordings(model, rs, error_scale=scale, **kwargs)[0]
    assert np.mean(scores) == pytest.approx(1.0, rel=0.1)


def test_a_single_step_recording_scores_nan_and_others_are_unaffected() -> None:
    rs, model = _fleet([1, 10, 1]), _model()
    scores = score_recordings(
        model, rs, input_channels=CHANNELS, target_channels=TARGETS, batch_size=3
    )
    assert np.isnan(scores[0]).all() and np.isnan(scores[2]).all()
    assert np.isfinite(scores[1]).all() and len(scores[1]) == 10


def test_bad_arguments_are_explained() -> None:
    rs, model = _fleet([10]), _model()
    kwargs = {"input_channels": CHANNELS, "target_channels": TARGETS}
    with pytest.raises(ValueError, match="one positive value per target channel"):
        score_recordings(model, rs, error_scale=[1.0], **kwargs)
    with pytest.raises(ValueError, match="smoothing"):
        score_recordings(model, rs, smoothing=0, **kwargs)
    with pytest.raises(KeyError, match="not in this data set"):
        score_recordings(model, rs, input_channels=["zz"], target_channels=TARGETS)


def test_scoring_leaves_the_model_in_eval_mode_without_gradients() -> None:
    rs, model = _fleet([20, 25]), _model()
    model.train()
    scores = score_recordings(model, rs, input_channels=CHANNELS, target_channels=TARGETS)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(isinstance(s, np.ndarray) and s.dtype == np.float64 for s in scores)
