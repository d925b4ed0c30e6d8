"""LSTMForecaster: padded, packed and chunked runs agree; pooling heads ignore padding."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pad_sequence

from sensorlstm.heads import make_pool
from sensorlstm.mask import lengths_to_mask
from sensorlstm.model import LSTMForecaster

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(lengths: list[int], channels: int, pad_value: float = 0.0, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randn(n, channels, generator=generator) for n in lengths]
    inputs = pad_sequence(rows, batch_first=True, padding_value=pad_value)
    return rows, inputs, torch.tensor(lengths)


def test_hparams_rebuild_an_identical_model_through_json():
    model = LSTMForecaster(5, 3, hidden_size=16, num_layers=3, dropout=0.1, base_inputs=8)
    rebuilt = LSTMForecaster(**json.loads(json.dumps(model.hparams)))
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.hparams == model.hparams
    assert rebuilt.adapter is not None and rebuilt.lstm.input_size == 8


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5), seed=st.integers(0, 99))
def test_padded_and_packed_outputs_agree_on_real_steps(lengths, seed):
    torch.manual_seed(seed)
    model = LSTMForecaster(3, 2, hidden_size=8).eval()
    _, inputs, lens = _batch(lengths, 3, pad_value=math.nan, seed=seed)
    mask = lengths_to_mask(lens, inputs.shape[1])
    padded, _ = model(inputs, lens)
    packed, (h, c) = model(inputs, lens, packed=True)
    torch.testing.assert_close(padded[mask], packed[mask])
    assert h.shape == (2, len(lengths), 8) and c.shape == h.shape


def test_packed_final_state_is_each_rows_last_real_step():
    torch.manual_seed(0)
    model = LSTMForecaster(3, 2, hidden_size=8).eval()
    rows, inputs, lens = _batch([6, 2, 4], 3)
    _, (h, c) = model(inputs, lens, packed=True)
    for i, row in enumerate(rows):
        _, (h_i, c_i) = model(row[None])
        torch.testing.assert_close(h[:, i], h_i[:, 0])
        torch.testing.assert_close(c[:, i], c_i[:, 0])


@pytest.mark.parametrize("packed", [False, True])
def test_chunked_run_with_carried_state_equals_one_full_run(packed):
    """Truncated-BPTT windows: rows that finished early have length 0 in later windows."""
    torch.manual_seed(1)
    model = LSTMForecaster(3, 2, hidden_size=8).eval()
    _, inputs, lens = _batch([11, 3, 7], 3, pad_value=1e6)
    mask = lengths_to_mask(lens, inputs.shape[1])
    full, _ = model(inputs, lens, packed=True)
    state, pieces, window = None, [], 4
    for start in range(0, inputs.shape[1], window):
        chunk_lengths = (lens - start).clamp(0, window)
        piece, state = model(inputs[:, start : start + window], chunk_lengths, state, packed)
        pieces.append(piece)
    chunked = torch.cat(pieces, dim=1)
    torch.testing.assert_close(chunked[mask], full[mask])


@pytest.mark.parametrize("packed", [False, True])
def test_rows_of_length_zero_keep_their_state(packed):
    torch.manual_seed(2)
    model = LSTMForecaster(3, 2, hidden_size=8).eval()
    state = (torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    _, inputs, _ = _batch([4, 4, 4], 3)
    _, (h, c) = model(inputs, torch.tensor([4, 0, 0]), state, packed)
    assert torch.equal(h[:, 1:], state[0][:, 1:]) and torch.equal(c[:, 1:], state[1][:, 1:])
    assert not torch.equal(h[:, 0], state[0][:, 0])
    _, (h, _) = model(inputs, torch.tensor([0, 0, 0]), state, packed)
    assert torch.equal(h, state[0])


@pytest.mark.parametrize("head", ["mean", "max", "last", "attention"])
@settings(max_examples=8, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    extra=st.integers(0, 5),
    pad_value=st.sampled_from([0.0, -1e6, math.nan]),
)
def test_pooling_head_output_does_not_depend_on_padding(head, lengths, extra, pad_value):
    torch.manual_seed(3)
    model = LSTMForecaster(3, 2, hidden_size=8, head=head, num_classes=4).eval()
    rows, inputs, lens = _batch(lengths, 3, pad_value=pad_value)
    inputs = torch.cat([inputs, torch.full((len(rows), extra, 3), pad_value)], dim=1)
    logits, _ = model(inputs, lens)
    assert logits.shape == (len(rows), 4)
    for i, row in enumerate(rows):
        alone, _ = model(row[None])
        torch.testing.assert_close(logits[i], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", ["mean", "max", "last", "attention"])
def test_pooling_head_gradients_ignore_nan_padding(head):
    torch.manual_seed(4)
    model = LSTMForecaster(3, 2, hidden_size=8, head=head)
    _, inputs, lens = _batch([5, 2, 0], 3, pad_value=math.nan)
    logits, _ = model(inputs, lens)
    logits.sum().backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unknown_pooling_head_says_which_exist():
    with pytest.raises(ValueError, match="'mean', 'max', 'last' or 'attention'"):
        make_pool("median", 8)  # type: ignore[arg-type]
