"""The LSTM forecaster: optional input adapter -> pre-trained LSTM -> forecast or pooling head.

Shapes are batch-first throughout: inputs ``(B, T, C_in)``, hidden states ``(B, T, H)``,
predictions ``(B, T, C_out)`` for the next-step forecast head or ``(B, num_classes)`` logits for
a sequence-level pooling head.

What fine-tuning reuses from a pre-trained model (see :mod:`sensorlstm.checkpoint`):

- the LSTM layers (``lstm.*``) always; their input size is the pre-trained model's channel count
  (``base_inputs``). A fleet with another channel count gets ``adapter``, a learned linear
  projection from its channels to ``base_inputs``, in front of them;
- the forecast head (``head.*``) when the fleet forecasts as many channels as the pre-trained
  model did; otherwise, or for a pooling head, a new head is initialised.

Padded versus packed (``forward(packed=...)``): with right padding a unidirectional LSTM's
outputs at real timesteps do not depend on the padding, so padded + mask is exact for the loss
and usually faster (cuDNN and oneDNN run one dense kernel). Padded inputs are zeroed before the
LSTM so that padding values such as NaN cannot reach the gradients through ``0 * NaN``. The
final state of a row that ends inside the window is exact only in packed mode; the chunked
training loop never needs it (a row that continues into the next window fills this one).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sensorlstm.heads import make_pool
from sensorlstm.mask import lengths_to_mask

HeadKind = Literal["forecast", "mean", "max", "last", "attention"]
State = tuple[Tensor, Tensor]


class LSTMForecaster(nn.Module):
    """Next-step multichannel forecaster (or sequence classifier) around ``nn.LSTM``.

    Args:
        n_inputs: channels the model reads.
        n_outputs: channels it forecasts (the target channels); ignored by pooling heads.
        hidden_size: LSTM hidden units per layer.
        num_layers: stacked LSTM layers.
        dropout: dropout between LSTM layers (0 with one layer).
        base_inputs: input size of the (pre-trained) LSTM; when it differs from ``n_inputs`` an
            input adapter projects the fleet's channels onto it. None means ``n_inputs``.
        head: ``"forecast"`` (per-step forecast) or a pooling head ``"mean"``, ``"max"``,
            ``"last"``, ``"attention"`` giving one prediction per recording.
        num_classes: outputs of a pooling head.
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
        base_inputs: int | None = None,
        head: HeadKind = "forecast",
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        base_inputs = n_inputs if base_inputs is None else int(base_inputs)
        self._hparams: dict[str, Any] = {
            "n_inputs": int(n_inputs),
            "n_outputs": int(n_outputs),
            "hidden_size": int(hidden_size),
            "num_layers": int(num_layers),
            "dropout": float(dropout),
            "base_inputs": base_inputs,
            "head": head,
            "num_classes": int(num_classes),
        }
        self.adapter: nn.Linear | None = None
        if base_inputs != n_inputs:
            self.adapter = nn.Linear(n_inputs, base_inputs)
            # Identity on the shared channels: if the first channels mean what the pre-trained
            # model's did, the pre-trained LSTM initially sees them unchanged.
            with torch.no_grad():
                self.adapter.weight.copy_(torch.eye(base_inputs, n_inputs))
                self.adapter.bias.zero_()
        self.lstm = nn.LSTM(
            base_inputs,
            hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.pool: nn.Module | None = None
        if head == "forecast":
            self.head = nn.Linear(hidden_size, n_outputs)
        else:
            self.pool = make_pool(head, hidden_size)
            self.head = nn.Linear(hidden_size, num_classes)

    @property
    def hparams(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``LSTMForecaster(**model.hparams)`` rebuilds it."""
        return dict(self._hparams)

    @property
    def is_sequence_head(self) -> bool:
        """True for a pooling head (one output per recording)."""
        return self.pool is not None

    def forward(
        self,
        inputs: Tensor,
        lengths: Tensor | None = None,
        state: State | None = None,
        packed: bool = False,
    ) -> tuple[Tensor, State]:
        """Run the model over a right-padded batch.

        Args:
            inputs: ``(B, T, n_inputs)``; padding may hold any value.
            lengths: ``(B,)`` real timesteps per row (0 allowed: the row keeps its state);
                None means every row is ``T`` long.
            state: ``(h, c)``, each ``(num_layers, B, H)``, from the previous window, or None.
            packed: run through ``pack_padded_sequence`` instead of padded + mask.

        Returns:
            ``(prediction, (h, c))``: prediction is ``(B, T, n_outputs)`` for the forecast head
            (values at padded steps are meaningless) or ``(B, num_classes)`` for a pooling head.
        """
        batch, steps, _ = inputs.shape
        if lengths is None:
            mask = None
        else:
            lengths = lengths.to(device="cpu", dtype=torch.int64)
            mask = lengths_to_mask(lengths.to(inputs.device), steps)
            inputs = torch.where(mask.unsqueeze(-1), inputs, torch.zeros_like(inputs))
        features = inputs if self.adapter is None else self.adapter(inputs)

        if packed and lengths is not None:
            hidden, new_state = self._run_packed(features, lengths, state)
        else:
            hidden, new_state = self.lstm(features, state)
            if lengths is not None and bool((lengths == 0).any()):
                new_state = _keep_state_of_empty_rows(new_state, state, lengths)

        if self.pool is not None:
            real = mask if mask is not None else torch.ones(batch, steps, dtype=torch.bool)
            return self.head(self.pool(hidden, real.to(hidden.device))), new_state
        return self.head(hidden), new_state

    def _run_packed(
        self, features: Tensor, lengths: Tensor, state: State | None
    ) -> tuple[Tensor, State]:
        """Packed run; rows of length 0 (finished recordings in a chunk) are left out."""
        batch, steps, _ = features.shape
        if state is None:
            zeros = features.new_zeros(self.lstm.num_layers, batch, self.lstm.hidden_size)
            state = (zeros, zeros.clone())
        active = torch.nonzero(lengths > 0).squeeze(1)
        if len(active) == 0:
            hidden = features.new_zeros(batch, steps, self.lstm.hidden_size)
            return hidden, state
        on_device = active.to(features.device)
        packed = pack_padded_sequence(
            features.index_select(0, on_device),
            lengths.index_select(0, active),
            batch_first=True,
            enforce_sorted=False,
        )
        sub_state = (state[0].index_select(1, on_device), state[1].index_select(1, on_device))
        out, (h, c) = self.lstm(packed, sub_state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
        if len(active) == batch:
            return out, (h, c)
        hidden = out.new_zeros(batch, steps, out.shape[-1]).index_copy(0, on_device, out)
        new_h = state[0].to(h.dtype).index_copy(1, on_device, h)
        new_c = state[1].to(c.dtype).index_copy(1, on_device, c)
        return hidden, (new_h, new_c)


def _keep_state_of_empty_rows(new_state: State, old_state: State | None, lengths: Tensor) -> State:
    """Rows with length 0 keep their previous state (zeros when there was none)."""
    h, c = new_state
    empty = (lengths == 0).to(h.device).view(1, -1, 1)
    if old_state is None:
        old_h, old_c = torch.zeros_like(h), torch.zeros_like(c)
    else:
        old_h, old_c = old_state[0].to(h.dtype), old_state[1].to(c.dtype)
    return torch.where(empty, old_h, h), torch.where(empty, old_c, c)
