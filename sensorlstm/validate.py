"""Per-recording checks on the combined fleet, each outcome with a reason code.

The checks work on a :class:`Fleet`: every recording's rows stacked in one block, as in
:class:`~sensorlstm.recording.RecordingSet`, but with raw float32 labels and not yet cleaned.
Checks look at the whole block with numpy at once and only loop over the (usually few)
recordings that fail, so a clean fleet of millions of rows costs a few vectorised passes.

A rejected recording is not removed at once: it is put in ``Fleet.rejected`` (index -> issue)
and the rows are counted when :meth:`Fleet.finish` builds the clean set, so every row ends up
either used or quarantined exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from sensorlstm.config import DataConfig
from sensorlstm.quarantine import IngestError, Issue
from sensorlstm.recording import RecordingSet

logger = logging.getLogger(__name__)


@dataclass
class Fleet:
    """Recordings being validated: values plus offsets, one source per recording."""

    ids: list[str]
    sources: list[str]
    offsets: np.ndarray
    values: np.ndarray
    channels: list[str]
    labels: np.ndarray | None
    timestamps: np.ndarray | None
    rejected: dict[int, Issue] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def reject(
        self,
        i: int,
        reason: str,
        column: str | None,
        detail: str,
        *,
        cfg: DataConfig,
        policy: str = "quarantine",
    ) -> None:
        """Quarantine recording ``i`` (first reason wins), or raise when the policy is ``fail``."""
        issue = Issue(self.sources[i], self.ids[i], reason, column, detail, 0, "recording")
        if policy == "fail":
            raise IngestError(issue.message() + " (the policy for this check is 'fail')")
        self.rejected.setdefault(i, issue)

    def warn(self, i: int | None, reason: str, column: str | None, detail: str) -> None:
        source = self.sources[i] if i is not None else ""
        rec = self.ids[i] if i is not None else None
        self.warnings.append(Issue(source, rec, reason, column, detail, 0, "warning"))

    def drop_rows(self, drop: np.ndarray) -> np.ndarray:
        """Remove the rows where ``drop`` is True; returns rows dropped per recording."""
        rec = np.searchsorted(self.offsets, np.flatnonzero(drop), side="right") - 1
        per_recording = np.bincount(rec, minlength=len(self.ids))
        keep = ~drop
        self.values = self.values[keep]
        if self.labels is not None:
            self.labels = self.labels[keep]
        if self.timestamps is not None:
            self.timestamps = self.timestamps[keep]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths - per_recording)]).astype(
            np.int64
        )
        return per_recording

    def finish(self) -> tuple[RecordingSet, list[Issue]]:
        """The clean set of recordings not rejected, and the issues for those rejected."""
        lengths = self.lengths
        rejected = [replace(issue, rows=int(lengths[i])) for i, issue in self.rejected.items()]
        keep = np.array([i for i in range(len(self.ids)) if i not in self.rejected], np.int64)
        rows = None if len(keep) == len(self.ids) else gather_rows(self.offsets, keep)
        pick = (lambda a: a) if rows is None else (lambda a: a[rows])
        labels = None
        if self.labels is not None:
            labels = pick(self.labels).astype(np.int8)
        kept_lengths = lengths[keep]
        recordings = RecordingSet(
            ids=[self.ids[i] for i in keep],
            offsets=np.concatenate([[0], np.cumsum(kept_lengths)]).astype(np.int64),
            values=np.ascontiguousarray(pick(self.values), dtype=np.float32),
            channels=list(self.channels),
            labels=labels,
            timestamps=None if self.timestamps is None else pick(self.timestamps),
            sources=[self.sources[i] for i in keep],
        )
        return recordings, rejected


def gather_rows(offsets: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Row numbers of recordings ``keep`` (in that order), concatenated, without a row loop."""
    lengths = (offsets[1:] - offsets[:-1])[keep]
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    before = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(offsets[keep] - before, lengths) + np.arange(total, dtype=np.int64)


# -- checks ------------------------------------------------------------------------------------


def check_timestamps(fleet: Fleet, cfg: DataConfig, column: str | None) -> None:
    """Sort recordings by time; drop, quarantine or fail on duplicate timestamps."""
    t = fleet.timestamps
    if t is None or len(t) < 2:
        return
    within = np.ones(len(t) - 1, bool)
    inner = fleet.offsets[1:-1]
    within[inner[(inner > 0) & (inner < len(t))] - 1] = False
    decreasing = (np.diff(t) < 0) & within
    if decreasing.any():  # only joined recordings reach here unsorted; files are sorted on read
        for i in _recordings_of(decreasing, fleet.offsets, shift=1):
            lo, hi = fleet.offsets[i], fleet.offsets[i + 1]
            order = lo + np.argsort(t[lo:hi], kind="stable")
            fleet.values[lo:hi] = fleet.values[order]
            if fleet.labels is not None:
                fleet.labels[lo:hi] = fleet.labels[order]
            t[lo:hi] = t[order]
    duplicate = (np.diff(t) == 0) & within
    if not duplicate.any():
        return
    affected = _recordings_of(duplicate, fleet.offsets, shift=1)
    if cfg.duplicate_policy != "sort_dedup":
        for i in affected:
            fleet.reject(
                i,
                "duplicate_timestamp",
                column,
                "several rows share a timestamp; set data.duplicate_policy: sort_dedup to keep "
                "the first of each",
                cfg=cfg,
                policy=cfg.duplicate_policy,
            )
        return
    drop = np.concatenate([[False], duplicate])
    dropped = fleet.drop_rows(drop)
    for i in affected:
        fleet.issues.append(
            Issue(
                fleet.sources[i],
                fleet.ids[i],
                "duplicate_timestamp",
                column,
                f"{dropped[i]} rows repeat an earlier timestamp; the first row of each was kept",
                int(dropped[i]),
                "rows",
            )
        )


def check_finite(fleet: Fleet, cfg: DataConfig) -> None:
    """NaN and inf: interpolate short gaps, quarantine or fail, per ``cfg.nan_policy``."""
    if len(fleet.values) == 0:
        return
    # One BLAS pass: a row sum is non-finite iff the row holds NaN/inf (or overflows, which
    # the per-column check below then finds harmless).
    row_sums = fleet.values @ np.ones(fleet.values.shape[1], fleet.values.dtype)
    finite_rows = np.isfinite(row_sums)
    if finite_rows.all():
        return
    for i in _recordings_of(~finite_rows, fleet.offsets):
        if i in fleet.rejected:
            continue
        lo, hi = fleet.offsets[i], fleet.offsets[i + 1]
        segment = fleet.values[lo:hi]
        filled = 0
        for j in np.flatnonzero(~np.isfinite(segment).all(axis=0)):
            name = fleet.channels[j]
            bad = ~np.isfinite(segment[:, j])
            if cfg.nan_policy != "interpolate":
                fleet.reject(
                    i,
                    "nan",
                    name,
                    f"{int(bad.sum())} NaN/inf values; set data.nan_policy: interpolate to fill "
                    f"gaps up to data.max_gap={cfg.max_gap} steps",
                    cfg=cfg,
                    policy=cfg.nan_policy,
                )
                break
            gap = _longest_run(bad)
            if gap > cfg.max_gap or bad.all():
                fleet.reject(
                    i,
                    "nan_gap",
                    name,
                    f"a run of {gap} NaN/inf values (of {len(bad)} rows); expected at most "
                    f"data.max_gap={cfg.max_gap}; raise it to interpolate longer gaps",
                    cfg=cfg,
                )
                break
            positions = np.arange(len(bad))
            segment[bad, j] = np.interp(positions[bad], positions[~bad], segment[~bad, j])
            filled += int(bad.sum())
        if filled and i not in fleet.rejected:
            fleet.warn(i, "nan_interpolated", None, f"{filled} values filled")


def check_labels(fleet: Fleet, cfg: DataConfig, column: str | None) -> None:
    """Labels must be 0 or 1; missing labels become 0 with a warning."""
    labels = fleet.labels
    if labels is None:
        return
    missing = np.isnan(labels)
    if missing.any():
        for i in _recordings_of(missing, fleet.offsets):
            lo, hi = fleet.offsets[i], fleet.offsets[i + 1]
            n = int(missing[lo:hi].sum())
            fleet.warn(i, "label_missing", column, f"{n} empty labels set to 0")
        labels[missing] = 0
    bad = (labels != 0) & (labels != 1)
    for i in _recordings_of(bad, fleet.offsets):
        lo, hi = fleet.offsets[i], fleet.offsets[i + 1]
        example = labels[lo:hi][bad[lo:hi]][0]
        fleet.reject(
            i,
            "bad_label",
            column,
            f"expected labels 0 or 1, got values such as {example} (2 stands for text)",
            cfg=cfg,
        )


def check_length(fleet: Fleet, cfg: DataConfig) -> None:
    """Recordings below ``cfg.min_length`` timesteps are quarantined; long ones are kept."""
    for i in np.flatnonzero(fleet.lengths < cfg.min_length):
        fleet.reject(
            int(i),
            "too_short",
            None,
            f"{int(fleet.lengths[i])} timesteps, expected at least data.min_length="
            f"{cfg.min_length}",
            cfg=cfg,
        )


def recording_ranges(recordings: RecordingSet) -> tuple[np.ndarray, np.ndarray]:
    """Per recording and channel minimum and maximum, each ``(n, C)``."""
    if len(recordings) == 0 or recordings.n_rows == 0 or (recordings.lengths == 0).any():
        empty = np.zeros((0, recordings.n_channels), np.float32)
        return empty, empty
    starts = recordings.offsets[:-1]
    low = np.minimum.reduceat(recordings.values, starts, axis=0)
    high = np.maximum.reduceat(recordings.values, starts, axis=0)
    return low, high


def check_constant(
    recordings: RecordingSet, ranges: tuple[np.ndarray, np.ndarray] | None = None
) -> list[Issue]:
    """Warnings for channels that do not vary within a recording (kept, but worth knowing)."""
    low, high = ranges if ranges is not None else recording_ranges(recordings)
    if len(low) == 0:
        return []
    warnings = []
    for i, j in zip(*np.nonzero(high == low), strict=True):
        warnings.append(
            Issue(
                recordings.sources[i],
                recordings.ids[i],
                "constant_channel",
                recordings.channels[j],
                f"constant at {float(high[i, j]):g}",
                0,
                "warning",
            )
        )
    return warnings


def check_sampling(recordings: RecordingSet, cfg: DataConfig) -> tuple[RecordingSet, list[Issue]]:
    """Warn about irregular time steps; resample to ``cfg.resample`` when it is set."""
    t = recordings.timestamps
    if t is None or len(recordings) == 0:
        return recordings, []
    warnings: list[Issue] = []
    step = None if cfg.resample is None else pd.Timedelta(cfg.resample).total_seconds()
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray | None] | None] = []
    changed = False
    suspects = _maybe_irregular(recordings, cfg.irregular_tolerance)
    for i in range(len(recordings)):
        lo, hi = recordings.offsets[i], recordings.offsets[i + 1]
        if step is None and not suspects[i]:
            continue  # regular, and nothing to resample: the common case costs no Python
        dt = np.diff(t[lo:hi])
        median = float(np.median(dt)) if len(dt) else 0.0
        irregular = len(dt) > 0 and (
            median <= 0 or np.abs(dt - median).max() > cfg.irregular_tolerance * median
        )
        if irregular:
            warnings.append(
                Issue(
                    recordings.sources[i],
                    recordings.ids[i],
                    "irregular_sampling",
                    None,
                    f"steps from {dt.min():g} to {dt.max():g} s (median {median:g})",
                    0,
                    "warning",
                )
            )
        labels = recordings.recording_labels(i)
        if step is not None and (irregular or abs(median - step) > 1e-9 * step):
            pieces.append(_resample(t[lo:hi], recordings.values[lo:hi], labels, step))
            changed = True
            warnings.append(
                Issue(
                    recordings.sources[i],
                    recordings.ids[i],
                    "resampled",
                    None,
                    f"{hi - lo} rows -> {len(pieces[-1][0])} rows at {cfg.resample}",
                    0,
                    "warning",
                )
            )
        else:
            pieces.append(None)
    if not changed:
        return recordings, warnings
    pieces = [
        (t[lo:hi], recordings.values[lo:hi], recordings.recording_labels(i)) if p is None else p
        for i, (lo, hi, p) in enumerate(
            zip(recordings.offsets[:-1], recordings.offsets[1:], pieces, strict=True)
        )
    ]
    lengths = [len(p[0]) for p in pieces]
    resampled = RecordingSet(
        ids=list(recordings.ids),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        values=np.concatenate([p[1] for p in pieces]).astype(np.float32),
        channels=list(recordings.channels),
        labels=None if recordings.labels is None else np.concatenate([p[2] for p in pieces]),
        timestamps=np.concatenate([p[0] for p in pieces]),
        sources=list(recordings.sources),
    )
    return resampled, warnings


def _maybe_irregular(recordings: RecordingSet, tolerance: float) -> np.ndarray:
    """Recordings whose step range exceeds the tolerance (vectorised; checked exactly later)."""
    lengths = recordings.lengths
    if recordings.n_rows == 0 or (lengths == 0).any():
        return np.ones(len(recordings), bool)
    # Steps padded to one per row; the step that crosses into the next recording is NaN, which
    # fmax/fmin skip, so each recording's segment holds exactly its own steps.
    steps = np.empty(recordings.n_rows)
    steps[:-1] = np.diff(recordings.timestamps)
    steps[recordings.offsets[1:] - 1] = np.nan
    starts = recordings.offsets[:-1]
    with np.errstate(invalid="ignore"):
        high = np.fmax.reduceat(steps, starts)
        low = np.fmin.reduceat(steps, starts)
        return (low <= 0) | (high - low > tolerance * np.abs(low))


def _resample(
    t: np.ndarray, values: np.ndarray, labels: np.ndarray | None, step: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Linear interpolation onto a fixed grid; labels from the last row at or before."""
    grid = t[0] + step * np.arange(int(np.floor((t[-1] - t[0]) / step + 1e-9)) + 1)
    out = np.empty((len(grid), values.shape[1]), np.float32)
    for j in range(values.shape[1]):
        out[:, j] = np.interp(grid, t, values[:, j])
    if labels is not None:
        labels = labels[np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 1)]
    return grid, out, labels


# -- helpers -----------------------------------------------------------------------------------


def _recordings_of(mask: np.ndarray, offsets: np.ndarray, shift: int = 0) -> list[int]:
    """Recordings holding a True entry of a row mask (``shift=1`` for masks over row pairs)."""
    rows = np.flatnonzero(mask) + shift
    if len(rows) == 0:
        return []
    return np.unique(np.searchsorted(offsets, rows, side="right") - 1).tolist()


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True values."""
    if not mask.any():
        return 0
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())
