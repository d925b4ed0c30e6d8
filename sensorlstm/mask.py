"""Masks for right-padded batches: True where a timestep holds real data."""

from __future__ import annotations

import torch
from torch import Tensor


def lengths_to_mask(lengths: Tensor, total_length: int | None = None) -> Tensor:
    """Boolean ``(B, T)`` mask, True on the first ``lengths[b]`` steps of row ``b``.

    Args:
        lengths: ``(B,)`` integer lengths (any device).
        total_length: ``T``; defaults to ``lengths.max()`` (0 for an empty batch).

    Returns:
        A bool tensor on the device of ``lengths``.
    """
    if total_length is None:
        total_length = int(lengths.max()) if lengths.numel() else 0
    steps = torch.arange(total_length, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def mask_to_lengths(mask: Tensor) -> Tensor:
    """Inverse of :func:`lengths_to_mask` for right-padded masks: ``(B,)`` int64 lengths."""
    return mask.sum(dim=1, dtype=torch.int64)
