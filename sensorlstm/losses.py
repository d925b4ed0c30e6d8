"""Masked losses: only real timesteps of a padded batch count, whatever the padding holds.

A padded batch ``(B, T, C)`` carries a ``(B, T)`` boolean mask that is True on real (input,
target) pairs. The loss selects the real entries with boolean indexing instead of multiplying by
the mask: padding may hold NaN (``NaN * 0`` is NaN, in the loss and in its gradient), and a
selected-out entry gets an exact zero gradient.

Reductions:

- ``"mean"``: the sum over real timesteps and channels divided by ``real_timesteps * C``, the
  mean over all real timesteps of the batch (not a mean of per-recording means, which would
  weight a short recording's steps more than a long one's).
- ``"sum"``: the plain sum, for gradient accumulation. Over ``k`` micro-batches the exact mean is
  ``sum_i masked_loss(..., reduction="sum") / (total_real_timesteps * C)``; use
  :func:`loss_denominator` on all micro-batch masks to get that denominator *before* the first
  backward pass, so each micro-batch's backward uses the same scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossKind = Literal["mse", "mae", "huber"]
Reduction = Literal["mean", "sum"]


def masked_loss(
    prediction: Tensor,
    target: Tensor,
    mask: Tensor,
    kind: LossKind = "mse",
    reduction: Reduction = "mean",
    *,
    huber_delta: float = 1.0,
) -> Tensor:
    """Elementwise forecast loss over the real timesteps of a padded batch.

    Args:
        prediction: ``(B, T, C)`` model output (any float dtype; computed in float32).
        target: ``(B, T, C)`` next-step targets, padding may hold any value (NaN included).
        mask: ``(B, T)`` bool, True on real timesteps.
        kind: ``"mse"``, ``"mae"`` or ``"huber"`` (with ``huber_delta``).
        reduction: ``"mean"`` over real timesteps and channels, or ``"sum"``.
        huber_delta: the Huber loss's switch point between quadratic and linear.

    Returns:
        A scalar tensor. With no real timestep, the mean is 0 (not NaN) so an empty
        micro-batch adds nothing.

    Raises:
        ValueError: shapes disagree, or ``kind``/``reduction`` is unknown.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same (B, T, C) shape, got "
            f"{tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    if prediction.dim() != 3 or mask.shape != prediction.shape[:2]:
        raise ValueError(
            f"expected prediction (B, T, C) and mask (B, T), got {tuple(prediction.shape)} and "
            f"{tuple(mask.shape)}"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    mask = mask.to(device=prediction.device, dtype=torch.bool)

    # (N, C): real entries only; padded entries get an exact zero gradient.
    real_prediction = prediction[mask].float()
    real_target = target.to(prediction.device)[mask].float()
    if kind == "mse":
        elementwise = (real_prediction - real_target).square()
    elif kind == "mae":
        elementwise = (real_prediction - real_target).abs()
    elif kind == "huber":
        elementwise = F.huber_loss(
            real_prediction, real_target, reduction="none", delta=huber_delta
        )
    else:
        raise ValueError(f"loss kind must be 'mse', 'mae' or 'huber', got {kind!r}")

    total = elementwise.sum()
    if reduction == "sum":
        return total
    return total / max(elementwise.numel(), 1)


def loss_denominator(masks: Tensor | Iterable[Tensor], n_channels: int) -> int:
    """Real timesteps times channels over one mask or several (micro-batch) masks.

    Dividing the ``"sum"`` losses of all micro-batches by this number gives the exact mean over
    every real timestep of the accumulated step.
    """
    if isinstance(masks, Tensor):
        masks = [masks]
    return int(sum(int(m.sum()) for m in masks)) * n_channels
