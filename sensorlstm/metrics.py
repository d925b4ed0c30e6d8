"""Thresholds and detection metrics for per-timestep anomaly scores.

Conventions used throughout:

- A step is flagged anomalous when its score is strictly greater than the threshold.
- Step-level metrics pool every labelled step of every labelled recording (micro average).
- Recordings whose label array is None are scored (they count in ``mean_score`` and the flagged
  share) but are left out of every metric that needs labels, because an absent label does not
  mean "normal".
- Ratios with a zero denominator are 0.0 (precision, recall, F1, FAR, MAR) and threshold-free
  metrics that need both classes (ROC AUC) or positives (average precision) are NaN; NaN is a
  valid MLflow metric value and never compares as better in :mod:`sensorlstm.champion`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_BUCKET_EDGES: tuple[int, ...] = (0, 100, 300, 1000, 3000)
"""Fixed length-bucket edges, so bucket metric names stay the same from one nightly run to the
next and MLflow can chart them across runs; the last bucket is open-ended."""


def _flat_scores(scores: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    if isinstance(scores, np.ndarray):
        return scores.astype(np.float64).ravel()
    if len(scores) == 0:
        return np.zeros(0)
    return np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in scores])


def fit_threshold(
    scores: np.ndarray | Sequence[np.ndarray],
    method: Literal["quantile", "max_f1", "fixed"] = "quantile",
    *,
    quantile: float = 0.99,
    scale: float = 1.0,
    labels: np.ndarray | Sequence[np.ndarray | None] | None = None,
    value: float | None = None,
) -> float:
    """Choose the anomaly threshold from (usually validation) scores.

    Args:
        scores: one array of per-step scores, or one per recording.
        method: ``"quantile"``: ``scale`` times the ``quantile`` of the scores, label-free (for
            fleets with few or no labels); ``"max_f1"``: the threshold with the best step-level
            F1 against ``labels``, placed halfway between two distinct scores;
            ``"fixed"``: ``value``.
        quantile: quantile in (0, 1) for ``"quantile"``.
        scale: multiplier on the quantile (>1 makes alarms rarer).
        labels: 0/1 per step, matching ``scores``; required for ``"max_f1"``. Recordings whose
            labels are None are skipped.
        value: the threshold for ``"fixed"``.

    Returns:
        The threshold; a step is anomalous when its score is greater than it.
    """
    if method == "fixed":
        if value is None or not np.isfinite(value):
            raise ValueError(
                f"threshold method 'fixed' needs a finite value, got {value!r}; "
                "set evaluate.threshold_value"
            )
        return float(value)

    if method == "max_f1":
        if labels is None:
            raise ValueError(
                "threshold method 'max_f1' needs labels; use 'quantile' for unlabelled data"
            )
        flat_scores, flat_labels = _labelled_pairs(scores, labels)
        if flat_labels.sum() == 0:
            raise ValueError(
                "threshold method 'max_f1' needs at least one anomalous step in the labels, "
                "got none; use 'quantile' instead"
            )
        return _max_f1_threshold(flat_scores, flat_labels)

    if method == "quantile":
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        flat = _flat_scores(scores)
        flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            raise ValueError("cannot fit a threshold: no finite scores were given")
        return float(np.quantile(flat, quantile) * scale)

    raise ValueError(f"unknown threshold method {method!r}; expected quantile, max_f1 or fixed")


def _labelled_pairs(
    scores: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray | None],
) -> tuple[np.ndarray, np.ndarray]:
    """Flat (scores, labels) over labelled recordings only, finite scores only."""
    if isinstance(scores, np.ndarray) and isinstance(labels, np.ndarray):
        pairs = [(scores, labels)]
    else:
        if len(scores) != len(labels):
            raise ValueError(
                f"got {len(scores)} score arrays but {len(labels)} label arrays; "
                "pass one label array (or None) per recording"
            )
        pairs = [(s, lab) for s, lab in zip(scores, labels, strict=True) if lab is not None]
    flat_s, flat_l = [], []
    for i, (s, lab) in enumerate(pairs):
        s, lab = np.asarray(s, np.float64).ravel(), np.asarray(lab).ravel()
        if s.shape != lab.shape:
            raise ValueError(
                f"recording {i}: {s.size} scores but {lab.size} labels; they must match per step"
            )
        flat_s.append(s)
        flat_l.append(lab.astype(bool))
    if not flat_s:
        return np.zeros(0), np.zeros(0, dtype=bool)
    s, lab = np.concatenate(flat_s), np.concatenate(flat_l)
    finite = np.isfinite(s)
    return s[finite], lab[finite]


def _max_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    # thresholds[best] is the lowest score still flagged; the cut sits below it, halfway to the
    # next distinct score, so that "score > threshold" reproduces this operating point.
    distinct = np.unique(scores)
    below = distinct[distinct < thresholds[best]]
    if below.size == 0:
        return float(np.nextafter(thresholds[best], -np.inf))
    return float((thresholds[best] + below[-1]) / 2.0)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Confusion counts and rates for 0/1 truth and predictions.

    Returns:
        ``precision``, ``recall``, ``f1``, ``far`` (false alarm rate, FP / (FP + TN)),
        ``mar`` (missed alarm rate, FN / (FN + TP)), ``accuracy``, and the counts ``tp``,
        ``fp``, ``fn``, ``tn`` (as floats, ready for MLflow). Zero denominators give 0.0.
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    y_pred = np.asarray(y_pred).astype(bool).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} entries but y_pred has {y_pred.size}")
    tp = int(np.sum(y_true & y_pred))
    fp = int(np.sum(~y_true & y_pred))
    fn = int(np.sum(y_true & ~y_pred))
    tn = int(np.sum(~y_true & ~y_pred))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "far": _ratio(fp, fp + tn),
        "mar": _ratio(fn, fn + tp),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
        "tn": float(tn),
    }


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, exact, ties counted as half (Mann-Whitney U).

    Returns NaN when only one class is present.
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Average ranks (1-based) of tied scores, without scipy.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    mean_rank = upper - (counts - 1) / 2.0
    rank_sum = mean_rank[inverse][y_true].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_recall_curve(
    y_true: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall when flagging every step with score >= each distinct score.

    Returns:
        ``(precision, recall, thresholds)``, one entry per distinct score, thresholds
        decreasing (so recall increases). Tied scores are flagged together.
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_true = scores[order], y_true[order]
    # Last index of each run of equal scores: the operating points.
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tps = np.cumsum(sorted_true)[last]
    flagged = last + 1
    n_pos = int(y_true.sum())
    precision = tps / flagged
    recall = tps / n_pos if n_pos > 0 else np.zeros_like(tps, dtype=np.float64)
    return precision.astype(np.float64), recall.astype(np.float64), sorted_scores[last]


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over distinct thresholds of (recall gain) x precision.

    Exact (no interpolation); tied scores form one operating point. NaN without positives.
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    if not y_true.any():
        return float("nan")
    precision, recall, _ = precision_recall_curve(y_true, scores)
    gains = np.diff(np.r_[0.0, recall])
    return float(np.sum(gains * precision))


def point_adjust(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Predictions with every labelled segment fully flagged if any of its steps is flagged.

    The point-adjusted protocol common in time-series anomaly detection papers: an operator is
    alerted once per event, so catching one step of an event counts as catching all of it.
    It inflates scores (a random detector gets a high point-adjusted F1 on long events), which
    is why it is reported next to, never instead of, the plain step-level F1.
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    adjusted = np.asarray(y_pred).astype(bool).ravel().copy()
    if not y_true.any():
        return adjusted
    # Number the labelled segments 1..S (0 = normal step) and find the ones with a flag.
    starts = np.diff(np.r_[0, y_true.astype(np.int8)]) == 1
    segment = np.cumsum(starts) * y_true
    caught = np.bincount(segment, weights=adjusted & y_true) > 0
    caught[0] = False
    adjusted |= caught[segment]
    return adjusted


def length_bucket_name(lo: float, hi: float) -> str:
    """``bucket_<lo>-<hi>``; an open-ended last bucket reads ``bucket_<lo>-inf``."""
    hi_text = "inf" if not np.isfinite(hi) else str(int(hi))
    return f"bucket_{int(lo)}-{hi_text}"


def evaluate_scores(
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray | None],
    threshold: float,
    *,
    lengths: Sequence[int] | np.ndarray | None = None,
    bucket_edges: Sequence[float] | None = None,
    prefix: str = "test/",
) -> dict[str, float]:
    """Every evaluation metric of a split as flat ``<prefix><name>`` floats, MLflow-ready.

    Args:
        scores: one per-step score array per recording.
        labels: one 0/1 array per recording (same length as its scores) or None when the
            recording has no labels; unlabelled recordings count only in label-free metrics.
        threshold: steps with score > threshold are flagged.
        lengths: recording lengths used for the length buckets; default: the score lengths.
        bucket_edges: increasing bucket edges; recordings with ``edges[k] <= length <
            edges[k + 1]`` fall in bucket k, the last bucket is open-ended. Default
            :data:`DEFAULT_BUCKET_EDGES`. Empty buckets are omitted.
        prefix: metric name prefix, e.g. ``"val/"``.

    Returns:
        Label-free: ``recordings``, ``steps``, ``mean_score``, ``flagged_rate`` (share of steps
        flagged). With labels: ``labelled_recordings``, the :func:`classification_metrics` keys
        (step level), ``roc_auc``, ``average_precision``, ``pa_f1`` (point-adjusted F1, see
        :func:`point_adjust`), ``recording_f1`` (a recording is flagged when any step is, and
        anomalous when any step is labelled). Per bucket: ``bucket_<lo>-<hi>/recordings`` and,
        when the bucket holds labelled recordings, ``.../f1``, ``.../precision``,
        ``.../recall``, ``.../far``.
    """
    if len(scores) != len(labels):
        raise ValueError(
            f"got {len(scores)} score arrays but {len(labels)} label entries; pass one label "
            "array or None per recording"
        )
    scores = [np.asarray(s, dtype=np.float64).ravel() for s in scores]
    lengths = np.array([s.size for s in scores] if lengths is None else lengths, dtype=np.int64)
    if lengths.size != len(scores):
        raise ValueError(f"got {lengths.size} lengths for {len(scores)} recordings")
    for i, (s, lab) in enumerate(zip(scores, labels, strict=True)):
        if lab is not None and np.asarray(lab).size != s.size:
            raise ValueError(
                f"recording {i}: {s.size} scores but {np.asarray(lab).size} labels; "
                "scores and labels must cover the same steps"
            )

    metrics: dict[str, float] = {}
    flat = _flat_scores(scores)
    metrics["recordings"] = float(len(scores))
    metrics["steps"] = float(flat.size)
    metrics["mean_score"] = float(np.nanmean(flat)) if flat.size else float("nan")
    metrics["flagged_rate"] = float(np.mean(flat > threshold)) if flat.size else 0.0

    labelled = [i for i, lab in enumerate(labels) if lab is not None]
    metrics["labelled_recordings"] = float(len(labelled))
    if labelled:
        metrics.update(_label_metrics([scores[i] for i in labelled], labels, labelled, threshold))

    edges = np.asarray(DEFAULT_BUCKET_EDGES if bucket_edges is None else bucket_edges, float)
    if edges.size == 0 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bucket_edges must be non-empty and increasing, got {edges.tolist()}")
    bounds = np.r_[edges, np.inf] if np.isfinite(edges[-1]) else edges
    which = np.searchsorted(bounds, lengths, side="right") - 1
    for k in range(bounds.size - 1):
        members = np.flatnonzero(which == k)
        if members.size == 0:
            continue
        name = length_bucket_name(bounds[k], bounds[k + 1])
        metrics[f"{name}/recordings"] = float(members.size)
        with_labels = [int(i) for i in members if labels[i] is not None]
        if with_labels:
            y_true = np.concatenate([np.asarray(labels[i]).ravel() for i in with_labels])
            y_pred = np.concatenate([scores[i] > threshold for i in with_labels])
            cm = classification_metrics(y_true, y_pred)
            for key in ("f1", "precision", "recall", "far"):
                metrics[f"{name}/{key}"] = cm[key]
    return {f"{prefix}{key}": value for key, value in metrics.items()}


def _label_metrics(
    scores: list[np.ndarray],
    labels: Sequence[np.ndarray | None],
    labelled: list[int],
    threshold: float,
) -> dict[str, float]:
    """Step-, event- and recording-level metrics over the labelled recordings."""
    truths = [np.asarray(labels[i]).astype(bool).ravel() for i in labelled]
    preds = [s > threshold for s in scores]
    y_true, y_pred, y_score = np.concatenate(truths), np.concatenate(preds), np.concatenate(scores)
    finite = np.isfinite(y_score)

    out = classification_metrics(y_true, y_pred)
    out["roc_auc"] = roc_auc(y_true[finite], y_score[finite])
    out["average_precision"] = average_precision(y_true[finite], y_score[finite])
    # Point adjustment per recording, so an event never spans two recordings.
    adjusted = np.concatenate([point_adjust(t, p) for t, p in zip(truths, preds, strict=True)])
    out["pa_f1"] = classification_metrics(y_true, adjusted)["f1"]
    per_recording = classification_metrics(
        np.array([t.any() for t in truths]), np.array([p.any() for p in preds])
    )
    out["recording_f1"] = per_recording["f1"]
    return out
