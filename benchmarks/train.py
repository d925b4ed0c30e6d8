"""Training-step throughput: packed vs padded + mask, length-bucketed vs random batches.

For each of the four combinations the script runs real fine-tuning steps
(:func:`sensorlstm.train.accumulate_gradients` + AdamW, windows of ``max_length``) over the same
recordings and reports, as medians over repeats:

- real (unpadded) timesteps per second, and the ratio to the baseline (random batches, padded
  + mask) measured in the same run;
- padding efficiency (real / computed timesteps);
- memory: peak allocated memory on CUDA; on CPU the bytes autograd saves for the backward pass
  (activation memory) of the largest step, since CPU allocations are not tracked per step. The
  CPU figure leaves out weights, gradients, optimizer state and allocator overhead, so it is not
  comparable with the CUDA one (nor with the process's resident memory);
- the matrix-multiply FLOP/s achieved on *real* timesteps (LSTM gate GEMMs and the head,
  forward + backward = 3x forward), against a ceiling measured in the same run: torch running
  the LSTM's own per-step gate GEMM shapes (forward, input-gradient and weight-gradient, at the
  bucketed batch size) back to back with nothing else, in the dtype training computes in (bf16
  on CUDA, as under the training's autocast; float32 on CPU).

Run: ``python benchmarks/train.py [--quick] [--device cpu|cuda] [--threads N]``. The table goes
to stdout and ``benchmarks/results/train.md`` (+ ``train.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sensorlstm.bucketing import LengthBucketSampler
from sensorlstm.collate import Batch, ForecastCollator, RecordingDataset
from sensorlstm.config import BucketConfig
from sensorlstm.device import (
    autocast_dtype,
    peak_memory_bytes,
    reset_peak_memory,
    resolve_device,
    synchronize,
)
from sensorlstm.model import LSTMForecaster
from sensorlstm.recording import RecordingSet
from sensorlstm.train import accumulate_gradients

RESULTS = Path(__file__).resolve().parent / "results"


def make_fleet(n: int, channels: int, median: int, max_length: int, seed: int) -> RecordingSet:
    """Random recordings with log-normal lengths (sigma 1), as sensor fleets tend to have."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), 1.0, n).astype(int), 30, max_length)
    return RecordingSet.from_arrays(
        [rng.standard_normal((length, channels)).astype(np.float32) for length in lengths]
    )


def batches_for(recordings: RecordingSet, bucketed: bool, batch_size: int, seed: int) -> list:
    """Index lists of one epoch: length-bucketed, or a plain shuffle cut into batches."""
    pairs = recordings.lengths - 1
    if bucketed:
        # The project's bucketing settings (configs/default.yaml: one bucket, noise sort).
        cfg = BucketConfig(batch_size=batch_size, num_buckets=1)
        sampler = LengthBucketSampler.from_config(pairs, cfg, seed=seed)
        return list(sampler)
    order = np.random.default_rng(seed).permutation(len(recordings))
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def step_flops(model: LSTMForecaster, real_timesteps: int) -> float:
    """Matmul FLOPs of one training step on ``real_timesteps``: 3x the forward GEMMs."""
    hidden = model.lstm.hidden_size
    forward = 0
    for layer in range(model.lstm.num_layers):
        inputs = model.lstm.input_size if layer == 0 else hidden
        forward += 2 * 4 * hidden * (inputs + hidden)
    forward += 2 * hidden * model.head.out_features
    return 3.0 * forward * real_timesteps


def gemm_dtype(device: torch.device) -> torch.dtype:
    """The dtype training's GEMMs run in: the autocast dtype (bf16 on CUDA), else float32."""
    return autocast_dtype(device) or torch.float32


def gemm_ceiling(model: LSTMForecaster, batch: int, steps: int, device: torch.device) -> float:
    """FLOP/s of the LSTM's per-step gate GEMMs (fwd, dX, dW) run back to back.

    In :func:`gemm_dtype`, so on CUDA the ceiling is the bf16 one the training steps (under bf16
    autocast) are measured against, not the much lower float32 one.
    """
    hidden = model.lstm.hidden_size
    dtype = gemm_dtype(device)
    shapes = []
    for layer in range(model.lstm.num_layers):
        inputs = (model.lstm.input_size if layer == 0 else hidden) + hidden
        weight = torch.randn(4 * hidden, inputs, device=device, dtype=dtype)
        x = torch.randn(batch, inputs, device=device, dtype=dtype)
        gates = torch.randn(batch, 4 * hidden, device=device, dtype=dtype)
        shapes.append((weight, x, gates))
    flops = 3 * sum(2 * batch * w.shape[0] * w.shape[1] for w, _, _ in shapes) * steps

    def run() -> None:
        for _ in range(steps):
            for weight, x, gates in shapes:
                torch.mm(x, weight.t())  # forward gates
                torch.mm(gates, weight)  # gradient w.r.t. [x, h]
                torch.mm(gates.t(), x)  # gradient w.r.t. the weights

    run()
    rates = []
    for _ in range(3):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        rates.append(flops / (time.perf_counter() - started))
    return statistics.median(rates)


def saved_activation_bytes(step) -> int:
    """Bytes of tensors autograd saves for backward during ``step()`` (deduplicated)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "meta":
            key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
            seen[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def measure(
    recordings: RecordingSet,
    index_batches: list[list[int]],
    *,
    packed: bool,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, float]:
    """Median throughput and the memory of the largest step for one configuration."""
    torch.manual_seed(0)
    channels = np.arange(recordings.n_channels)
    model = LSTMForecaster(len(channels), len(channels), hidden_size=args.hidden).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dataset, collator = RecordingDataset(recordings), ForecastCollator(channels, channels)
    batches = [collator([dataset[i] for i in b]).to(device) for b in index_batches]

    def step(batch: Batch) -> None:
        accumulate_gradients(model, [batch], max_length=args.max_length, packed=packed)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:2]:  # warm-up
        step(batch)
    real = sum(b.real_timesteps for b in batches)
    padded = sum(b.padded_timesteps for b in batches)
    rates = []
    reset_peak_memory(device)
    for _ in range(args.repeats):
        synchronize(device)
        started = time.perf_counter()
        for batch in batches:
            step(batch)
        synchronize(device)
        rates.append(real / (time.perf_counter() - started))
    peak = peak_memory_bytes(device)
    if peak is None:
        largest = max(batches, key=lambda b: b.padded_timesteps)
        peak = saved_activation_bytes(lambda: step(largest))
    rate = statistics.median(rates)
    return {
        "real_timesteps_per_s": rate,
        "padding_efficiency": real / padded,
        "memory_mib": peak / 2**20,
        "flops_per_s": step_flops(model, real) / (real / rate),
        "batches": len(batches),
        "mean_batch": float(np.mean([len(b) for b in index_batches])),
    }


def parse_args() -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks the fleet and runs one repeat."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Small fleet, one repeat.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1).")
    parser.add_argument("--recordings", type=int, default=4096)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--median-length", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.recordings, args.median_length, args.repeats = 96, 120, 1
    return args


def measure_all(
    recordings: RecordingSet, args: argparse.Namespace, device: torch.device
) -> list[dict]:
    """One row per (random | bucketed) x (padded + mask | packed), baseline first."""
    rows = []
    for bucketed in (False, True):
        plan = batches_for(recordings, bucketed, args.batch_size, seed=0)
        for packed in (False, True):
            result = measure(recordings, plan, packed=packed, args=args, device=device)
            rows.append(
                {
                    "batching": "bucketed" if bucketed else "random",
                    "mode": "packed" if packed else "padded+mask",
                    **result,
                }
            )
            print(
                f"  measured {rows[-1]['batching']:8s} {rows[-1]['mode']:11s} "
                f"{result['real_timesteps_per_s']:,.0f} real steps/s",
                file=sys.stderr,
            )
    return rows


def memory_legend(device: torch.device) -> tuple[str, str]:
    """(column label, sentence under the header): what "memory" means on this device."""
    if device.type == "cuda":
        return "peak alloc. MiB", "Memory: peak memory allocated by torch on the GPU."
    return "saved activations MiB", (
        "Memory (CPU): bytes of the tensors autograd saves for backward in the largest step, "
        "i.e. activation memory only; weights, gradients, optimizer state and allocator "
        "overhead are not included (the CPU does not track a peak), so it is not comparable "
        "with a CUDA peak."
    )


def format_table(
    rows: list[dict],
    ceiling: float,
    bucket_batch: int,
    recordings: RecordingSet,
    args: argparse.Namespace,
    device: torch.device,
) -> str:
    """The markdown report: setup, GEMM ceiling and its dtype, memory legend, one row each."""
    baseline = rows[0]["real_timesteps_per_s"]
    dtype = str(gemm_dtype(device)).removeprefix("torch.")
    memory_label, memory_note = memory_legend(device)
    lines = [
        f"Device {device} ({torch.get_num_threads()} threads), {len(recordings)} recordings, "
        f"{args.channels} channels, median length {int(np.median(recordings.lengths))}, "
        f"LSTM {args.hidden}x2, batch {args.batch_size}, window {args.max_length}, "
        f"median of {args.repeats}.",
        f"Gate-GEMM ceiling ({dtype}, batch {bucket_batch}): {ceiling / 1e9:.2f} GFLOP/s.",
        memory_note,
        "",
        f"| batching | mode | real steps/s | vs baseline | padding eff. | {memory_label} "
        "| GFLOP/s (real) | of ceiling |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['batching']} | {row['mode']} | {row['real_timesteps_per_s']:,.0f} | "
            f"{row['real_timesteps_per_s'] / baseline:.2f}x | {row['padding_efficiency']:.3f} | "
            f"{row['memory_mib']:.1f} | {row['flops_per_s'] / 1e9:.2f} | "
            f"{row['flops_per_s'] / ceiling:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    recordings = make_fleet(args.recordings, args.channels, args.median_length, 2000, seed=0)
    rows = measure_all(recordings, args, device)
    steps = int(np.median(recordings.lengths))
    bucket_batch = round(rows[-1]["mean_batch"])
    model = LSTMForecaster(args.channels, args.channels, hidden_size=args.hidden)
    ceiling = gemm_ceiling(model, bucket_batch, min(steps, 200), device)

    table = format_table(rows, ceiling, bucket_batch, recordings, args, device)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.md").write_text(table + "\n")
    summary = {
        "rows": rows,
        "ceiling_flops_per_s": ceiling,
        "ceiling_dtype": str(gemm_dtype(device)).removeprefix("torch."),
        "memory": memory_legend(device)[1],
        "args": vars(args),
    }
    (RESULTS / "train.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
