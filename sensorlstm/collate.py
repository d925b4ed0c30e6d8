"""Collation: recordings -> right-padded next-step batches, plus packing and time chunking.

A recording ``x`` of ``L`` rows gives ``L - 1`` (input, target) pairs, ``inputs[t] = x[t]`` and
``targets[t] = x[t + 1]``. The shift is applied to the whole recording *before* any chunking, so
cutting a batch into time windows (:meth:`Batch.chunks`) never loses or duplicates a pair.

Packed or padded? A unidirectional LSTM reads right-padded input exactly: outputs at real steps
never see the padding after them, and a masked per-timestep loss ignores the padded steps. Only
a bidirectional layer (the backward pass starts in the padding) or a use of the final state
(which would be the state after the padding) needs ``pack_padded_sequence``. Padded is also the
fast path: see :func:`choose_packing` for the measurement.

Known shortcoming: a recording longer than ``train.max_length`` is trained window by window with
the LSTM state carried detached (truncated backpropagation through time), so its loss is exact
but its gradients stop at window borders; raise ``train.max_length`` where memory allows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.utils.data import DataLoader, Dataset, Sampler

from sensorlstm.mask import lengths_to_mask
from sensorlstm.recording import RecordingSet

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """A right-padded batch of next-step (input, target) pairs.

    Attributes:
        inputs: ``(B, T, C_in)`` float32, padded with the collator's ``pad_value``.
        targets: ``(B, T, C_out)`` float32, ``targets[:, t]`` is the row after ``inputs[:, t]``.
        mask: ``(B, T)`` bool, True on real (input, target) pairs.
        lengths: ``(B,)`` int64 on CPU, ``= mask.sum(1)``; a recording of L rows gives L - 1.
        index: ``(B,)`` int64 recording index in the RecordingSet.
        labels: ``(B, T)`` int8 anomaly label of the target step, or None.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    lengths: Tensor
    index: Tensor
    labels: Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy on ``device``; ``lengths`` stays on the CPU (packing needs it there)."""
        moved = {
            f.name: getattr(self, f.name)
            if f.name == "lengths" or getattr(self, f.name) is None
            else getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
        }
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        """Page-locked copy (DataLoader calls this when ``pin_memory=True``)."""
        pinned = {
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name).pin_memory()
            for f in fields(self)
        }
        return Batch(**pinned)

    def chunks(self, max_length: int) -> Iterator[Batch]:
        """Consecutive time windows of at most ``max_length`` steps (truncated BPTT).

        Rows and their order are the same in every window; lengths are clamped per window, so a
        row that has finished has length 0 (and an all-False mask) in later windows. A row still
        running at a window's end is real through the whole window, so an LSTM state carried
        (detached) into the next window is exact for every row that still has steps. Windows
        stop at the longest row's end, so trailing ``pad_to_multiple_of`` padding is not
        visited; an empty batch yields nothing.

        Args:
            max_length: window length in timesteps, >= 1.

        Yields:
            One :class:`Batch` per window, with views (no copies) of this batch's tensors.
        """
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        longest = int(self.lengths.max()) if self.lengths.numel() else 0
        for start in range(0, longest, max_length):
            stop = min(start + max_length, self.inputs.shape[1])
            window_lengths = (self.lengths - start).clamp(min=0, max=stop - start)
            yield Batch(
                inputs=self.inputs[:, start:stop],
                targets=self.targets[:, start:stop],
                mask=self.mask[:, start:stop],
                lengths=window_lengths,
                index=self.index,
                labels=None if self.labels is None else self.labels[:, start:stop],
            )

    @property
    def real_timesteps(self) -> int:
        """(input, target) pairs that carry data."""
        return int(self.lengths.sum())

    @property
    def padded_timesteps(self) -> int:
        """Timesteps the model computes, ``B * T``."""
        return int(self.mask.shape[0] * self.mask.shape[1])

    @property
    def padding_efficiency(self) -> float:
        """``real / padded`` timesteps (1.0 for an empty batch)."""
        padded = self.padded_timesteps
        return self.real_timesteps / padded if padded else 1.0


class RecordingItem(NamedTuple):
    """One dataset item: a recording's values (a view), its labels and its index."""

    values: np.ndarray
    labels: np.ndarray | None
    index: int


class RecordingDataset(Dataset):
    """Map-style dataset over a RecordingSet: item ``i`` is recording ``i``, not copied."""

    def __init__(self, recordings: RecordingSet) -> None:
        self.recordings = recordings

    def __len__(self) -> int:
        return len(self.recordings)

    def __getitem__(self, i: int) -> RecordingItem:
        return RecordingItem(
            self.recordings.recording(i), self.recordings.recording_labels(i), int(i)
        )


class ForecastCollator:
    """Turns recordings into a right-padded next-step :class:`Batch`.

    Args:
        input_channels: column indices of the model inputs (``RecordingSet.select_channels``).
        target_channels: column indices the model forecasts.
        pad_to_multiple_of: round ``T`` up to a multiple (e.g. 8 for tensor cores).
        pad_value: fill value of padded inputs and targets (the mask hides them).
    """

    def __init__(
        self,
        input_channels: Sequence[int] | np.ndarray,
        target_channels: Sequence[int] | np.ndarray,
        pad_to_multiple_of: int | None = None,
        pad_value: float = 0.0,
    ) -> None:
        self.input_channels = np.asarray(input_channels, dtype=np.int64)
        self.target_channels = np.asarray(target_channels, dtype=np.int64)
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1 or None, got {pad_to_multiple_of}")
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_value = float(pad_value)

    def __call__(self, items: Sequence[RecordingItem]) -> Batch:
        pairs = np.array([max(len(item.values) - 1, 0) for item in items], dtype=np.int64)
        total = int(pairs.max()) if len(items) else 0
        if self.pad_to_multiple_of:
            total = -(-total // self.pad_to_multiple_of) * self.pad_to_multiple_of
        size = len(items)
        inputs = np.full((size, total, self.input_channels.size), self.pad_value, np.float32)
        targets = np.full((size, total, self.target_channels.size), self.pad_value, np.float32)
        has_labels = size > 0 and all(item.labels is not None for item in items)
        labels = np.zeros((size, total), np.int8) if has_labels else None

        # Shift the whole recording once: row t is the input, row t + 1 its target.
        for row, (item, n) in enumerate(zip(items, pairs, strict=True)):
            if n == 0:
                continue
            values = item.values
            inputs[row, :n] = values[:-1, self.input_channels]
            targets[row, :n] = values[1:, self.target_channels]
            if labels is not None:
                labels[row, :n] = item.labels[1:]

        lengths = torch.from_numpy(pairs)
        return Batch(
            inputs=torch.from_numpy(inputs),
            targets=torch.from_numpy(targets),
            mask=lengths_to_mask(lengths, total),
            lengths=lengths,
            index=torch.tensor([item.index for item in items], dtype=torch.int64),
            labels=None if labels is None else torch.from_numpy(labels),
        )


def pack_batch(batch: Batch) -> PackedSequence:
    """Pack ``batch.inputs`` (``enforce_sorted=False``); the inverse is :func:`unpack_batch`.

    Raises:
        ValueError: a row has no (input, target) pair; packing needs at least one step per row.
    """
    if batch.lengths.numel() and int(batch.lengths.min()) < 1:
        row = int(torch.argmin(batch.lengths))
        raise ValueError(
            f"cannot pack recording index {int(batch.index[row])}: it has no (input, target) "
            f"pair (fewer than 2 rows); filter it out (data.min_length) or use padded mode"
        )
    return pack_padded_sequence(
        batch.inputs, batch.lengths.cpu(), batch_first=True, enforce_sorted=False
    )


def unpack_batch(packed: PackedSequence, total_length: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`pack_batch`: ``(padded (B, total_length, C), lengths (B,))``."""
    padded, lengths = pad_packed_sequence(packed, batch_first=True, total_length=total_length)
    return padded, lengths


def choose_packing(
    mode: Literal["auto", "packed", "padded"], *, bidirectional: bool, needs_final_state: bool
) -> bool:
    """Whether to pack the LSTM input.

    ``"auto"`` packs only where padded + mask is not exact: bidirectional layers, or a use of
    the final state (sequence heads). Otherwise it keeps the padded path, measured faster: in
    ``benchmarks/bucketing.py`` an LSTM(8->64, 2 layers) forward+backward step on this 2-core CPU
    ran 27x slower packed than padded on the same length-bucketed batches of log-normal
    lengths, 144x on heavy-tailed ones (16000 recordings, 1 thread; ``benchmarks/train.py``'s
    full fine-tuning step: 7x); rerun the benchmark's packing table after a torch upgrade.

    Args:
        mode: ``"auto"``, ``"packed"`` or ``"padded"`` (``train.packing``).
        bidirectional: the model has a bidirectional LSTM.
        needs_final_state: the head reads the final hidden state.

    Returns:
        True to pack.
    """
    exact_padded = not (bidirectional or needs_final_state)
    if mode == "auto":
        return not exact_padded
    if mode == "packed":
        return True
    if mode == "padded":
        if not exact_padded:
            logger.warning(
                "packing='padded' with %s is not exact: padded steps leak into the result; "
                "use packing='auto' or 'packed'",
                "a bidirectional LSTM" if bidirectional else "the final state",
            )
        return False
    raise ValueError(f"packing must be 'auto', 'packed' or 'padded', got {mode!r}")


def make_loader(
    recordings: RecordingSet,
    sampler: Sampler[list[int]],
    collator: ForecastCollator,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding :class:`Batch` es in the sampler's batches.

    The batch sampler runs in the main process; workers only collate, so the sampler's
    ``set_epoch`` and ``state_dict`` behave the same for any ``num_workers``.
    """
    return DataLoader(
        RecordingDataset(recordings),
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
