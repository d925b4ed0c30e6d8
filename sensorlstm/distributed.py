"""Multi-GPU / multi-node fine-tuning with DistributedDataParallel, launched by ``torchrun``.

Command line (one process per GPU; on CPU, ``gloo`` processes)::

    torchrun --standalone --nproc-per-node N -m sensorlstm.distributed \\
        --train DIR --val DIR --out DIR [--config FILE ...] [--set section.key=value ...] \\
        [--base WEIGHTS.safetensors|.pt] [--checkpoint-dir DIR] [--device cpu|cuda]

``--train``/``--val`` are folders written by :meth:`RecordingSet.save` (already normalised).
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

from sensorlstm.checkpoint import infer_lstm_shape, load_pretrained, read_state_dict
from sensorlstm.config import Config, load_config
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

    Args:
        config: the run configuration (``model`` section).
        n_inputs: input channels of the fleet.
        n_outputs: target channels.
        base: pre-trained weights file, or None to train from scratch.
    """
    torch.manual_seed(config.train.seed)
    shape: dict[str, Any] = {
        "hidden_size": config.model.hidden_size,
        "num_layers": config.model.num_layers,
    }
    state = None
    if base is not None:
        state = read_state_dict(base)
        shape = infer_lstm_shape(state)
    model = LSTMForecaster(
        n_inputs,
        n_outputs,
        dropout=config.model.dropout,
        head=config.model.head,
        num_classes=config.model.num_classes,
        **shape,
    )
    if state is not None:
        load_pretrained(model, state)
    return model


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
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present).")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of every torchrun process."""
    args = _parse(argv)
    use_cuda = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s",
    )
    try:
        config = load_config(args.config, args.set)
        device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
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
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone`` on this entry point as a subprocess and wait for it.

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
