"""A small fine-tuning run for the resume test: ``python tests/resume_run.py CKPT OUT``.

It trains a tiny forecaster on a fixed synthetic fleet with a fixed seed, checkpointing into
``CKPT`` every epoch, and writes the history and a digest of the final weights to ``OUT``. With
``--stall-epoch E --ready FILE`` it writes ``FILE`` after the second optimizer step of epoch ``E``
(of three steps) and then sleeps, so the test can kill it there: mid-epoch, with that epoch's
first steps already applied to the weights but not checkpointed. The callback changes no result.
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


STALL_AFTER_STEP = 2  # of 3 per epoch: 20 recordings, batches of 4, 2 batches per step


class _StallMidEpoch:
    """Writes ``ready`` after step ``STALL_AFTER_STEP`` of epoch ``epoch``, then sleeps."""

    def __init__(self, epoch: int | None, ready: Path | None) -> None:
        self.epoch, self.ready = epoch, ready
        self.current_epoch, self.steps_in_epoch = 0, 0

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.steps_in_epoch += 1
        stall = self.current_epoch == self.epoch and self.steps_in_epoch == STALL_AFTER_STEP
        if stall and self.ready is not None:
            self.ready.write_text(json.dumps({"epoch": self.current_epoch, "step": step}))
            print(f"stalling in epoch {self.current_epoch} after step {step}", flush=True)
            time.sleep(300)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.current_epoch, self.steps_in_epoch = epoch + 1, 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--stall-epoch", type=int, default=None)
    parser.add_argument("--ready", type=Path, default=None)
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
        log_every_steps=1,
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
        callback=_StallMidEpoch(args.stall_epoch, args.ready),
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
                "steps": result.steps,
                "weights_sha256": digest.hexdigest(),
            }
        )
    )


if __name__ == "__main__":
    main()
