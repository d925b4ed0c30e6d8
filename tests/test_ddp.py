"""DDP through a real ``torchrun --nproc-per-node 2`` on gloo.

- ranks stay in step through the real entry point (:func:`sensorlstm.distributed.launch`);
- two ranks train exactly as one process does on the same global batches (each optimizer step
  of one process accumulating the two batches the ranks take), so a wrongly scaled or wrongly
  normalised gradient average fails;
- only rank 0 reports to the callback.

For the last two this file is also the torchrun worker (``python -m torch.distributed.run ...
tests/test_ddp.py OUT``, see :func:`_worker`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from sensorlstm.checkpoint import build_fleet_model
from sensorlstm.config import load_config
from sensorlstm.distributed import launch, read_result
from sensorlstm.model import LSTMForecaster
from sensorlstm.recording import RecordingSet
from sensorlstm.train import TrainResult, fine_tune

REPO = Path(__file__).resolve().parent.parent
COMPARED = ("train/loss", "val/loss", "grad_norm", "padding_efficiency")


def _fleet(n: int, seed: int, lengths: list[int] | None = None) -> RecordingSet:
    rng = np.random.default_rng(seed)
    recordings = []
    for i in range(n):
        length = int(rng.integers(15, 60)) if lengths is None else lengths[i]
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
        "bucket.max_timesteps=null",  # count mode, whatever configs/default.yaml says
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


# -- two ranks versus one process ---------------------------------------------------------------


class _FilePerRankCallback:
    """Appends every report to ``callback-rank<r>.jsonl``; only rank 0's may be called."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.path = folder / f"callback-rank{rank}.jsonl"

    def _write(self, kind: str, index: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps({"kind": kind, "index": index, **metrics}) + "\n")

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self._write("step", step, metrics)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self._write("epoch", epoch, metrics)


def _train_on_global_batches(
    accumulation_steps: int, callback: _FilePerRankCallback | None = None
) -> tuple[LSTMForecaster, TrainResult]:
    """The same run for 2 ranks (accumulation 1) and for 1 process (accumulation 2).

    No shuffle and an even batch count (16 recordings, batches of 2), so the global batch list
    is the same for 1 and 2 replicas and step ``i`` covers batches ``2i`` and ``2i + 1`` in
    both. Lengths grow geometrically, so within a step one rank has ~40% more real timesteps
    than the other: normalising by each rank's own count would give another gradient.
    """
    config = load_config(
        [],
        [
            "train.epochs=2",
            "train.device=cpu",
            "train.max_length=16",
            "train.warmup_steps=1",
            "train.freeze_epochs=1",
            "train.log_every_steps=1",
            f"train.accumulation_steps={accumulation_steps}",
            "bucket.batch_size=2",
            "bucket.shuffle=false",
        ],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = LSTMForecaster(6, 6, hidden_size=8, num_layers=2).state_dict()
    model, report = build_fleet_model(config.model, 4, 2, base, seed=config.train.seed)
    train = _fleet(16, 2, lengths=np.geomspace(12, 240, 16).astype(int).tolist())
    result = fine_tune(
        model,
        train,
        _fleet(5, 3),
        input_channels=train.select_channels(["a", "b", "c", "d"]),
        target_channels=train.select_channels(["b", "d"]),
        train_cfg=config.train,
        bucket_cfg=config.bucket,
        callback=callback,
        pretrained_names=report.pretrained_names,
    )
    return model, result


def _worker(out: Path) -> None:
    """One torchrun process: train on its share of the batches; rank 0 saves the result."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        model, result = _train_on_global_batches(1, _FilePerRankCallback(out, rank))
        if rank == 0:
            torch.save(model.state_dict(), out / "weights.pt")
            (out / "result.json").write_text(
                json.dumps({"history": result.history, "steps": result.steps})
            )
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_same_global_batches_and_only_rank_0_reports(
    tmp_path,
):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(Path(__file__).resolve()),
        str(tmp_path),
    ]
    done = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    ddp = json.loads((tmp_path / "result.json").read_text())
    ddp_weights = torch.load(tmp_path / "weights.pt", weights_only=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, single = _train_on_global_batches(2)
    finally:
        torch.set_num_threads(threads)

    assert ddp["steps"] == single.steps == 2 * 4  # 8 batches per epoch, 2 per step
    for ddp_row, single_row in zip(ddp["history"], single.history, strict=True):
        for key in COMPARED:
            assert ddp_row[key] == pytest.approx(single_row[key], rel=1e-5), key
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], tensor, rtol=1e-4, atol=1e-6, msg=name)

    reports = (tmp_path / "callback-rank0.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in reports].count("epoch") == 2
    assert [json.loads(line)["kind"] for line in reports].count("step") == ddp["steps"]
    assert not (tmp_path / "callback-rank1.jsonl").exists()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
