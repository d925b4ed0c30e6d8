"""A fine-tuning process killed after its first checkpoint resumes to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).with_name("resume_run.py")
REPO = SCRIPT.parent.parent
COMPARED = ("epoch", "train/loss", "val/loss", "lr", "padding_efficiency", "batches")


def _run(checkpoint_dir: Path, out: Path, pause: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), str(checkpoint_dir), str(out), "--pause", str(pause)]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output


def test_killed_run_resumes_from_checkpoint_and_matches_uninterrupted_run(tmp_path):
    # The uninterrupted reference and the run to be killed, side by side.
    reference = _run(tmp_path / "ref-ckpt", tmp_path / "ref.json")
    killed = _run(tmp_path / "ckpt", tmp_path / "killed.json", pause=120)
    checkpoint = tmp_path / "ckpt" / "last.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert killed.poll() is None, killed.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.json").exists()

    # The retry finds the checkpoint and continues after epoch 0.
    _finish(_run(tmp_path / "ckpt", tmp_path / "resumed.json"))
    _finish(reference)
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    uninterrupted = json.loads((tmp_path / "ref.json").read_text())
    assert resumed["resumed_from_epoch"] == 1 and uninterrupted["resumed_from_epoch"] is None
    assert len(resumed["history"]) == len(uninterrupted["history"]) == 4
    for row_resumed, row_reference in zip(
        resumed["history"], uninterrupted["history"], strict=True
    ):
        assert {k: row_resumed[k] for k in COMPARED} == {k: row_reference[k] for k in COMPARED}
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]
    assert resumed["weights_sha256"] == uninterrupted["weights_sha256"]
