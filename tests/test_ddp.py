"""DDP through a real ``torchrun --nproc-per-node 2`` on gloo: ranks stay in step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sensorlstm.distributed import launch, read_result
from sensorlstm.model import LSTMForecaster
from sensorlstm.recording import RecordingSet


def _fleet(n: int, seed: int) -> RecordingSet:
    rng = np.random.default_rng(seed)
    recordings = []
    for _ in range(n):
        length = int(rng.integers(15, 60))
        t = np.arange(length)[:, None]
        values = np.sin(2 * np.pi * t / rng.uniform(6, 20) + rng.uniform(0, 6, 4))
        recordings.append((values + 0.05 * rng.standard_normal((length, 4))).astype(np.float32))
    return RecordingSet.from_arrays(recordings, channels=["a", "b", "c", "d"])


@pytest.mark.slow
def test_two_gloo_ranks_get_equal_batches_and_end_with_identical_weights(tmp_path):
    # 13 recordings, batches of 3: an uneven split the sampler must even out.
    _fleet(13, 0).save(tmp_path / "train")
    _fleet(5, 1).save(tmp_path / "val")
    torch.manual_seed(0)
    base = LSTMForecaster(6, 6, hidden_size=8, num_layers=2)  # another channel count
    torch.save(base.state_dict(), tmp_path / "base.pt")
    overrides = [
        "train.epochs=2",
        "train.device=cpu",
        "train.max_length=16",
        "train.warmup_steps=1",
        "train.freeze_epochs=1",
        "bucket.batch_size=3",
        "bucket.num_buckets=2",
        "model.target_channels=[b, d]",
    ]
    launch(
        train_dir=tmp_path / "train",
        val_dir=tmp_path / "val",
        out_dir=tmp_path / "out",
        nproc_per_node=2,
        overrides=overrides,
        base=tmp_path / "base.pt",
        timeout=300,
    )
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["batches_per_epoch"] == ranks[1]["batches_per_epoch"]
    assert sum(ranks[0]["batches_per_epoch"]) >= 2 * 2
    assert ranks[0]["steps"] == ranks[1]["steps"]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]

    state, meta, history = read_result(tmp_path / "out")
    assert meta["target_channels"] == ["b", "d"] and meta["hparams"]["base_inputs"] == 6
    model = LSTMForecaster(**meta["hparams"])
    model.load_state_dict(state)
    assert torch.equal(model.lstm.weight_hh_l0, state["lstm.weight_hh_l0"])
    assert len(history["history"]) == 2
    assert all(np.isfinite(row["val/loss"]) for row in history["history"])
