"""Properties of collation: shift, masks, packing round trips, chunking and the DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorlstm.bucketing import LengthBucketSampler
from sensorlstm.collate import (
    Batch,
    ForecastCollator,
    RecordingDataset,
    choose_packing,
    make_loader,
    pack_batch,
    unpack_batch,
)
from sensorlstm.losses import masked_loss
from sensorlstm.mask import lengths_to_mask, mask_to_lengths
from sensorlstm.recording import RecordingSet

fast = settings(max_examples=30, deadline=None)
row_counts = st.lists(st.integers(min_value=2, max_value=40), min_size=1, max_size=8)


def _recordings(rows: list[int], seed: int = 0, channels: int = 3) -> RecordingSet:
    rng = np.random.default_rng(seed)
    return RecordingSet.from_arrays(
        [rng.normal(size=(n, channels)).astype(np.float32) for n in rows],
        labels=[rng.integers(0, 2, n) for n in rows],
    )


def _collate(
    rs: RecordingSet, multiple: int | None = None, pad_value: float = 0.0, order=None
) -> Batch:
    dataset = RecordingDataset(rs)
    collator = ForecastCollator(
        [0, 1, 2], [2, 0], pad_to_multiple_of=multiple, pad_value=pad_value
    )
    return collator([dataset[i] for i in (order if order is not None else range(len(rs)))])


@fast
@given(rows=row_counts, multiple=st.sampled_from([None, 1, 8]), pad_value=st.floats(-5, 5))
def test_batch_is_a_shifted_right_padded_copy_with_matching_mask(
    rows: list[int], multiple: int | None, pad_value: float
) -> None:
    rs = _recordings(rows)
    batch = _collate(rs, multiple, pad_value)
    assert batch.lengths.dtype == torch.int64 and batch.lengths.device.type == "cpu"
    assert batch.lengths.tolist() == [n - 1 for n in rows]
    assert torch.equal(mask_to_lengths(batch.mask), batch.lengths)
    assert torch.equal(batch.mask, lengths_to_mask(batch.lengths, batch.mask.shape[1]))
    if multiple:
        assert batch.inputs.shape[1] % multiple == 0
    for row, n in enumerate(rows):
        values = torch.from_numpy(rs.recording(row))
        assert torch.equal(batch.inputs[row, : n - 1], values[:-1, [0, 1, 2]])
        assert torch.equal(batch.targets[row, : n - 1], values[1:, [2, 0]])
        assert torch.equal(
            batch.labels[row, : n - 1], torch.from_numpy(rs.recording_labels(row)[1:])
        )
        assert torch.all(
            batch.inputs[row, n - 1 :] == torch.tensor(pad_value, dtype=torch.float32)
        )
    assert batch.real_timesteps == sum(n - 1 for n in rows)
    assert batch.padding_efficiency == batch.real_timesteps / batch.padded_timesteps


def test_a_single_row_recording_gives_no_pairs_and_cannot_be_packed() -> None:
    batch = _collate(_recordings([1, 5]))
    assert batch.lengths.tolist() == [0, 4]
    assert not batch.mask[0].any()
    with pytest.raises(ValueError, match="recording index 0"):
        pack_batch(batch)


@fast
@given(rows=row_counts, seed=st.integers(0, 1000))
def test_pack_then_unpack_returns_the_input(rows: list[int], seed: int) -> None:
    order = np.random.default_rng(seed).permutation(len(rows))  # unsorted lengths
    batch = _collate(_recordings(rows, seed), order=order)
    padded, lengths = unpack_batch(pack_batch(batch), batch.inputs.shape[1])
    assert torch.equal(lengths, batch.lengths)
    assert torch.equal(padded[batch.mask], batch.inputs[batch.mask])
    assert torch.all(padded[~batch.mask] == 0)


@fast
@given(rows=row_counts, max_length=st.integers(1, 15), multiple=st.sampled_from([None, 8]))
def test_chunks_cover_every_real_pair_exactly_once(
    rows: list[int], max_length: int, multiple: int | None
) -> None:
    batch = _collate(_recordings(rows), multiple)
    seen = torch.zeros_like(batch.mask, dtype=torch.int64)
    start = 0
    for window in batch.chunks(max_length):
        width = window.inputs.shape[1]
        assert 1 <= width <= max_length
        assert torch.equal(window.index, batch.index)
        assert torch.equal(window.mask, lengths_to_mask(window.lengths, width))
        assert torch.equal(window.inputs, batch.inputs[:, start : start + width])
        assert torch.equal(
            window.targets[window.mask], batch.targets[:, start : start + width][window.mask]
        )
        seen[:, start : start + width] += window.mask.long()
        start += width
    assert torch.equal(seen, batch.mask.long())
    assert sum(w.real_timesteps for w in batch.chunks(max_length)) == batch.real_timesteps


def test_carrying_the_state_across_chunks_reproduces_the_full_sequence() -> None:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 6, num_layers=2, batch_first=True)
    batch = _collate(_recordings([30, 7, 19, 2]))
    with torch.no_grad():
        full, _ = lstm(batch.inputs)
        pieces, state = [], None
        for window in batch.chunks(8):
            out, state = lstm(window.inputs, state)
            pieces.append(out)
    chunked = torch.cat(pieces, dim=1)
    assert torch.allclose(chunked[batch.mask], full[batch.mask], atol=1e-6)


def test_chunked_loss_counts_every_real_step_once() -> None:
    """Summed window losses over the batch's real steps equal the unchunked masked mean.

    With the state carried undetached, the gradients are the full sequence's as well; the
    training loop detaches it (truncated BPTT), which changes gradients only, never the loss.
    """
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 6, num_layers=2, batch_first=True)
    batch = _collate(_recordings([30, 7, 19, 2], seed=3), multiple=8, pad_value=float("nan"))
    head = torch.nn.Linear(6, batch.targets.shape[-1])
    inputs = batch.inputs.nan_to_num(0.0)

    full_out, _ = lstm(inputs)
    full = masked_loss(head(full_out), batch.targets, batch.mask)
    full_grads = torch.autograd.grad(full, list(lstm.parameters()))

    total, state, start = torch.zeros(()), None, 0
    for window in batch.chunks(8):
        width = window.inputs.shape[1]
        out, state = lstm(inputs[:, start : start + width], state)
        total = total + masked_loss(head(out), window.targets, window.mask, reduction="sum")
        start += width
    chunked = total / (batch.real_timesteps * batch.targets.shape[-1])
    chunked_grads = torch.autograd.grad(chunked, list(lstm.parameters()))

    assert torch.allclose(chunked, full, atol=1e-6)
    for got, expected in zip(chunked_grads, full_grads, strict=True):
        assert torch.allclose(got, expected, atol=1e-6)


def test_padded_unidirectional_lstm_is_exact_on_real_steps() -> None:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, batch_first=True)
    batch = _collate(_recordings([12, 3, 9], seed=4))
    with torch.no_grad():
        padded_out, _ = lstm(batch.inputs)
        packed_out, _ = lstm(pack_batch(batch))
    unpacked, _ = unpack_batch(packed_out, batch.inputs.shape[1])
    assert torch.allclose(padded_out[batch.mask], unpacked[batch.mask], atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "bidirectional", "final", "expected"),
    [
        ("auto", False, False, False),
        ("auto", True, False, True),
        ("auto", False, True, True),
        ("packed", False, False, True),
        ("padded", True, True, False),
    ],
)
def test_choose_packing_packs_only_where_padding_is_inexact(
    mode: str, bidirectional: bool, final: bool, expected: bool
) -> None:
    assert choose_packing(mode, bidirectional=bidirectional, needs_final_state=final) is expected


def test_choose_packing_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="'auto', 'packed' or 'padded'"):
        choose_packing("sorted", bidirectional=False, needs_final_state=False)


def test_to_keeps_lengths_on_cpu() -> None:
    batch = _collate(_recordings([4, 6])).to("cpu")
    assert batch.lengths.device.type == "cpu"
    assert batch.to(torch.device("cpu"), non_blocking=True).inputs.dtype == torch.float32


def test_batch_without_labels_has_none() -> None:
    rs = RecordingSet.from_arrays([np.ones((4, 3), np.float32), np.ones((6, 3), np.float32)])
    assert _collate(rs).labels is None


def test_dataloader_with_two_workers_yields_every_recording_once() -> None:
    rows = list(np.random.default_rng(3).integers(2, 60, 50))
    rs = _recordings(rows)
    sampler = LengthBucketSampler(rs.lengths - 1, batch_size=6, seed=0)
    loader = make_loader(rs, sampler, ForecastCollator([0, 1, 2], [0]), num_workers=2)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(sampler)
        indices = torch.cat([b.index for b in batches]).tolist()
        assert sorted(indices) == list(range(len(rows)))
        for batch in batches:
            assert batch.lengths.tolist() == [rows[i] - 1 for i in batch.index.tolist()]
