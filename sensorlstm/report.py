"""The data report: what came in, what was used, what was quarantined and why.

The report is a JSON-able dict, written next to the ingested data as ``report.json``; the Prefect
table artifact and the MLflow run show it. Its counts satisfy
``rows_in == rows_used + rows_quarantined`` (checked when it is built).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sensorlstm.quarantine import Issue
from sensorlstm.recording import RecordingSet

REPORT_FILE = "report.json"
#: The data set's headline counts (all splits), written last by ``save_dataset``.
SUMMARY_FILE = "summary.json"
MAX_EXAMPLES = 50


def build_report(
    recordings: RecordingSet,
    quarantined: Sequence[Issue],
    warnings: Sequence[Issue],
    *,
    rows_in: int,
    rows_used: int,
    files_in: int,
    fingerprint: str,
    ranges: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Counts by reason, length histogram and per-channel statistics.

    Args:
        recordings: the clean recordings.
        quarantined: rejected files, recordings and rows.
        warnings: findings that kept the data.
        rows_in: data rows in all source files.
        rows_used: source rows of the kept recordings (before any resampling).
        files_in: number of source files.
        fingerprint: the ingest fingerprint (inputs + config).
        ranges: per-recording channel minima and maxima, when already computed.

    Returns:
        The report. ``recordings_quarantined`` counts quarantined recordings plus whole files
        rejected before their recordings were known (an unreadable file counts as one).

    Raises:
        RuntimeError: the row accounting does not add up (a bug, never a data problem).
    """
    rows_quarantined = int(sum(issue.rows for issue in quarantined))
    if rows_in != rows_used + rows_quarantined:
        raise RuntimeError(
            f"ingest lost track of rows: {rows_in} in != {rows_used} used + "
            f"{rows_quarantined} quarantined; please report this with the input files"
        )
    reasons = Counter(issue.reason for issue in quarantined)
    reason_rows: Counter[str] = Counter()
    for issue in quarantined:
        reason_rows[issue.reason] += issue.rows
    lengths = recordings.lengths
    return {
        "rows_in": int(rows_in),
        "rows_used": int(rows_used),
        "rows_quarantined": rows_quarantined,
        "rows_out": recordings.n_rows,
        "files_in": int(files_in),
        "files_quarantined": sum(1 for issue in quarantined if issue.scope == "file"),
        "recordings_used": len(recordings),
        "recordings_quarantined": sum(
            1 for issue in quarantined if issue.scope in ("file", "recording")
        ),
        "reasons": dict(sorted(reasons.items())),
        "reason_rows": dict(sorted(reason_rows.items())),
        "warnings": dict(sorted(Counter(w.reason for w in warnings).items())),
        "warning_examples": [w.message() for w in warnings[:MAX_EXAMPLES]],
        "channels": list(recordings.channels),
        "lengths": _length_summary(lengths),
        "length_histogram": length_histogram(lengths),
        "channel_stats": channel_stats(recordings, warnings, ranges),
        "label_rate": None
        if recordings.labels is None or recordings.n_rows == 0
        else float(recordings.labels.mean()),
        "fingerprint": fingerprint,
    }


def _length_summary(lengths: np.ndarray) -> dict[str, float | int | None]:
    if len(lengths) == 0:
        return {"min": None, "median": None, "max": None, "mean": None}
    return {
        "min": int(lengths.min()),
        "median": float(np.median(lengths)),
        "max": int(lengths.max()),
        "mean": float(lengths.mean()),
    }


def length_histogram(lengths: np.ndarray, bins: int = 20) -> dict[str, list]:
    """Recording lengths in log-spaced bins (lengths span orders of magnitude in a fleet)."""
    if len(lengths) == 0:
        return {"edges": [], "counts": []}
    low, high = max(int(lengths.min()), 1), max(int(lengths.max()), 2)
    edges = np.unique(np.geomspace(low, high + 1, bins + 1).round().astype(np.int64))
    if len(edges) < 2:
        edges = np.array([low, high + 1])
    counts, _ = np.histogram(lengths, bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def channel_stats(
    recordings: RecordingSet,
    warnings: Sequence[Issue],
    ranges: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, dict]:
    """Mean, std, min and max per channel over all used rows, and constant-recording counts.

    Sums are accumulated in float64 block by block, so no float64 copy of the values is made;
    the variance comes from E[x^2] - E[x]^2, which loses precision only for channels whose
    mean is ~1e7 times their spread.
    """
    constant = Counter(w.column for w in warnings if w.reason == "constant_channel")
    values = recordings.values
    n, n_channels = values.shape
    total = np.zeros(n_channels)
    squares = np.zeros(n_channels)
    low = np.full(n_channels, np.inf)
    high = np.full(n_channels, -np.inf)
    for start in range(0, n, _STATS_BLOCK):
        block = values[start : start + _STATS_BLOCK]
        total += block.sum(axis=0, dtype=np.float64)
        squares += np.einsum("ij,ij->j", block, block, dtype=np.float64)
        if ranges is None or len(ranges[0]) == 0:
            low = np.minimum(low, block.min(axis=0))
            high = np.maximum(high, block.max(axis=0))
    if ranges is not None and len(ranges[0]):
        low, high = ranges[0].min(axis=0), ranges[1].max(axis=0)
    stats: dict[str, dict] = {}
    for j, name in enumerate(recordings.channels):
        mean = total[j] / n if n else None
        stats[name] = {
            "mean": None if not n else float(mean),
            "std": None if not n else float(np.sqrt(max(squares[j] / n - mean**2, 0.0))),
            "min": None if not n else float(low[j]),
            "max": None if not n else float(high[j]),
            "constant_recordings": int(constant.get(name, 0)),
        }
    return stats


_STATS_BLOCK = 1 << 18


def report_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report as rows for a table artifact.

    One row per total, quarantine reason, warning, channel and length-histogram bin (``kind``
    ``length``, named by its range of timesteps, with a text bar in ``detail``), so the Prefect
    UI shows the shape of the fleet without opening the PNG.
    """
    rows: list[dict[str, Any]] = [
        {"kind": "total", "name": key, "count": report[key], "rows": None, "detail": ""}
        for key in (
            "rows_in",
            "rows_used",
            "rows_quarantined",
            "recordings_used",
            "recordings_quarantined",
        )
    ]
    for reason, count in report["reasons"].items():
        rows.append(
            {
                "kind": "quarantine",
                "name": reason,
                "count": count,
                "rows": report["reason_rows"].get(reason, 0),
                "detail": "",
            }
        )
    for reason, count in report["warnings"].items():
        rows.append({"kind": "warning", "name": reason, "count": count, "rows": 0, "detail": ""})
    for name, s in report["channel_stats"].items():
        detail = ", ".join(
            f"{key}={value:.4g}"
            for key, value in s.items()
            if key != "constant_recordings" and value is not None
        )
        rows.append(
            {
                "kind": "channel",
                "name": name,
                "count": s["constant_recordings"],
                "rows": None,
                "detail": detail,
            }
        )
    rows.extend(histogram_rows(report["length_histogram"]))
    return rows


#: Width in characters of the longest bar in :func:`histogram_rows`.
BAR_WIDTH = 40


def histogram_rows(histogram: dict[str, list]) -> list[dict[str, Any]]:
    """Table rows for a length histogram: one per bin, ``[lo, hi)`` timesteps, with a bar."""
    counts, edges = histogram["counts"], histogram["edges"]
    top = max(counts, default=0)
    rows = []
    for count, lo, hi in zip(counts, edges[:-1], edges[1:], strict=True):
        bar = "#" * (round(BAR_WIDTH * count / top) if top else 0)
        rows.append(
            {
                "kind": "length",
                "name": f"{lo}-{hi - 1} steps",
                "count": count,
                "rows": None,
                "detail": bar,
            }
        )
    return rows


def plot_length_histogram(report: dict[str, Any], path: str | Path) -> Path:
    """Save the recording-length histogram of a report as a PNG (log-spaced bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = report["length_histogram"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if hist["counts"]:
        edges = np.asarray(hist["edges"], dtype=float)
        ax.stairs(hist["counts"], edges, fill=True)
        ax.set_xscale("log")
    ax.set_xlabel("recording length (timesteps)")
    ax.set_ylabel("recordings")
    ax.set_title(f"{report['recordings_used']} recordings used")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
