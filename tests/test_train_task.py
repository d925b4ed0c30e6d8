"""The fine-tune task's model building: config head, adapter and pre-trained names reach it."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sensorlstm.config import load_config
from sensorlstm.model import LSTMForecaster
from tasks.train import build_model


def test_task_builds_the_configured_head_with_an_adapter_on_a_renamed_pt_base(tmp_path):
    torch.manual_seed(0)
    base = LSTMForecaster(6, 6, hidden_size=12, num_layers=2)
    foreign = {k.replace("lstm.", "rnn."): v for k, v in base.state_dict().items()}
    torch.save(foreign, tmp_path / "base.pt")
    config = load_config([], ["model.head=max", "model.num_classes=3", "model.hidden_size=64"])
    prepared = SimpleNamespace(input_channels=["a", "b", "c", "d"], target_channels=["a", "b"])

    model, pretrained = build_model(str(tmp_path / "base.pt"), prepared, config)

    assert model.adapter is not None and model.lstm.input_size == 6
    assert model.lstm.hidden_size == 12  # from the weights, not model.hidden_size
    assert model.hparams["head"] == "max" and model.head.out_features == 3
    lstm_names = {n for n, _ in model.named_parameters() if n.startswith("lstm.")}
    assert pretrained == lstm_names  # renamed rnn.* keys included
    assert torch.equal(model.lstm.weight_hh_l1, base.lstm.weight_hh_l1)
