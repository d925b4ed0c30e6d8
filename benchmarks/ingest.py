"""Ingest throughput and peak memory on long-format Parquet, against pandas and bare pyarrow.

Generates N rows x 8 float64 channels (10 M rows; ``--quick``: 1 M) of variable-length
recordings in long format, then times three methods, each in a fresh subprocess so its peak RSS
(``ru_maxrss``) is its own:

- ``sensorlstm``: ``sensorlstm.ingest.ingest`` (read, group, validate, float32 RecordingSet),
- ``pandas``: ``pd.read_parquet`` + ``groupby("recording_id")`` into one float32 array per
  recording (no validation, no time sort: a lower bound on what pandas code would do),
- ``pyarrow``: ``pq.read_table`` of the same columns (the floor: no grouping at all).

Prints a markdown table (medians over ``--repeats``) and writes it to
``benchmarks/results/ingest.md``. Run: ``.venv/bin/python benchmarks/ingest.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CHANNELS = [f"ch{i}" for i in range(8)]
METHODS = ("sensorlstm", "pandas", "pyarrow")


def generate(path: Path, rows: int, seed: int = 0) -> dict[str, float]:
    """Write ``rows`` rows of recordings (lognormal lengths, median 1,000) in row-group chunks."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < rows:
        lengths.append(int(np.clip(rng.lognormal(np.log(1000), 0.8), 50, 20000)))
    lengths[-1] -= sum(lengths) - rows
    ids = np.repeat(np.arange(len(lengths)), lengths)
    within = np.concatenate([np.arange(n) for n in lengths])
    chunk = 1_000_000
    writer = None
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        n = stop - start
        table = pa.table(
            {
                "recording_id": pa.array([f"machine-{i:06d}" for i in ids[start:stop]]),
                "timestamp": pa.array(
                    (1_700_000_000 + within[start:stop]).astype("datetime64[s]")
                ),
                **{c: rng.normal(size=n) for c in CHANNELS},
                "label": (rng.random(n) < 0.01).astype(np.int8),
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        writer.write_table(table)
    writer.close()
    numeric_bytes = rows * (len(CHANNELS) + 1) * 8  # float64 channels + int64 timestamps
    return {"recordings": len(lengths), "numeric_bytes": numeric_bytes}


def child(method: str, path: str) -> None:
    """Run one method once and print its time and peak memory as JSON (in a subprocess)."""
    import pandas as pd

    from sensorlstm.config import DataConfig
    from sensorlstm.ingest import ingest

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if method == "sensorlstm":
        result = ingest(path, DataConfig(min_length=2))
        n = result.report["recordings_used"]
    elif method == "pandas":
        df = pd.read_parquet(path)
        arrays = [g[CHANNELS].to_numpy(np.float32) for _, g in df.groupby("recording_id")]
        n = len(arrays)
    else:
        table = pq.read_table(path, columns=["recording_id", "timestamp", *CHANNELS, "label"])
        n = table.num_rows
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak": peak, "base": base, "n": n}))


def run(method: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, "--path", str(path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 M rows instead of 10 M")
    parser.add_argument("--rows", type=int, default=None, help="rows to generate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path)
        return

    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.parquet"
        info = generate(path, rows)
        print(
            f"{rows:,} rows x {len(CHANNELS)} channels, {info['recordings']:,} recordings, "
            f"{path.stat().st_size / 2**20:.0f} MiB on disk; repeats={args.repeats}"
        )
        measured: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
        for _ in range(args.repeats):
            for method in METHODS:
                measured[method].append(run(method, path))

    numeric = info["numeric_bytes"]
    med = {
        m: {key: statistics.median(r[key] for r in runs) for key in ("seconds", "peak", "base")}
        for m, runs in measured.items()
    }
    pandas_rate = rows / med["pandas"]["seconds"]
    lines = [
        f"Ingest of {rows:,} rows x {len(CHANNELS)} float64 channels (long-format Parquet, "
        f"{info['recordings']:,} recordings), median of {args.repeats} runs, each in a fresh "
        f"process. Numeric data in memory: {numeric / 2**20:.0f} MiB.",
        "",
        "| method | seconds | rows/s | vs pandas | peak RSS (MiB) | peak - imports (MiB) "
        "| (peak - imports) / numeric |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        s, peak, base = med[m]["seconds"], med[m]["peak"], med[m]["base"]
        rate = rows / s
        lines.append(
            f"| {m} | {s:.2f} | {rate / 1e6:.2f} M | {rate / pandas_rate:.2f}x | "
            f"{peak / 2**20:.0f} | {(peak - base) / 2**20:.0f} | {(peak - base) / numeric:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    (RESULTS / ("ingest-quick.md" if args.quick else "ingest.md")).write_text(table + "\n")


if __name__ == "__main__":
    main()
