"""Loading pre-trained weights: formats, key mapping, shape errors, adapter and new head."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sensorlstm.checkpoint import (
    build_fleet_model,
    load_pretrained,
    load_training_checkpoint,
    read_state_dict,
    save_training_checkpoint,
)
from sensorlstm.config import ModelConfig
from sensorlstm.model import LSTMForecaster

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _base() -> LSTMForecaster:
    torch.manual_seed(0)
    return LSTMForecaster(8, 8, hidden_size=16, num_layers=2)


def _lstm_equal(a: LSTMForecaster, b: LSTMForecaster) -> bool:
    pairs = zip(a.lstm.parameters(), b.lstm.parameters(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", "dict"])
def test_every_source_format_loads_the_same_weights(tmp_path, suffix):
    base = _base()
    state = base.state_dict()
    if suffix == ".pt":
        source = tmp_path / "base.pt"
        torch.save(state, source)
    elif suffix == ".safetensors":
        source = tmp_path / "base.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, source)
    else:
        source = state
    torch.manual_seed(1)
    model = LSTMForecaster(8, 8, hidden_size=16)
    report = load_pretrained(model, source)
    assert sorted(report.reused) == sorted(state) and not report.new
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model.pretrained_names == set(state)


class Payload:
    """An arbitrary object that a full unpickle would construct."""


def test_pt_files_are_read_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"lstm.weight_ih_l0": torch.zeros(1), "obj": Payload()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        read_state_dict(path)


def test_keys_from_other_code_are_mapped_and_reported_as_adapted(tmp_path):
    base = _base()
    foreign = {
        k.replace("lstm.", "module.rnn.").replace("head.", "module.fc."): v
        for k, v in base.state_dict().items()
    }
    torch.save({"state_dict": foreign}, tmp_path / "foreign.pt")
    model = LSTMForecaster(8, 8, hidden_size=16)
    report = load_pretrained(model, tmp_path / "foreign.pt")
    assert sorted(report.adapted) == sorted(base.state_dict()) and not report.reused
    assert _lstm_equal(model, base)


def test_custom_key_map_applies(tmp_path):
    base = _base()
    foreign = {k.replace("lstm.", "backbone."): v for k, v in base.state_dict().items()}
    model = LSTMForecaster(8, 8, hidden_size=16)
    with pytest.raises(ValueError, match="no LSTM weights"):
        load_pretrained(model, foreign)
    load_pretrained(model, foreign, key_map={"backbone.": "lstm."})
    assert _lstm_equal(model, base)


def test_shape_mismatch_names_tensor_both_shapes_and_fix():
    model = LSTMForecaster(5, 5, hidden_size=16)
    with pytest.raises(ValueError) as error:
        load_pretrained(model, _base().state_dict())
    message = str(error.value)
    assert "lstm.weight_ih_l0" in message and "(64, 8)" in message and "(64, 5)" in message
    assert "base_inputs=8" in message
    with pytest.raises(ValueError, match=r"\(64, 8\).*\(128, 8\).*hidden_size"):
        load_pretrained(LSTMForecaster(8, 8, hidden_size=32), _base().state_dict())


def test_other_channel_count_gets_input_adapter_and_new_head():
    base = _base()
    model = LSTMForecaster(5, 3, hidden_size=16, base_inputs=8)
    report = load_pretrained(model, base.state_dict())
    assert _lstm_equal(model, base)
    assert set(report.new) == {"adapter.weight", "adapter.bias", "head.weight", "head.bias"}
    assert not report.ignored and not report.adapted
    prediction, _ = model(torch.randn(2, 7, 5))
    assert prediction.shape == (2, 7, 3)


def test_pooling_head_reuses_lstm_only():
    model = LSTMForecaster(8, 8, hidden_size=16, head="attention", num_classes=3)
    report = load_pretrained(model, _base().state_dict())
    assert {n for n in report.new} == {
        "head.weight",
        "head.bias",
        "pool.score.weight",
        "pool.score.bias",
    }
    assert report.pretrained_names == {n for n in model.state_dict() if n.startswith("lstm.")}


def test_fleet_with_fewer_channels_than_a_pt_base_gets_an_input_adapter(tmp_path):
    torch.manual_seed(0)
    base = LSTMForecaster(6, 6, hidden_size=12, num_layers=3)  # not the config's 64 x 2
    torch.save(base.state_dict(), tmp_path / "base.pt")
    model, report = build_fleet_model(ModelConfig(), 4, 2, tmp_path / "base.pt", seed=0)
    assert model.adapter is not None and tuple(model.adapter.weight.shape) == (6, 4)
    assert (model.lstm.input_size, model.lstm.hidden_size, model.lstm.num_layers) == (6, 12, 3)
    assert _lstm_equal(model, base)
    assert {"adapter.weight", "adapter.bias", "head.weight", "head.bias"} <= set(report.new)
    assert report.pretrained_names == {n for n in base.state_dict() if n.startswith("lstm.")}
    prediction, _ = model(torch.randn(2, 5, 4))
    assert prediction.shape == (2, 5, 2)


def test_renamed_keys_count_as_pretrained(tmp_path):
    base = _base()
    foreign = {
        k.replace("lstm.", "rnn.").replace("head.", "fc.", 1): v.contiguous()
        for k, v in base.state_dict().items()
    }
    save_file(foreign, tmp_path / "foreign.safetensors")
    model, report = build_fleet_model(ModelConfig(), 8, 8, tmp_path / "foreign.safetensors")
    assert not report.reused and sorted(report.adapted) == sorted(base.state_dict())
    assert report.pretrained_names == set(base.state_dict())
    assert model.pretrained_names == report.pretrained_names
    assert _lstm_equal(model, base) and torch.equal(model.head.weight, base.head.weight)


@pytest.mark.parametrize("head", ["mean", "max", "last", "attention"])
def test_configured_pooling_head_is_built_on_the_pretrained_lstm(head):
    config = ModelConfig(head=head, num_classes=3, dropout=0.1)
    model, report = build_fleet_model(config, 8, 8, _base().state_dict())
    assert model.is_sequence_head and model.hparams["head"] == head
    assert model.head.out_features == 3 and model.lstm.dropout == pytest.approx(0.1)
    assert report.pretrained_names == {n for n in model.state_dict() if n.startswith("lstm.")}
    logits, _ = model(torch.randn(2, 5, 8), torch.tensor([5, 2]))
    assert logits.shape == (2, 3)


def test_without_a_base_the_config_shapes_the_model_and_the_seed_fixes_it():
    config = ModelConfig(hidden_size=10, num_layers=1)
    rng_before = torch.get_rng_state()
    model, report = build_fleet_model(config, 3, 2, seed=5)
    again, _ = build_fleet_model(config, 3, 2, seed=5)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    assert model.lstm.hidden_size == 10 and model.lstm.num_layers == 1 and model.adapter is None
    assert not report.pretrained_names
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True)
    )


def test_training_checkpoint_round_trips_weights_only(tmp_path):
    model = _base()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 8))[0].sum().backward()
    optimizer.step()
    import random

    import numpy as np

    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "history": [{"train/loss": 1.5}],
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        },
    }
    save_training_checkpoint(tmp_path, checkpoint)
    loaded = load_training_checkpoint(tmp_path)
    assert loaded is not None and loaded["epoch"] == 3
    assert loaded["history"] == checkpoint["history"]
    assert torch.equal(loaded["rng"]["torch"], checkpoint["rng"]["torch"])
    assert loaded["rng"]["python"] == checkpoint["rng"]["python"]
    assert load_training_checkpoint(tmp_path / "empty") is None
