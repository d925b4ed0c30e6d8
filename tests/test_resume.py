"""A fine-tuning process killed mid-epoch resumes from its checkpoint to the same result.

The trainer checkpoints at epoch ends, so the resumed run repeats the killed epoch from its
start (the checkpointed RNG, sampler and optimizer state); on the CPU with a fixed seed that
must give the uninterrupted run's history and weights exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sensorlstm.checkpoint import load_training_checkpoint

SCRIPT = Path(__file__).with_name("resume_run.py")
REPO = SCRIPT.parent.parent
COMPARED = ("epoch", "train/loss", "val/loss", "lr", "padding_efficiency", "batches", "grad_norm")
KILLED_EPOCH = 2


def _run(checkpoint_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), str(checkpoint_dir), str(out), *extra]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(process: subprocess.Popen) -> dict:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return json.loads(Path(process.args[3]).read_text())


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"{path.name} was not written in {seconds} s"
        time.sleep(0.1)


def test_run_killed_mid_epoch_resumes_and_matches_uninterrupted_run(tmp_path):
    # The uninterrupted reference and the run to be killed, side by side.
    reference = _run(tmp_path / "ref-ckpt", tmp_path / "ref.json")
    ready = tmp_path / "ready.json"
    stall = ("--stall-epoch", str(KILLED_EPOCH), "--ready", str(ready))
    killed = _run(tmp_path / "ckpt", tmp_path / "killed.json", *stall)
    try:
        _wait_for(ready, killed)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.json").exists()

    # Killed partway through epoch 2: after the epoch-1 checkpoint, with steps of epoch 2 done.
    stalled = json.loads(ready.read_text())
    checkpoint = load_training_checkpoint(tmp_path / "ckpt")
    assert checkpoint is not None and checkpoint["epoch"] == KILLED_EPOCH - 1
    assert stalled["epoch"] == KILLED_EPOCH and stalled["step"] > checkpoint["steps"]

    # The restart finds the checkpoint and repeats epoch 2 from its start.
    resumed = _finish(_run(tmp_path / "ckpt", tmp_path / "resumed.json"))
    uninterrupted = _finish(reference)
    steps_per_epoch = uninterrupted["steps"] // len(uninterrupted["history"])
    assert stalled["step"] < checkpoint["steps"] + steps_per_epoch  # truly mid-epoch
    assert resumed["resumed_from_epoch"] == KILLED_EPOCH
    assert uninterrupted["resumed_from_epoch"] is None
    assert len(resumed["history"]) == len(uninterrupted["history"]) == 4
    for row_resumed, row_reference in zip(
        resumed["history"], uninterrupted["history"], strict=True
    ):
        assert {k: row_resumed[k] for k in COMPARED} == {k: row_reference[k] for k in COMPARED}
    assert resumed["steps"] == uninterrupted["steps"]
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]
    assert resumed["weights_sha256"] == uninterrupted["weights_sha256"]
