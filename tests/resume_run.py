"""A small fine-tuning run for the resume test: ``python tests/resume_run.py CKPT OUT``.

It trains a tiny forecaster on a fixed synthetic fleet with a fixed seed, checkpointing into
``CKPT`` every epoch, and writes the history and a digest of the final weights to ``OUT``. With
``--pause S`` it sleeps ``S`` seconds after the first epoch's checkpoint, so the test can kill it
there (the sleep happens after the checkpoint is written, so it changes no result).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from sensorlstm.config import BucketConfig, TrainConfig
from sensorlstm.model import LSTMForecaster
from sensorlstm.recording import RecordingSet
from sensorlstm.train import fine_tune


def _fleet(n: int, seed: int) -> RecordingSet:
    rng = np.random.default_rng(seed)
    recordings = []
    for _ in range(n):
        length = int(rng.integers(20, 70))
        t = np.arange(length)[:, None]
        values = np.sin(2 * np.pi * t / rng.uniform(6, 20) + rng.uniform(0, 6, 3))
        recordings.append((values + 0.05 * rng.standard_normal((length, 3))).astype(np.float32))
    return RecordingSet.from_arrays(recordings)


class _PauseAfterFirstEpoch:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 0 and self.seconds:
            print("checkpointed epoch 0, pausing", flush=True)
            time.sleep(self.seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)

    torch.manual_seed(0)
    model = LSTMForecaster(3, 3, hidden_size=8, dropout=0.2, num_layers=2)
    cfg = TrainConfig(
        epochs=4,
        lr=1e-2,
        warmup_steps=3,
        max_length=16,
        device="cpu",
        seed=7,
        early_stopping_patience=None,
        freeze_epochs=1,
        accumulation_steps=2,
    )
    result = fine_tune(
        model,
        _fleet(20, 0),
        _fleet(6, 1),
        input_channels=[0, 1, 2],
        target_channels=[0, 1, 2],
        train_cfg=cfg,
        bucket_cfg=BucketConfig(batch_size=4, num_buckets=2),
        checkpoint_dir=args.checkpoint_dir,
        callback=_PauseAfterFirstEpoch(args.pause),
        pretrained_names={n for n, _ in model.named_parameters() if n.startswith("lstm.")},
    )
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    args.out.write_text(
        json.dumps(
            {
                "history": result.history,
                "resumed_from_epoch": result.resumed_from_epoch,
                "best_epoch": result.best_epoch,
                "weights_sha256": digest.hexdigest(),
            }
        )
    )


if __name__ == "__main__":
    main()
