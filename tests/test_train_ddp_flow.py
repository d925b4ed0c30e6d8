"""The fine-tune task under torchrun DDP (``train.nproc_per_node > 1``).

- the inputs the task writes are what ``python -m sensorlstm.distributed`` reads, and (run
  in-process on one rank, without torchrun) they train the model the in-process path trains;
- the retrain flow on two gloo ranks logs per-epoch metrics once, registers the model, and the
  registered model serves.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from test_flows import tiny_config

import sensorlstm.distributed as distributed
from sensorlstm.config import load_config
from sensorlstm.model import LSTMForecaster
from sensorlstm.normalize import Normalizer
from sensorlstm.recording import RecordingSet
from sensorlstm.train import fine_tune
from tasks.data import PreparedData
from tasks.train import build_model, fine_tune_with_torchrun, write_torchrun_inputs

CHANNELS = ["a", "b", "c", "d"]
TARGETS = ["b", "d"]
# Per-epoch history entries that depend on wall time.
TIMED = {"epoch_seconds", "real_timesteps_per_s"}


def _fleet(n: int, seed: int) -> RecordingSet:
    rng = np.random.default_rng(seed)
    recordings = []
    for _ in range(n):
        t = np.arange(int(rng.integers(15, 50)))[:, None]
        values = 3.0 + np.sin(2 * np.pi * t / rng.uniform(6, 20) + rng.uniform(0, 6, 4))
        recordings.append((values + 0.05 * rng.standard_normal((len(t), 4))).astype(np.float32))
    return RecordingSet.from_arrays(recordings, channels=CHANNELS)


def _prepared(input_channels: list[str] = CHANNELS) -> PreparedData:
    raw_train, raw_val, raw_test = _fleet(9, 0), _fleet(4, 1), _fleet(3, 2)
    normalizer = Normalizer.fit(raw_train, "fleet")
    return PreparedData(
        train=normalizer.transform(raw_train),
        val=normalizer.transform(raw_val),
        test=normalizer.transform(raw_test),
        raw_test=raw_test,
        normalizer=normalizer,
        input_channels=list(input_channels),
        target_channels=list(TARGETS),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Epochs:
    """Records the per-epoch reports the task would send to MLflow."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        raise AssertionError("torchrun workers report no steps")

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.rows.append((epoch, metrics))


def test_torchrun_inputs_are_what_the_entry_point_reads_and_train_like_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    base_path = tmp_path / "base.pt"
    torch.save(LSTMForecaster(6, 6, hidden_size=8, num_layers=2).state_dict(), base_path)
    config = load_config(
        [],
        [
            f"model.base_model={base_path}",
            f"model.target_channels=[{', '.join(TARGETS)}]",
            "train.nproc_per_node=2",
            "train.device=cpu",
            "train.epochs=2",
            "train.warmup_steps=1",
            "train.freeze_epochs=1",
            "bucket.batch_size=3",
        ],
    )
    prepared = _prepared()
    checkpoint_dir = tmp_path / "checkpoints"

    # Instead of torchrun: check the command line, then run the entry point on one rank here.
    launched: list[list[str]] = []

    def fake_run(command: list[str], **_: object) -> subprocess.CompletedProcess:
        launched.append(command)
        argv = command[command.index("sensorlstm.distributed") + 1 :]
        args = distributed._parse(argv)
        assert load_config(args.config, args.set) == config
        train = RecordingSet.load(args.train)
        assert train.channels == prepared.input_channels  # every channel is an input
        np.testing.assert_array_equal(train.values, prepared.train.values)  # normalised copy
        np.testing.assert_array_equal(RecordingSet.load(args.val).values, prepared.val.values)
        assert train.ids == prepared.train.ids
        assert args.base == base_path and args.checkpoint_dir == checkpoint_dir
        for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(_free_port()))
        distributed.main(argv)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(distributed, "subprocess", SimpleNamespace(run=fake_run))
    epochs = _Epochs()
    model, result = fine_tune_with_torchrun(prepared, config, checkpoint_dir, epochs)

    (command,) = launched
    assert "--nproc-per-node=2" in command
    meta = json.loads((checkpoint_dir / "ddp" / "out" / "model.json").read_text())
    assert meta["target_channels"] == TARGETS
    assert (checkpoint_dir / "last.pt").is_file()  # --checkpoint-dir: a retry resumes from it

    # The same training in-process, on the same model build: identical weights and losses.
    reference, names = build_model(str(base_path), prepared, config)
    expected = fine_tune(
        reference,
        prepared.train,
        prepared.val,
        input_channels=prepared.train.select_channels(prepared.input_channels),
        target_channels=prepared.train.select_channels(prepared.target_channels),
        train_cfg=config.train,
        bucket_cfg=config.bucket,
        checkpoint_dir=tmp_path / "reference",
        pretrained_names=names,
    )
    assert model.hparams == reference.hparams and model.adapter is not None
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert (result.best_epoch, result.steps) == (expected.best_epoch, expected.steps)
    assert result.best_val_loss == expected.best_val_loss
    strip = [{k: v for k, v in row.items() if k not in TIMED} for row in result.history]
    assert strip == [{k: v for k, v in row.items() if k not in TIMED} for row in expected.history]
    assert [epoch for epoch, _ in epochs.rows] == [0, 1]
    assert result.resumed_from_epoch is None


def test_torchrun_refuses_an_input_selection_it_cannot_express(tmp_path: Path) -> None:
    config = load_config([], ["train.nproc_per_node=2"])
    with pytest.raises(ValueError, match="every channel as input"):
        write_torchrun_inputs(_prepared(["a", "b"]), config, tmp_path)


@pytest.mark.slow
def test_retrain_flow_trains_on_two_torchrun_ranks_and_registers_a_servable_model(
    tmp_path: Path, mlflow_store: str, prefect_server: None
) -> None:
    from flows.retrain import retrain_flow

    config = tiny_config(
        tmp_path, "train.nproc_per_node=2", "train.device=cpu", "bucket.max_timesteps=null"
    )
    summary = retrain_flow(config)
    assert summary["model_version"] == "1" and summary["promoted"] is True, summary

    # Two ranks trained, in step (their reports are logged with the run).
    client = MlflowClient(mlflow_store)
    out = Path(client.download_artifacts(summary["run_id"], "ddp", str(tmp_path)))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]

    # Per-epoch metrics were logged once, from the launching process. The evaluation adds one
    # more val/loss entry (the best epoch's, without a step) after training.
    epochs = config.train.epochs
    history = sorted(
        client.get_metric_history(summary["run_id"], "val/loss"),
        key=lambda m: (m.timestamp, m.step),
    )
    assert len(history) == epochs + 1
    assert sorted(m.step for m in history[:epochs]) == list(range(epochs))
    assert history[-1].value == min(m.value for m in history[:epochs])
    train_loss = client.get_metric_history(summary["run_id"], "train/loss")
    assert sorted(m.step for m in train_loss) == list(range(epochs))

    # The registered model loads with MLflow alone and scores.
    frame = pd.read_parquet(next((tmp_path / "fleet").glob("*.parquet")))
    sample = frame[frame["recording_id"] == frame["recording_id"].iloc[0]]
    served = mlflow.pyfunc.load_model("models:/sensor-lstm/1").predict(sample)
    assert len(served) == len(sample)
    assert np.isfinite(served["score"].to_numpy(dtype=float)).all()
