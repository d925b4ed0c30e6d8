"""Ingest throughput and peak memory on long-format Parquet, against pandas and bare pyarrow.

Generates N rows x 8 float64 channels (10 M rows; ``--quick``: 1 M; ``--rows N``) of
variable-length recordings in long format, then times three methods, each in a fresh
subprocess so its memory is its own:

- ``sensorlstm``: ``sensorlstm.ingest.ingest`` (read, group, validate, float32 RecordingSet),
- ``pandas``: ``pd.read_parquet`` + ``groupby("recording_id")`` into one float32 array per
  recording (no validation, no time sort: a lower bound on what pandas code would do),
- ``pyarrow``: ``pq.read_table`` of the same columns (the floor: no grouping at all).

Memory: a child's ``ru_maxrss`` starts at the high-water mark of the process that forked it, so
the data is generated in a subprocess of its own and this process imports nothing heavy (it
stays a few MiB, below any child's imports). Each child then takes its baseline from its
*current* RSS (``/proc/self/statm``) after its imports, and reports peak minus that baseline.

Targets (the sensorlstm row): at least 3x the pandas rows/s, and peak minus imports below 3x
the numeric bytes (float64 channels + int64 timestamps).

Prints a markdown table (medians over ``--repeats``) and writes it to
``benchmarks/results/ingest.md`` (``ingest-quick.md``, ``ingest-<rows>.md`` for other sizes).
Run: ``.venv/bin/python benchmarks/ingest.py [--quick | --rows N] [--repeats K]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CHANNELS = [f"ch{i}" for i in range(8)]
METHODS = ("sensorlstm", "pandas", "pyarrow")
DEFAULT_ROWS, QUICK_ROWS = 10_000_000, 1_000_000
SPEED_TARGET = 3.0  # x pandas rows/s, at least
MEMORY_TARGET = 3.0  # x numeric bytes, peak minus imports below


# -- in subprocesses ---------------------------------------------------------------------------


def generate(path: Path, rows: int, seed: int = 0) -> dict[str, float]:
    """Write ``rows`` rows of recordings (lognormal lengths, median 1,000) in row-group chunks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

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


def _current_rss() -> int:
    """Resident memory now, in bytes (``/proc/self/statm``; the peak where it is missing)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return _peak_rss()


def _peak_rss() -> int:
    """Peak resident memory of this process, in bytes (macOS reports bytes, Linux KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def child(method: str, path: str) -> None:
    """Run one method once and print its time and memory as JSON (in a subprocess)."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from sensorlstm.config import DataConfig
    from sensorlstm.ingest import ingest

    base = _current_rss()  # after every import, before any data
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
    print(json.dumps({"seconds": seconds, "peak": _peak_rss(), "base": base, "n": n}))


# -- in this (small) process -------------------------------------------------------------------


def _subprocess_json(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _results_file(rows: int) -> Path:
    name = {DEFAULT_ROWS: "ingest.md", QUICK_ROWS: "ingest-quick.md"}.get(rows)
    return RESULTS / (name or f"ingest-{rows}.md")


def _target(rate_vs_pandas: float, memory_vs_numeric: float) -> str:
    fast = rate_vs_pandas >= SPEED_TARGET
    small = memory_vs_numeric < MEMORY_TARGET
    return (
        f">= {SPEED_TARGET:g}x pandas: {'yes' if fast else 'no'}; "
        f"< {MEMORY_TARGET:g}x numeric: {'yes' if small else 'no'}"
    )


def table(
    rows: int, info: dict[str, float], med: dict[str, dict[str, float]], repeats: int
) -> str:
    """The markdown result table; the target column is filled for the sensorlstm row."""
    numeric = info["numeric_bytes"]
    pandas_rate = rows / med["pandas"]["seconds"]
    lines = [
        f"Ingest of {rows:,} rows x {len(CHANNELS)} float64 channels (long-format Parquet, "
        f"{info['recordings']:,} recordings), median of {repeats} runs, each in a fresh "
        f"process. Numeric data in memory: {numeric / 2**20:.0f} MiB. Imports: RSS after a "
        "child's imports; targets for sensorlstm: >= 3x pandas rows/s, peak - imports < 3x "
        "numeric.",
        "",
        "| method | seconds | rows/s | vs pandas | peak RSS (MiB) | imports (MiB) "
        "| peak - imports (MiB) | (peak - imports) / numeric | target met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        s, peak, base = med[m]["seconds"], med[m]["peak"], med[m]["base"]
        rate = rows / s
        memory = (peak - base) / numeric
        target = _target(rate / pandas_rate, memory) if m == "sensorlstm" else "-"
        lines.append(
            f"| {m} | {s:.2f} | {rate / 1e6:.2f} M | {rate / pandas_rate:.2f}x | "
            f"{peak / 2**20:.0f} | {base / 2**20:.0f} | {(peak - base) / 2**20:.0f} | "
            f"{memory:.2f}x | {target} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 M rows instead of 10 M")
    parser.add_argument("--rows", type=int, default=None, help="rows to generate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows = args.rows or (QUICK_ROWS if args.quick else DEFAULT_ROWS)
    if args.child:
        child(args.child, args.path)
        return
    if args.generate:
        print(json.dumps(generate(Path(args.path), rows)))
        return

    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.parquet"
        info = _subprocess_json("--generate", "--rows", str(rows), "--path", str(path))
        print(
            f"{rows:,} rows x {len(CHANNELS)} channels, {info['recordings']:,} recordings, "
            f"{path.stat().st_size / 2**20:.0f} MiB on disk; repeats={args.repeats}"
        )
        measured: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
        for _ in range(args.repeats):
            for method in METHODS:
                measured[method].append(_subprocess_json("--child", method, "--path", str(path)))

    med = {
        m: {key: statistics.median(r[key] for r in runs) for key in ("seconds", "peak", "base")}
        for m, runs in measured.items()
    }
    text = table(rows, info, med, args.repeats)
    print(text)
    _results_file(rows).write_text(text + "\n")


if __name__ == "__main__":
    main()
