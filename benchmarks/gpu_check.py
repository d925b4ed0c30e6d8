"""One prepared check of the GPU training path: packed and padded, bf16, throughput and memory.

On a CUDA machine (a few minutes) it:

1. checks that padded + mask and packed runs give the same masked loss and gradients, in float32
   (tight tolerance) and under bf16 autocast (loose tolerance), on uneven lengths with NaN
   padding;
2. times fine-tuning steps (bf16 autocast, cuDNN) on length-bucketed batches, padded and packed,
   and prints real timesteps per second and peak allocated memory (medians over repeats);
3. runs one short :func:`sensorlstm.train.fine_tune` with checkpointing end to end.

Under bf16 it also checks that bf16 really ran: the prediction must come out in bf16 (FAIL
otherwise), and the LSTM's own output dtype says whether cuDNN's LSTM ran in bf16 or fell back to
float32 (reported, not a failure: the result is still correct, only slower).

Without CUDA it says so and runs the same checks on a small CPU problem (``--quick`` sizes),
so the script itself is tested anywhere. A check that raises is reported as FAIL with its error
and the others still run. Exit status 1 when a check fails.

Run: ``python benchmarks/gpu_check.py [--quick] [--device cuda:0]``; the report also goes to
``$OUT/gpu_check.md`` when ``$OUT`` is set, else ``benchmarks/results/gpu_check.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sensorlstm.bucketing import LengthBucketSampler
from sensorlstm.collate import ForecastCollator, RecordingDataset
from sensorlstm.config import BucketConfig, TrainConfig
from sensorlstm.device import (
    autocast,
    autocast_dtype,
    peak_memory_bytes,
    reset_peak_memory,
    resolve_device,
    synchronize,
)
from sensorlstm.losses import masked_loss
from sensorlstm.model import LSTMForecaster
from sensorlstm.recording import RecordingSet
from sensorlstm.train import accumulate_gradients, fine_tune

logger = logging.getLogger("gpu_check")


def results_dir() -> Path:
    """``$OUT`` when set (the device machine's output folder), else ``benchmarks/results``."""
    out = os.environ.get("OUT")
    return Path(out) if out else Path(__file__).resolve().parent / "results"


def make_fleet(n: int, channels: int, median: int, seed: int) -> RecordingSet:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), 1.0, n).astype(int), 30, 8 * median)
    recordings = []
    for length in lengths:
        t = np.arange(length)[:, None]
        wave = np.sin(t / rng.uniform(3, 30) + rng.uniform(0, 6, channels))
        noise = 0.1 * rng.standard_normal((length, channels))
        recordings.append((wave + noise).astype(np.float32))
    return RecordingSet.from_arrays(recordings)


def check_equivalence(device: torch.device, report: list[str]) -> bool:
    """Padded vs packed loss and gradients agree (fp32 tight, bf16 loose)."""
    ok = True
    torch.manual_seed(0)
    model = LSTMForecaster(8, 8, hidden_size=64).to(device)
    lengths = torch.tensor([97, 3, 64, 1, 40, 97, 12, 80])
    inputs = torch.full((len(lengths), 97, 8), float("nan"))
    targets = torch.full_like(inputs, float("nan"))
    for i, n in enumerate(lengths.tolist()):
        inputs[i, :n] = torch.randn(n, 8)
        targets[i, :n] = torch.randn(n, 8)
    mask = torch.arange(97)[None] < lengths[:, None]
    inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
    precision = {False: "fp32", True: "bf16" if device.type == "cuda" else "no autocast on CPU"}
    lstm_dtypes: list[torch.dtype] = []
    hook = model.lstm.register_forward_hook(
        lambda module, args, output: lstm_dtypes.append(_first_tensor(output).dtype)
    )
    for bf16, rtol in ((False, 1e-4), (True, 5e-2)):
        results = []
        for packed in (False, True):
            model.zero_grad()
            lstm_dtypes.clear()
            with autocast(device, enabled=bf16):
                prediction, _ = model(inputs, lengths, packed=packed)
            if bf16:
                ok &= report_autocast_dtypes(
                    device, prediction.dtype, lstm_dtypes[0], packed, report
                )
            loss = masked_loss(prediction, targets, mask)
            loss.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters()])
            results.append((loss.detach(), grads))
        (loss_a, grad_a), (loss_b, grad_b) = results
        finite = bool(torch.isfinite(grad_a).all() and torch.isfinite(grad_b).all())
        loss_gap = float((loss_a - loss_b).abs() / loss_b.abs())
        grad_gap = float((grad_a - grad_b).norm() / grad_b.norm())
        passed = finite and loss_gap < rtol and grad_gap < max(rtol, 1e-3)
        ok &= passed
        report.append(
            f"- padded vs packed ({precision[bf16]}): loss rel. gap {loss_gap:.1e}, "
            f"gradient rel. gap {grad_gap:.1e}, finite {finite}: {'OK' if passed else 'FAIL'}"
        )
    hook.remove()
    return ok


def _first_tensor(output: object) -> torch.Tensor:
    """The output sequence of ``nn.LSTM``: a tensor, or the data of a PackedSequence."""
    sequence = output[0] if isinstance(output, tuple) else output
    return getattr(sequence, "data", sequence)


def report_autocast_dtypes(
    device: torch.device,
    prediction_dtype: torch.dtype,
    lstm_dtype: torch.dtype,
    packed: bool,
    report: list[str],
) -> bool:
    """FAIL unless the prediction has the autocast dtype; say in what dtype the LSTM ran."""
    expected = autocast_dtype(device) or torch.float32
    passed = prediction_dtype == expected
    mode = "packed" if packed else "padded"
    if device.type == "cuda" and lstm_dtype != expected:
        lstm_note = f"cuDNN LSTM fell back to {lstm_dtype} (autocast did not cover it)"
    else:
        lstm_note = f"LSTM ran in {lstm_dtype}"
    report.append(
        f"- autocast ({mode}): prediction {prediction_dtype} (expected {expected}), "
        f"{lstm_note}: {'OK' if passed else 'FAIL'}"
    )
    return passed


def time_steps(
    recordings: RecordingSet,
    device: torch.device,
    *,
    hidden: int,
    repeats: int,
    batch_size: int,
    report: list[str],
) -> None:
    """Real timesteps/s and peak memory of bf16 training steps, padded and packed."""
    channels = np.arange(recordings.n_channels)
    sampler = LengthBucketSampler(
        recordings.lengths - 1, batch_size=batch_size, num_buckets=8, seed=0
    )
    dataset, collator = RecordingDataset(recordings), ForecastCollator(channels, channels)
    batches = [collator([dataset[i] for i in b]).to(device) for b in sampler]
    real = sum(b.real_timesteps for b in batches)
    report.append(
        f"\n{len(batches)} bucketed batches of {batch_size}, {real:,} real timesteps, "
        "padding efficiency "
        f"{real / sum(b.padded_timesteps for b in batches):.3f}, LSTM {hidden}x2, window 512\n"
    )
    report.append("| mode | real steps/s | peak memory MiB |")
    report.append("|---|---:|---:|")
    for packed in (False, True):
        torch.manual_seed(0)
        model = LSTMForecaster(len(channels), len(channels), hidden_size=hidden).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def epoch(model=model, optimizer=optimizer, packed=packed) -> None:
            for batch in batches:
                accumulate_gradients(model, [batch], max_length=512, packed=packed, device=device)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        epoch()  # warm-up (cuDNN plans, allocator)
        reset_peak_memory(device)
        rates = []
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            epoch()
            synchronize(device)
            rates.append(real / (time.perf_counter() - started))
        peak = peak_memory_bytes(device)
        memory = "n/a (CPU)" if peak is None else f"{peak / 2**20:,.0f}"
        report.append(
            f"| {'packed' if packed else 'padded+mask'} | {statistics.median(rates):,.0f} | "
            f"{memory} |"
        )


def check_fine_tune(recordings: RecordingSet, device: torch.device, report: list[str]) -> bool:
    """One short fine_tune with checkpoints; losses must be finite and decrease."""
    channels = np.arange(recordings.n_channels)
    split = int(len(recordings) * 0.8)
    train, val = recordings.subset(range(split)), recordings.subset(range(split, len(recordings)))
    model = LSTMForecaster(len(channels), len(channels), hidden_size=64)
    cfg = TrainConfig(epochs=2, device=str(device), early_stopping_patience=None, warmup_steps=5)
    with tempfile.TemporaryDirectory() as folder:
        result = fine_tune(
            model,
            train,
            val,
            input_channels=channels,
            target_channels=channels,
            train_cfg=cfg,
            bucket_cfg=BucketConfig(batch_size=64),
            checkpoint_dir=Path(folder),
        )
        saved = (Path(folder) / "last.pt").exists()
    losses = [row["val/loss"] for row in result.history]
    ok = saved and all(np.isfinite(losses)) and losses[-1] < losses[0] * 1.05
    report.append(
        f"\n- fine_tune 2 epochs on {device}: val/loss {losses}, "
        f"{result.history[-1]['real_timesteps_per_s']:,.0f} real steps/s, checkpoint "
        f"{'written' if saved else 'MISSING'}: {'OK' if ok else 'FAIL'}"
    )
    return ok


def header(device: torch.device) -> list[str]:
    """The report's first lines: the device, and on CPU that this is not a GPU result."""
    report = [f"# GPU check on {device}"]
    if device.type != "cuda":
        report.append("No CUDA device here: running on CPU with small sizes (not a GPU result).")
        torch.set_num_threads(1)
    else:
        name = torch.cuda.get_device_name(device)
        report.append(f"{name}, torch {torch.__version__}, bf16 autocast")
    report.append("")
    return report


def plan_checks(
    device: torch.device, quick: bool, report: list[str]
) -> list[tuple[str, Callable[[], bool | None]]]:
    """The checks in order, each appending its lines to ``report``; sizes from ``quick``."""
    fleet = make_fleet(96 if quick else 2048, 8, 100 if quick else 400, seed=0)
    hidden, repeats, batch = (64, 1, 16) if quick else (256, 3, 64)
    tuned = fleet if quick else fleet.subset(range(512))
    return [
        ("padded vs packed", lambda: check_equivalence(device, report)),
        (
            "throughput",
            lambda: time_steps(
                fleet, device, hidden=hidden, repeats=repeats, batch_size=batch, report=report
            ),
        ),
        ("fine_tune", lambda: check_fine_tune(tuned, device, report)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="Small sizes (the CPU default).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    report = header(device)
    checks = plan_checks(device, args.quick or device.type != "cuda", report)
    ok = all([run_check(name, check, report) for name, check in checks])
    report.append(f"\nOverall: {'OK' if ok else 'FAIL'}")
    text = "\n".join(report)
    print(text)
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu_check.md").write_text(text + "\n")
    print(f"report written to {folder / 'gpu_check.md'}", file=sys.stderr)
    return 0 if ok else 1


def run_check(name: str, check: Callable[[], bool | None], report: list[str]) -> bool:
    """Run one check; an exception is a FAIL line in the report (traceback on stderr)."""
    try:
        return check() is not False
    except Exception as error:  # report every failure, then go on with the next check
        logger.exception("check %r raised", name)
        report.append(f"- {name}: FAIL ({type(error).__name__}: {error})")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return False


if __name__ == "__main__":
    sys.exit(main())
