"""Masked pooling heads: one vector per recording from a padded ``(B, T, H)`` sequence.

For a sequence-level target (one label per recording, such as a fault type) the LSTM's per-step
hidden states are pooled over the real timesteps only, so a recording gets the same pooled
vector whether it sits alone in a batch or beside a longer one. Padded positions are excluded by
selection (``torch.where``), never by multiplying with the mask, so whatever the padding holds
cannot leak into the result or its gradient.

Every pool maps ``(hidden (B, T, H), mask (B, T) bool) -> (B, H)``; a row with no real step
pools to zeros.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

PoolKind = Literal["mean", "max", "last", "attention"]


class MaskedMeanPool(nn.Module):
    """Mean of the hidden states over real timesteps."""

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        real = mask.unsqueeze(-1)
        total = torch.where(real, hidden, torch.zeros_like(hidden)).sum(dim=1)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)
        return total / count


class MaskedMaxPool(nn.Module):
    """Channelwise maximum of the hidden states over real timesteps."""

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        real = mask.unsqueeze(-1)
        lowest = torch.finfo(hidden.dtype).min
        pooled = torch.where(real, hidden, torch.full_like(hidden, lowest)).amax(dim=1)
        return torch.where(mask.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))


class LastStepPool(nn.Module):
    """The hidden state at each recording's last real timestep (the mask must be a prefix)."""

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(dim=1)
        last = (lengths - 1).clamp(min=0)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return torch.where((lengths > 0).unsqueeze(-1), pooled, torch.zeros_like(pooled))


class AttentionPool(nn.Module):
    """Softmax-weighted sum of hidden states, the weights learned and restricted to real steps."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        scores = self.score(hidden).squeeze(-1)  # (B, T)
        scores = torch.where(mask, scores, torch.full_like(scores, float("-inf")))
        # A row with no real step would be softmax over all -inf (NaN): give it uniform zeros.
        scores = torch.where(mask.any(dim=1, keepdim=True), scores, torch.zeros_like(scores))
        weights = torch.softmax(scores, dim=1)
        weights = torch.where(mask, weights, torch.zeros_like(weights))
        return torch.einsum("bt,bth->bh", weights, torch.where(mask.unsqueeze(-1), hidden, 0.0))


def make_pool(kind: PoolKind, hidden_size: int) -> nn.Module:
    """The pooling module for ``ModelConfig.head`` (``mean``, ``max``, ``last``, ``attention``).

    Raises:
        ValueError: ``kind`` is not one of the four.
    """
    if kind == "mean":
        return MaskedMeanPool()
    if kind == "max":
        return MaskedMaxPool()
    if kind == "last":
        return LastStepPool()
    if kind == "attention":
        return AttentionPool(hidden_size)
    raise ValueError(
        f"pooling head must be 'mean', 'max', 'last' or 'attention', got {kind!r} "
        "(use head='forecast' for next-step forecasting)"
    )
