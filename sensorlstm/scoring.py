"""Per-timestep anomaly scores from the forecaster's next-step prediction error.

A step is suspicious when the model, having seen the recording up to the previous step,
predicts it badly. For a recording of length ``L`` the model makes ``L - 1`` predictions
(targets ``x[1] .. x[L-1]``); the score of step ``t >= 1`` is the mean over target channels of
the squared prediction error of ``x[t]``, each channel's error optionally divided by its typical
error (``error_scale``, see :func:`fit_error_scale`) so that a channel that is always hard to
forecast does not drown out the others.

Step 0 has no prediction; its score is defined as a copy of step 1's, so every recording gets
one score per row (aligned with its labels and timestamps) and step 0 is flagged only together
with step 1. A recording of a single step has no prediction at all and scores NaN.

Optional smoothing is a trailing (causal) rolling mean over ``smoothing`` steps, shorter at the
start of a recording, so the score of a step never depends on later steps and the same scores
can be computed online.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from sensorlstm.bucketing import LengthBucketSampler
from sensorlstm.collate import Batch, ForecastCollator, make_loader
from sensorlstm.recording import RecordingSet

logger = logging.getLogger(__name__)

# Median of a chi-square variable with one degree of freedom: for Gaussian residuals,
# median(err**2) / _CHI2_1_MEDIAN estimates the error variance, robustly to anomalies.
_CHI2_1_MEDIAN = 0.454936


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _channel_indices(recordings: RecordingSet, channels: Sequence[str | int]) -> np.ndarray:
    """Column indices of channels given by name (or already as indices)."""
    if all(isinstance(c, int | np.integer) for c in channels):
        return np.asarray(channels, dtype=np.int64)
    return recordings.select_channels([str(c) for c in channels])


def squared_errors(
    model: nn.Module,
    recordings: RecordingSet,
    *,
    input_channels: Sequence[str | int],
    target_channels: Sequence[str | int],
    device: torch.device | str | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    packed: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(recording index, squared errors (L - 1, C_out) float32)`` for every recording.

    Batches are formed from recordings of similar length (sorted, no shuffle) to keep padding
    small. With ``max_length`` a batch is run in consecutive windows of at most that many
    steps, the LSTM state carried from one window to the next, which gives the same errors as
    one pass (up to float rounding) with bounded memory. The model is put in eval mode and run
    under ``torch.no_grad()``; the order of the yielded recordings is the batch order, not the
    set's order.

    Args:
        model: a forecaster with ``forward(inputs, lengths=None, state=None, packed=False) ->
            (prediction (B, T, C_out), state)``.
        recordings: the recordings to score (normalised like the training data).
        input_channels: channels the model reads, in its order, by name (or column index).
        target_channels: channels it forecasts, in its order, by name (or column index).
        device: where to run; None uses the model's device.
        batch_size: recordings per batch.
        max_length: longest window run at once, or None for whole recordings.
        packed: run the LSTM on packed sequences instead of padded + mask.
    """
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
    device = _model_device(model) if device is None else torch.device(device)
    model.eval()
    pairs = np.maximum(recordings.lengths - 1, 0)
    sampler = LengthBucketSampler(pairs, batch_size=batch_size, shuffle=False)
    collator = ForecastCollator(
        _channel_indices(recordings, input_channels), _channel_indices(recordings, target_channels)
    )
    loader = make_loader(recordings, sampler, collator)

    with torch.no_grad():
        for batch in loader:
            batch = batch.to(device)
            windows = [batch] if max_length is None else list(batch.chunks(max_length))
            state = None
            per_row: list[list[np.ndarray]] = [[] for _ in range(len(batch.index))]
            for window in windows:
                if window.real_timesteps == 0:
                    continue  # only single-step recordings: nothing to predict
                prediction, state = model(
                    window.inputs, lengths=window.lengths, state=state, packed=packed
                )
                errors = (prediction.float() - window.targets.float()).pow(2).cpu().numpy()
                for row, n in enumerate(window.lengths.tolist()):
                    if n > 0:
                        per_row[row].append(errors[row, :n])
            for row, recording in enumerate(batch.index.tolist()):
                n_targets = len(target_channels)
                parts = per_row[row] or [np.zeros((0, n_targets), np.float32)]
                yield int(recording), np.concatenate(parts).astype(np.float32, copy=False)


def fit_error_scale(
    model: nn.Module,
    recordings: RecordingSet,
    *,
    input_channels: Sequence[str | int],
    target_channels: Sequence[str | int],
    device: torch.device | str | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    packed: bool = False,
    floor: float = 1e-8,
    max_rows: int = 2_000_000,
) -> np.ndarray:
    """Each target channel's typical squared prediction error, from (validation) recordings.

    The estimate is ``median(err**2) / 0.455``, the error variance for Gaussian residuals; a
    median rather than a mean so that anomalies in the validation split barely move it.
    Labelled anomalous steps are also left out when the recordings carry labels.

    Args:
        model, recordings, input_channels, target_channels, device, batch_size, max_length,
            packed: as for :func:`squared_errors`.
        floor: smallest scale returned, so a channel the model predicts perfectly (a constant
            sensor) does not divide by zero.
        max_rows: at most about this many residual rows are kept for the median (every k-th
            step of each recording), bounding memory on a large validation split.

    Returns:
        float64 ``(C_out,)``, to pass as ``error_scale`` to :func:`score_recordings`.
    """
    stride = max(1, -(-recordings.n_rows // max_rows))
    collected = []
    for index, errors in squared_errors(
        model,
        recordings,
        input_channels=input_channels,
        target_channels=target_channels,
        device=device,
        batch_size=batch_size,
        max_length=max_length,
        packed=packed,
    ):
        labels = recordings.recording_labels(index)
        if labels is not None and len(errors):
            errors = errors[np.asarray(labels[1:]) == 0]  # target steps 1..L-1
        collected.append(errors[::stride])
    if not collected or sum(len(e) for e in collected) == 0:
        raise ValueError(
            "cannot fit the error scale: the recordings give no normal (input, target) pairs; "
            "pass recordings of at least 2 steps"
        )
    stacked = np.concatenate(collected).astype(np.float64)
    scale = np.median(stacked, axis=0) / _CHI2_1_MEDIAN
    logger.info(
        "error scale per target channel: %s",
        dict(zip(map(str, target_channels), np.round(scale, 5).tolist(), strict=True)),
    )
    return np.maximum(scale, floor)


def score_recordings(
    model: nn.Module,
    recordings: RecordingSet,
    *,
    input_channels: Sequence[str | int],
    target_channels: Sequence[str | int],
    device: torch.device | str | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    packed: bool = False,
    smoothing: int = 1,
    error_scale: np.ndarray | Sequence[float] | None = None,
) -> list[np.ndarray]:
    """Anomaly score of every timestep of every recording (higher is more anomalous).

    Args:
        model, recordings, input_channels, target_channels, device, batch_size, max_length,
            packed: as for :func:`squared_errors`.
        smoothing: trailing rolling-mean window in steps (1 = no smoothing).
        error_scale: per-target-channel divisor of the squared error (from
            :func:`fit_error_scale`), or None to use raw squared errors.

    Returns:
        One float64 array of length ``L`` per recording, in the order of ``recordings``; step
        0 copies step 1 (see the module docstring).
    """
    if smoothing < 1:
        raise ValueError(f"smoothing must be >= 1, got {smoothing}")
    scale = None
    if error_scale is not None:
        scale = np.asarray(error_scale, dtype=np.float64).reshape(-1)
        if scale.size != len(target_channels) or not np.all(scale > 0):
            raise ValueError(
                f"error_scale must hold one positive value per target channel "
                f"({len(target_channels)}: {list(target_channels)}), got {scale.tolist()}; "
                "refit it with fit_error_scale on the same target channels"
            )

    scores: list[np.ndarray | None] = [None] * len(recordings)
    for index, errors in squared_errors(
        model,
        recordings,
        input_channels=input_channels,
        target_channels=target_channels,
        device=device,
        batch_size=batch_size,
        max_length=max_length,
        packed=packed,
    ):
        per_step = errors.astype(np.float64)
        if scale is not None:
            per_step = per_step / scale
        scores[index] = _full_length(per_step.mean(axis=1), smoothing)

    missing = [recordings.ids[i] for i, s in enumerate(scores) if s is None]
    if missing:
        raise RuntimeError(
            f"the loader skipped {len(missing)} recordings (first: {missing[:3]}); scoring "
            "needs every recording, so the sampler must not drop any"
        )
    return scores  # type: ignore[return-value]


def _full_length(target_scores: np.ndarray, smoothing: int) -> np.ndarray:
    """Scores of steps 1..L-1 -> smoothed scores of steps 0..L-1 (step 0 copies step 1)."""
    if target_scores.size == 0:
        return np.full(1, np.nan)
    smoothed = rolling_mean(target_scores, smoothing)
    return np.concatenate([smoothed[:1], smoothed])


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start), same length."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values.copy()
    sums = np.cumsum(np.r_[0.0, values])
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def batch_step_scores(
    prediction: torch.Tensor, batch: Batch, error_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, T)`` per-step scores of one batch (padding steps are 0), for in-loop validation.

    Args:
        prediction: ``(B, T, C_out)`` forecasts for ``batch.targets``.
        batch: the batch the prediction belongs to.
        error_scale: ``(C_out,)`` divisor on the model's device, or None.
    """
    errors = (prediction.float() - batch.targets.float()).pow(2)
    if error_scale is not None:
        errors = errors / error_scale
    scores = errors.mean(dim=-1)
    return torch.where(batch.mask, scores, torch.zeros_like(scores))
