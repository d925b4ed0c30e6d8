"""Evaluation figures logged with every run: losses, scores, thresholds, length buckets.

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas, never through
``pyplot``: no global figure registry to leak memory in a long-running worker, no GUI backend,
and safe to call from the threads a Prefect task runner uses. Each function returns the figure;
:func:`save_figure` writes it as PNG.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sensorlstm.metrics import DEFAULT_BUCKET_EDGES, precision_recall_curve

logger = logging.getLogger(__name__)

_NORMAL, _ANOMALY, _THRESHOLD = "tab:blue", "tab:red", "black"


def _figure(width: float = 8.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def plot_loss_curves(history: Sequence[Mapping[str, float]], *, title: str = "") -> Figure:
    """Every ``*loss*`` series of a training history against epoch (or step, or row number).

    Args:
        history: one mapping per epoch (or logging step), e.g. ``{"epoch": 1,
            "train/loss": 0.4, "val/loss": 0.5}``; missing or NaN values leave gaps.
    """
    fig = _figure()
    ax = fig.add_subplot()
    x_key = next((k for k in ("epoch", "step") if history and k in history[0]), None)
    x = [row.get(x_key, i) for i, row in enumerate(history)] if x_key else range(len(history))
    names = sorted({k for row in history for k in row if "loss" in k})
    for name in names:
        y = [float(row.get(name, math.nan)) for row in history]
        ax.plot(list(x), y, marker="o", label=name)
    ax.set_xlabel(x_key or "record")
    ax.set_ylabel("loss")
    if names and all(
        float(row[n]) > 0 for row in history for n in names if n in row and row[n] == row[n]
    ):
        ax.set_yscale("log")
    ax.set_title(title or "training losses")
    if names:
        ax.legend()
    return fig


def plot_score_timeline(
    scores: np.ndarray,
    threshold: float,
    *,
    labels: np.ndarray | None = None,
    timestamps: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """One recording's scores over time with the threshold and shaded labelled anomalies."""
    scores = np.asarray(scores, dtype=np.float64)
    fig = _figure(10.0, 3.5)
    ax = fig.add_subplot()
    x = np.arange(scores.size) if timestamps is None else np.asarray(timestamps)
    ax.plot(x, scores, color=_NORMAL, linewidth=0.8, label="score")
    ax.axhline(threshold, color=_THRESHOLD, linestyle="--", linewidth=1, label="threshold")
    flagged = scores > threshold
    ax.scatter(x[flagged], scores[flagged], color=_ANOMALY, s=8, zorder=3, label="flagged")
    if labels is not None:
        for start, stop in _segments(np.asarray(labels).astype(bool)):
            ax.axvspan(x[start], x[stop - 1], color=_ANOMALY, alpha=0.15, linewidth=0)
        ax.plot([], [], color=_ANOMALY, alpha=0.3, linewidth=6, label="labelled anomaly")
    if np.all(scores[np.isfinite(scores)] > 0) and np.isfinite(scores).any():
        ax.set_yscale("log")
    ax.set_xlabel("timestep" if timestamps is None else "time")
    ax.set_ylabel("anomaly score")
    ax.set_title(title or "anomaly score")
    ax.legend(loc="upper right", fontsize="small")
    return fig


def _segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of True."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def plot_score_histogram(
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray | None],
    threshold: float,
    *,
    bins: int = 60,
    title: str = "",
) -> Figure:
    """Score distributions of normal and anomalous steps (log-spaced bins), with the threshold.

    Unlabelled recordings are drawn as their own grey histogram.
    """
    groups: dict[str, list[np.ndarray]] = {"normal": [], "anomalous": [], "unlabelled": []}
    for s, lab in zip(scores, labels, strict=True):
        s = np.asarray(s, dtype=np.float64)
        if lab is None:
            groups["unlabelled"].append(s)
        else:
            lab = np.asarray(lab).astype(bool)
            groups["normal"].append(s[~lab])
            groups["anomalous"].append(s[lab])
    flat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in groups.items()}
    flat = {k: v[np.isfinite(v)] for k, v in flat.items()}
    every = np.concatenate(list(flat.values()))
    fig = _figure()
    ax = fig.add_subplot()
    positive = every[every > 0]
    if positive.size:
        low, high = positive.min(), max(positive.max(), threshold if threshold > 0 else 0)
        edges = np.geomspace(low, high * 1.0001 if high > low else low * 10, bins + 1)
        ax.set_xscale("log")
    else:
        edges = np.linspace(0.0, 1.0, bins + 1)
    colours = {"normal": _NORMAL, "anomalous": _ANOMALY, "unlabelled": "tab:gray"}
    for name, values in flat.items():
        if values.size:
            clipped = np.clip(values, edges[0], edges[-1])
            ax.hist(clipped, bins=edges, alpha=0.5, color=colours[name], label=name, density=True)
    ax.axvline(threshold, color=_THRESHOLD, linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("density")
    ax.set_title(title or "score distribution")
    ax.legend(fontsize="small")
    return fig


def plot_precision_recall(
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray | None],
    *,
    threshold: float | None = None,
    title: str = "",
) -> Figure:
    """Step-level precision-recall curve over labelled recordings, marking the threshold."""
    pairs = [(s, lab) for s, lab in zip(scores, labels, strict=True) if lab is not None]
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    if pairs:
        y_score = np.concatenate([np.asarray(s, np.float64) for s, _ in pairs])
        y_true = np.concatenate([np.asarray(lab).astype(bool) for _, lab in pairs])
        finite = np.isfinite(y_score)
        y_score, y_true = y_score[finite], y_true[finite]
        precision, recall, _ = precision_recall_curve(y_true, y_score)
        ax.step(recall, precision, where="post", color=_NORMAL, label="model")
        if y_true.size:
            ax.axhline(y_true.mean(), color="tab:gray", linestyle=":", label="chance")
        if threshold is not None and y_true.any():
            flagged = y_score > threshold
            tp = float(np.sum(flagged & y_true))
            op_precision = tp / flagged.sum() if flagged.any() else 0.0
            ax.scatter(
                [tp / y_true.sum()],
                [op_precision],
                color=_ANOMALY,
                zorder=3,
                label=f"threshold {threshold:.3g}",
            )
    else:
        ax.text(0.5, 0.5, "no labelled recordings", ha="center", va="center")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or "precision-recall")
    if pairs:
        ax.legend(fontsize="small", loc="lower left")
    return fig


def plot_length_histogram(
    lengths: Sequence[int] | np.ndarray,
    *,
    bucket_edges: Sequence[float] | None = DEFAULT_BUCKET_EDGES,
    title: str = "",
) -> Figure:
    """Recording lengths on a log axis, with the length-bucket edges as vertical lines."""
    lengths = np.asarray(lengths, dtype=np.float64)
    lengths = lengths[lengths > 0]
    fig = _figure()
    ax = fig.add_subplot()
    if lengths.size:
        high = lengths.max() * 1.0001 if lengths.max() > lengths.min() else lengths.min() * 2
        ax.hist(lengths, bins=np.geomspace(lengths.min(), high, 40), color=_NORMAL)
        ax.set_xscale("log")
        for edge in bucket_edges or []:
            if edge > 0:
                ax.axvline(edge, color="tab:gray", linestyle=":", linewidth=1)
    ax.set_xlabel("recording length (timesteps)")
    ax.set_ylabel("recordings")
    ax.set_title(title or f"{lengths.size} recordings, median length {np.median(lengths):.0f}")
    return fig


_BUCKET_KEY = re.compile(r"bucket_(\d+)-(\d+|inf)/f1$")


def plot_bucket_f1(
    metrics: Mapping[str, float], *, prefix: str = "test/", title: str = ""
) -> Figure:
    """Bar chart of F1 per length bucket, from :func:`~sensorlstm.metrics.evaluate_scores`.

    Each bar is annotated with the bucket's recording count.
    """
    rows = []
    for key, value in metrics.items():
        if not key.startswith(prefix):
            continue
        match = _BUCKET_KEY.search(key[len(prefix) :])
        if match:
            name = key[len(prefix) : -len("/f1")]
            count = metrics.get(f"{prefix}{name}/recordings", math.nan)
            rows.append((int(match.group(1)), name.removeprefix("bucket_"), value, count))
    rows.sort()
    fig = _figure()
    ax = fig.add_subplot()
    if rows:
        x = np.arange(len(rows))
        bars = ax.bar(x, [r[2] for r in rows], color=_NORMAL)
        ax.set_xticks(x, [r[1] for r in rows])
        for bar, row in zip(bars, rows, strict=True):
            ax.annotate(
                f"n={row[3]:.0f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize="small",
            )
    else:
        ax.text(0.5, 0.5, "no labelled length buckets", ha="center", va="center")
    overall = metrics.get(f"{prefix}f1")
    if overall is not None and overall == overall:
        ax.axhline(overall, color=_THRESHOLD, linestyle="--", label=f"all: {overall:.3f}")
        ax.legend(fontsize="small")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recording length bucket (timesteps)")
    ax.set_ylabel("F1")
    ax.set_title(title or "F1 by recording length")
    return fig
