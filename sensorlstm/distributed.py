"""Multi-GPU / multi-node fine-tuning with DistributedDataParallel, launched by ``torchrun``.

Command line (one process per GPU; on CPU, ``gloo`` processes)::

    torchrun --standalone --nproc-per-node N -m sensorlstm.distributed \\
        --train DIR --val DIR --out DIR [--config FILE ...] [--set section.key=value ...] \\
        [--base WEIGHTS.safetensors|.pt] [--checkpoint-dir DIR] [--device cpu|cuda]

``--train``/``--val`` are folders written by :meth:`RecordingSet.save` (already normalised).
The device is ``--device`` or else ``train.device``: ``auto``/``cuda`` put each process on
``cuda:<local rank>`` (CPU when there is no CUDA), ``cpu`` trains on CPU even where GPUs exist.
On CUDA the process group is ``cpu:gloo,cuda:nccl``: NCCL all-reduces the gradients, and
collectives on CPU tensors go through gloo.
Every rank reads them, takes every N-th length-bucketed batch (the distributed bucket sampler,
equal batch counts per rank), and :func:`sensorlstm.train.fine_tune` divides the loss by the real
timesteps of all ranks, so the step equals the single-process step on the union of the batches.
Multi-node: ``torchrun --nnodes M --node-rank R --rdzv-endpoint HOST:PORT ...`` as usual, with
``--out`` and ``--checkpoint-dir`` on storage every node sees.

Outputs in ``--out``: rank 0 writes ``model.safetensors`` (best weights), ``model.json``
(constructor arguments and channel names) and ``history.json``; every rank writes
``rank<r>.json`` (batches per epoch, optimizer steps, a digest of its final weights) so a caller
can check the ranks stayed in step. MLflow logging is left to the process that launched torchrun
(:func:`launch` then :func:`read_result`), so it happens once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from sensorlstm.checkpoint import build_fleet_model
from sensorlstm.config import Config, load_config
from sensorlstm.device import resolve_device
from sensorlstm.model import LSTMForecaster
from sensorlstm.recording import RecordingSet
from sensorlstm.train import TrainResult, fine_tune

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
HISTORY_FILE = "history.json"


def build_model(
    config: Config, n_inputs: int, n_outputs: int, base: str | Path | None = None
) -> LSTMForecaster:
    """The fleet's model: shaped after ``base`` weights when given (and loaded), else the config.

    New tensors are seeded with ``train.seed``, so every rank starts from the same weights.

    Args:
        config: the run configuration (``model`` section).
        n_inputs: input channels of the fleet.
        n_outputs: target channels.
        base: pre-trained weights file, or None to train from scratch.
    """
    model, _ = build_fleet_model(config.model, n_inputs, n_outputs, base, seed=config.train.seed)
    return model


def rank_device(spec: str, local_rank: int) -> torch.device:
    """This process's device for ``train.device`` / ``--device`` ``spec`` under DDP.

    ``auto`` and ``cuda`` mean one GPU per process, ``cuda:<local_rank>``; ``auto`` falls back
    to the CPU when there is no CUDA (not to MPS: gloo has no MPS support). An explicit device
    (``cpu``, ``cuda:1``) is used as given.

    Raises:
        ValueError: the device is not available, there are fewer GPUs than local ranks, or the
            device is neither CPU nor CUDA.
    """
    spec = spec.strip().lower()
    if spec in ("auto", "cuda"):
        if not torch.cuda.is_available():
            if spec == "cuda":
                raise ValueError(
                    "train.device='cuda' but CUDA is not available here; "
                    "use 'auto' or 'cpu' to train on CPU (gloo)"
                )
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"local rank {local_rank} needs its own GPU but only {count} are visible; "
                f"start at most {count} processes per node (--nproc-per-node)"
            )
        return torch.device("cuda", local_rank)
    device = resolve_device(spec)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"DDP runs on CPU (gloo) or CUDA (NCCL), got device {spec!r}; use 'cpu' or 'cuda'"
        )
    return device


def process_group_backend(device: torch.device) -> str:
    """``cpu:gloo,cuda:nccl`` on CUDA (NCCL for GPU tensors, gloo for CPU ones), else ``gloo``.

    NCCL reduces GPU tensors only; with gloo beside it, a collective on a CPU tensor (and the
    barrier) still works.
    """
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict (names and bytes): equal digests mean identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sensorlstm.distributed", description=__doc__)
    parser.add_argument("--train", required=True, type=Path, help="RecordingSet folder.")
    parser.add_argument("--val", type=Path, help="RecordingSet folder (early stopping).")
    parser.add_argument("--out", required=True, type=Path, help="Output folder.")
    parser.add_argument("--config", action="append", default=None, help="YAML config file(s).")
    parser.add_argument("--set", action="append", default=[], help="Override section.key=value.")
    parser.add_argument("--base", type=Path, help="Pre-trained weights (.safetensors or .pt).")
    parser.add_argument("--checkpoint-dir", type=Path, help="Default: <out>/checkpoints.")
    parser.add_argument(
        "--device",
        default=None,
        help="Overrides train.device: auto or cuda (cuda:<local rank>), cpu, or cuda:N.",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of every torchrun process."""
    args = _parse(argv)
    config = load_config(args.config, args.set)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(args.device or config.train.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=process_group_backend(device))
    rank, world = dist.get_rank(), dist.get_world_size()
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s",
    )
    logger.info("%d processes on %s (%s)", world, device, dist.get_backend())
    try:
        train = RecordingSet.load(args.train)
        val = RecordingSet.load(args.val) if args.val else train.subset([])
        targets = config.model.target_channels or list(train.channels)
        model = build_model(config, train.n_channels, len(targets), args.base)
        result = fine_tune(
            model,
            train,
            val,
            input_channels=train.select_channels(train.channels),
            target_channels=train.select_channels(targets),
            train_cfg=config.train,
            bucket_cfg=config.bucket,
            checkpoint_dir=args.checkpoint_dir or args.out / "checkpoints",
            device=device,
        )
        _write_outputs(args.out, model, result, train.channels, targets, rank, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _write_outputs(
    out: Path,
    model: LSTMForecaster,
    result: TrainResult,
    input_channels: list[str],
    target_channels: list[str],
    rank: int,
    world: int,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rank_report = {
        "rank": rank,
        "world_size": world,
        "batches_per_epoch": [int(row["batches"]) for row in result.history],
        "steps": result.steps,
        "weights_sha256": weights_digest(model),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(rank_report, indent=2))
    if rank != 0:
        return
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / WEIGHTS_FILE)
    meta = {
        "hparams": model.hparams,
        "input_channels": input_channels,
        "target_channels": target_channels,
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    summary = {
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
        "steps": result.steps,
        "world_size": world,
    }
    (out / HISTORY_FILE).write_text(json.dumps(summary, indent=2))
    logger.info("wrote %s, model.json and %s to %s", WEIGHTS_FILE, HISTORY_FILE, out)


def launch(
    *,
    train_dir: str | Path,
    out_dir: str | Path,
    nproc_per_node: int,
    val_dir: str | Path | None = None,
    config_files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    base: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone`` on this entry point as a subprocess and wait for it.

    ``checkpoint_dir`` (default ``<out_dir>/checkpoints``): a checkpoint found there resumes.

    Returns:
        The finished process (stdout and stderr captured as text).

    Raises:
        RuntimeError: torchrun failed; the message carries the tail of its output.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        "sensorlstm.distributed",
        "--train",
        str(train_dir),
        "--out",
        str(out_dir),
    ]
    if val_dir is not None:
        command += ["--val", str(val_dir)]
    for path in config_files:
        command += ["--config", str(path)]
    for override in overrides:
        command += ["--set", override]
    if base is not None:
        command += ["--base", str(base)]
    if checkpoint_dir is not None:
        command += ["--checkpoint-dir", str(checkpoint_dir)]
    process_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    root = str(Path(__file__).resolve().parent.parent)
    process_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, process_env.get("PYTHONPATH", "")) if p
    )
    completed = subprocess.run(
        command, env=process_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        tail = (completed.stdout + completed.stderr)[-4000:]
        raise RuntimeError(
            f"torchrun with {nproc_per_node} processes failed (exit {completed.returncode}):\n"
            f"{tail}"
        )
    return completed


def read_result(out_dir: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """``(state dict, model.json, history.json)`` written by rank 0."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    return (
        load_file(str(out / WEIGHTS_FILE)),
        json.loads((out / "model.json").read_text()),
        json.loads((out / HISTORY_FILE).read_text()),
    )


if __name__ == "__main__":
    main()
