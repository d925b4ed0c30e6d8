"""Ingest: any fleet's recordings in, validated, with every row accounted for.

``ingest(source, cfg)`` = ``list_sources`` -> ``read_source`` per file -> ``combine``. The Prefect
flow (``flows/ingest.py``) maps ``read_source`` over the files and calls ``combine`` itself;
this module imports no Prefect. What comes out is an :class:`IngestResult`: the clean
:class:`~sensorlstm.recording.RecordingSet`, the quarantine table and the report, saved as
``recordings.parquet``, ``quarantine.parquet`` and ``report.json`` (written last: a folder with
a ``report.json`` is complete, and its fingerprint is what the cache compares).

Explicit train/val/test sources (``data.train_path`` ...) are ingested into ``train/``, ``val/``
and ``test/`` subfolders, with the validation and test channels pinned to the training ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd

from sensorlstm.config import DataConfig
from sensorlstm.quarantine import QUARANTINE_FILE, IngestError, Issue, quarantine_frame
from sensorlstm.recording import RECORDINGS_FILE, RecordingSet
from sensorlstm.report import REPORT_FILE, SUMMARY_FILE, build_report
from sensorlstm.sources import SourcePart, list_sources, read_source
from sensorlstm.validate import (
    Fleet,
    check_constant,
    check_finite,
    check_labels,
    check_length,
    check_sampling,
    check_timestamps,
    gather_rows,
    recording_ranges,
)

logger = logging.getLogger(__name__)

__all__ = [
    "IngestError",
    "IngestResult",
    "SourcePart",
    "combine",
    "dataset_fingerprint",
    "dataset_sources",
    "ingest",
    "ingest_dataset",
    "list_sources",
    "load_ingested",
    "read_source",
]

#: Bump when the ingest output changes for the same input, so old caches are not reused.
INGEST_VERSION = 2
#: DataConfig fields that change how ingest runs but not what it produces.
_RUN_ONLY_FIELDS = {
    "path",
    "train_path",
    "val_path",
    "test_path",
    "parallelism",
    "task_runner",
    "cache",
    "dask_address",
    "dask_workers",
}
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class IngestResult:
    """What ingest produced from one source.

    Attributes:
        recordings: validated, cleaned recordings (float32 values, int8 labels).
        quarantine: one row per rejected file, recording or set of rows (columns ``source``,
            ``recording_id``, ``reason``, ``column``, ``detail``, ``rows``, ``scope``).
        report: counts, reasons, warnings, length histogram, per-channel statistics.
        fingerprint: hash of the input files' identity and the ingest config.
    """

    recordings: RecordingSet
    quarantine: pd.DataFrame
    report: dict[str, Any]
    fingerprint: str

    def save(self, out_dir: str | Path) -> Path:
        """Write recordings, quarantine and report (last) to ``out_dir``; returns the folder."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / REPORT_FILE).unlink(missing_ok=True)  # incomplete until rewritten below
        (out_dir / RECORDINGS_FILE).unlink(missing_ok=True)
        if self.recordings.n_channels:  # nothing readable at all: no channel layout to store
            self.recordings.save(out_dir)
        self.quarantine.to_parquet(out_dir / QUARANTINE_FILE, index=False)
        (out_dir / REPORT_FILE).write_text(json.dumps(self.report, indent=2))
        return out_dir

    def summary(self) -> dict[str, Any]:
        """The headline counts (what the CLI prints)."""
        return {key: self.report[key] for key in _SUMMARY_KEYS}


_SUMMARY_KEYS = (
    "rows_in",
    "rows_used",
    "rows_quarantined",
    "recordings_used",
    "recordings_quarantined",
    "reasons",
    "warnings",
)


def load_ingested(out_dir: str | Path) -> IngestResult:
    """Load what :meth:`IngestResult.save` wrote (values memory-mapped, nothing re-parsed)."""
    out_dir = Path(out_dir)
    report_path = out_dir / REPORT_FILE
    if not report_path.exists():
        raise FileNotFoundError(
            f"{out_dir} holds no ingested data set ({REPORT_FILE} missing); "
            "run `sensorlstm ingest --data PATH --out DIR` first"
        )
    report = json.loads(report_path.read_text())
    return IngestResult(
        recordings=RecordingSet.load(out_dir)
        if (out_dir / RECORDINGS_FILE).exists()
        else RecordingSet(
            ids=[], offsets=np.zeros(1, np.int64), values=np.zeros((0, 0), np.float32), channels=[]
        ),
        quarantine=pd.read_parquet(out_dir / QUARANTINE_FILE),
        report=report,
        fingerprint=report.get("fingerprint", ""),
    )


# -- one source --------------------------------------------------------------------------------


def ingest(source: str | list[str], cfg: DataConfig) -> IngestResult:
    """List, read, validate and combine the recordings of one source.

    Args:
        source: file, folder, glob or fsspec URL, or a list of them.
        cfg: column mapping, formats and validation policies.

    Returns:
        The clean recordings, the quarantine and the report.

    Raises:
        FileNotFoundError: the source matches no file.
        IngestError: a check whose policy is ``fail`` failed (names file, recording, column).
    """
    paths = list_sources(source, cfg)
    parts = [read_source(path, cfg) for path in paths]
    return combine(parts, cfg, fingerprint=source_fingerprint(paths, cfg))


def combine(
    results: Sequence[SourcePart],
    cfg: DataConfig,
    *,
    channels: Sequence[str] | None = None,
    fingerprint: str = "",
) -> IngestResult:
    """Join the per-file parts into one validated fleet.

    Args:
        results: :func:`read_source` results, one per file (any order; they are sorted by path).
        cfg: the data config.
        channels: channel layout to enforce (e.g. the training split's); default
            ``cfg.columns.channels`` or, when that is None, the layout most files share.
        fingerprint: stored in the report, for the cache.

    Returns:
        The :class:`IngestResult`.
    """
    parts = sorted(results, key=lambda p: p.source)
    issues: list[Issue] = [issue for p in parts for issue in p.issues]
    warnings: list[Issue] = [w for p in parts for w in p.warnings]
    rows_in = sum(p.rows_in for p in parts)

    # -- one channel layout for the fleet ------------------------------------------------------
    live = [p for p in parts if p.ids]
    layout = list(channels or cfg.columns.channels or _majority_layout(live))
    usable = []
    rejected_files = _rejected_files(parts)
    for part in live:
        missing = [c for c in layout if c not in part.channels]
        if missing:
            issues.append(
                Issue(
                    part.source,
                    None,
                    "missing_channel",
                    missing[0],
                    f"expected channels {layout}, missing {missing}; its {len(part.ids)} "
                    "recording(s) were not used; add the channel to the file, or list it in "
                    "data.columns.ignore to drop it from the whole fleet",
                    part.n_rows,
                    "file",
                )
            )
            for rec in part.ids:
                rejected_files.setdefault(rec, (part.source, "missing_channel"))
        else:
            usable.append(part)
            for extra in (c for c in part.channels if c not in layout):
                if not any(w.column == extra and w.source == part.source for w in part.warnings):
                    warnings.append(
                        Issue(
                            part.source,
                            None,
                            "unexpected_channel",
                            extra,
                            "column dropped",
                            0,
                            "warning",
                        )
                    )

    fleet = _stack(usable, layout, cfg, warnings)
    _reject_partial_recordings(fleet, rejected_files, cfg)
    _apply_read_findings(fleet, usable, cfg)

    # -- per-recording checks --------------------------------------------------------------------
    check_timestamps(fleet, cfg, cfg.columns.timestamp)
    check_finite(fleet, cfg)
    check_labels(fleet, cfg, cfg.columns.label)
    check_length(fleet, cfg)
    recordings, rejected = fleet.finish()
    rows_used = recordings.n_rows
    recordings, sampling = check_sampling(recordings, cfg)
    quarantined = issues + fleet.issues + rejected
    ranges = recording_ranges(recordings)
    warnings = warnings + fleet.warnings + sampling + check_constant(recordings, ranges)

    report = build_report(
        recordings,
        quarantined,
        warnings,
        ranges=ranges,
        rows_in=rows_in,
        rows_used=rows_used,
        files_in=len(parts),
        fingerprint=fingerprint,
    )
    for issue in quarantined:
        logger.info("quarantined %s", issue.message())
    logger.info(
        "ingested %d recordings (%d rows); quarantined %d (%d rows): %s",
        report["recordings_used"],
        report["rows_used"],
        report["recordings_quarantined"],
        report["rows_quarantined"],
        report["reasons"],
    )
    return IngestResult(recordings, quarantine_frame(quarantined), report, fingerprint)


def _majority_layout(parts: Sequence[SourcePart]) -> list[str]:
    """The channel set most files share (ties: the first file's), in its first file's order."""
    if not parts:
        return []
    votes = Counter(frozenset(p.channels) for p in parts)
    best = max(votes.values())
    for part in parts:
        if votes[frozenset(part.channels)] == best:
            return list(part.channels)
    return list(parts[0].channels)


def _stack(
    parts: Sequence[SourcePart], layout: list[str], cfg: DataConfig, warnings: list[Issue]
) -> Fleet:
    """Stack the parts into one block and join recordings split across files."""
    has_labels = any(p.labels is not None for p in parts)
    has_time = cfg.columns.timestamp is not None
    values, labels, times, ids, sources, lengths = [], [], [], [], [], []
    for part in parts:
        take = [part.channels.index(c) for c in layout]
        same = take == list(range(len(part.channels)))
        values.append(part.values if same else part.values[:, take])
        if has_labels:
            if part.labels is None:
                warnings.append(
                    Issue(
                        part.source,
                        None,
                        "label_missing",
                        cfg.columns.label,
                        "the file has no label column; its labels were set to 0",
                        0,
                        "warning",
                    )
                )
                labels.append(np.zeros(part.n_rows, np.float32))
            else:
                labels.append(part.labels)
        if has_time:
            times.append(part.timestamps)
        ids.extend(part.ids)
        sources.extend([part.source] * len(part.ids))
        lengths.append(np.diff(part.offsets))

    def cat(arrays: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
        return arrays[0] if len(arrays) == 1 else (np.concatenate(arrays) if arrays else empty)

    lengths_all = cat(lengths, np.zeros(0, np.int64))
    fleet = Fleet(
        ids=ids,
        sources=sources,
        offsets=np.concatenate([[0], np.cumsum(lengths_all)]).astype(np.int64),
        values=cat(values, np.zeros((0, len(layout)), np.float32)),
        channels=layout,
        labels=cat(labels, np.zeros(0, np.float32)) if has_labels else None,
        timestamps=cat(times, np.zeros(0, np.float64)) if has_time else None,
    )
    return _join_split_recordings(fleet)


def _join_split_recordings(fleet: Fleet) -> Fleet:
    """Recordings whose rows came from several files become one (time order fixed later)."""
    codes, unique = pd.factorize(pd.Index(fleet.ids))
    if len(unique) == len(fleet.ids):
        return fleet
    order = np.argsort(codes, kind="stable")
    rows = gather_rows(fleet.offsets, order)
    lengths = np.bincount(codes, weights=np.diff(fleet.offsets), minlength=len(unique))
    sources: dict[int, list[str]] = {}
    for code, source in zip(codes, fleet.sources, strict=True):
        sources.setdefault(int(code), []).append(source)
    joined = Fleet(
        ids=[str(u) for u in unique],
        sources=[" + ".join(dict.fromkeys(sources[k])) for k in range(len(unique))],
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        values=fleet.values[rows],
        channels=fleet.channels,
        labels=None if fleet.labels is None else fleet.labels[rows],
        timestamps=None if fleet.timestamps is None else fleet.timestamps[rows],
        warnings=fleet.warnings,
    )
    for k, files in sources.items():
        if len(files) > 1:
            joined.warn(k, "split_across_files", None, f"joined from {len(files)} files")
    return joined


def _rejected_files(parts: Sequence[SourcePart]) -> dict[str, tuple[str, str]]:
    """Recording id -> (file, reason) for recordings with rows in a file rejected as a whole."""
    found: dict[str, tuple[str, str]] = {}
    for part in parts:
        reason = next((i.reason for i in part.issues if i.scope == "file"), "rejected")
        for rec in part.rejected_ids:
            found.setdefault(rec, (part.source, reason))
    return found


def _reject_partial_recordings(
    fleet: Fleet, rejected_files: dict[str, tuple[str, str]], cfg: DataConfig
) -> None:
    """Quarantine recordings whose rows in another file were rejected with that whole file.

    Using the rest would train on a recording with a hole in it; its rows are counted under
    the recording here, the rejected file's rows under the file's own issue.
    """
    if not rejected_files:
        return
    for i, rec in enumerate(fleet.ids):
        if rec in rejected_files:
            bad_file, reason = rejected_files[rec]
            fleet.reject(
                i,
                "partial_recording",
                None,
                f"part of recording {rec!r} is in {bad_file}, which was rejected ({reason}); "
                "the whole recording is quarantined rather than used incomplete; fix or "
                "remove that file",
                cfg=cfg,
            )


def _apply_read_findings(fleet: Fleet, parts: Sequence[SourcePart], cfg: DataConfig) -> None:
    """Reject recordings flagged while reading; apply the duplicate policy to unsorted ones."""
    index = {rec: i for i, rec in enumerate(fleet.ids)}
    for part in parts:
        for flag in part.flags:
            fleet.rejected.setdefault(index[flag.recording_id], flag)
        if cfg.duplicate_policy == "sort_dedup":
            continue
        for w in part.warnings:
            if w.reason == "unsorted_timestamps" and w.recording_id in index:
                fleet.reject(
                    index[w.recording_id],
                    "unsorted_timestamps",
                    w.column,
                    "timestamps decrease; set data.duplicate_policy: sort_dedup to sort them",
                    cfg=cfg,
                    policy=cfg.duplicate_policy,
                )


# -- fingerprint and data sets -----------------------------------------------------------------


def source_fingerprint(paths: Sequence[str], cfg: DataConfig) -> str:
    """Hash of each file's identity (size and mtime, etag or checksum) and the ingest config."""
    return dataset_fingerprint({"": list(paths)}, cfg)


def dataset_fingerprint(files: dict[str, Sequence[str]], cfg: DataConfig) -> str:
    """Fingerprint of a whole data set: its files per split and the config that shapes output.

    Args:
        files: split name (``""`` without explicit splits) -> file paths or URLs.
        cfg: the data config; fields that only change how ingest runs are left out.

    Returns:
        A hex digest; equal digests mean ingest would produce the same output.
    """
    digest = hashlib.sha256()
    settings = cfg.model_dump(mode="json", exclude=_RUN_ONLY_FIELDS)
    digest.update(json.dumps([INGEST_VERSION, settings], sort_keys=True).encode())
    for name in sorted(files):
        for path in sorted(files[name]):
            digest.update(json.dumps([name, path, _file_identity(path)]).encode())
    return digest.hexdigest()


def _file_identity(path: str) -> list[Any]:
    fs, fpath = fsspec.core.url_to_fs(path)
    info = fs.info(fpath)
    version = None
    for key in ("ETag", "etag", "md5Hash", "checksum", "mtime", "LastModified", "created"):
        if info.get(key) is not None:
            version = str(info[key])
            break
    return [info.get("size"), version]


def dataset_sources(cfg: DataConfig) -> dict[str, str]:
    """The sources to ingest: ``{"": path}`` or explicit ``{"train": ..., "val": ..., ...}``.

    Raises:
        ValueError: neither ``data.path`` nor ``data.train_path`` is set.
    """
    explicit = {name: getattr(cfg, f"{name}_path") for name in SPLIT_NAMES}
    explicit = {name: path for name, path in explicit.items() if path}
    if explicit:
        if "train" not in explicit:
            raise ValueError(
                f"explicit splits {sorted(explicit)} given without data.train_path; "
                "set data.train_path too (or use data.path for an automatic split)"
            )
        if cfg.path:
            logger.warning(
                "data.path %s is ignored: explicit train/val/test sources are set", cfg.path
            )
        return explicit
    if not cfg.path:
        raise ValueError(
            "no data source: expected --data PATH, data.path, or data.train_path (with optional "
            "data.val_path / data.test_path) in the config; got none of them"
        )
    return {"": cfg.path}


def cached_summary(out_dir: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved summary when ``out_dir`` holds a complete ingest with this fingerprint.

    Complete means every split's ``report.json`` is there, and so is its
    ``recordings.parquet`` unless nothing was readable (a report without channels).
    """
    path = Path(out_dir) / SUMMARY_FILE
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    if summary.get("fingerprint") != fingerprint:
        return None
    splits = summary.get("splits") or {"": None}
    if not all(_split_complete(Path(out_dir) / name) for name in splits):
        return None
    return {**summary, "cached": True}


def _split_complete(folder: Path) -> bool:
    report = folder / REPORT_FILE
    if not report.exists() or not (folder / QUARANTINE_FILE).exists():
        return False
    has_channels = bool(json.loads(report.read_text()).get("channels"))
    return not has_channels or (folder / RECORDINGS_FILE).exists()


def combine_dataset(
    parts: dict[str, Sequence[SourcePart]], cfg: DataConfig, fingerprint: str
) -> dict[str, IngestResult]:
    """Combine each split's parts; validation and test take the training channels."""
    results: dict[str, IngestResult] = {}
    channels = None
    for name in sorted(parts, key=lambda n: (n != "train", n != "", n)):
        results[name] = combine(parts[name], cfg, channels=channels, fingerprint=fingerprint)
        if name == "train":
            channels = results[name].recordings.channels or None
    return results


def save_dataset(
    results: dict[str, IngestResult], out_dir: str | Path, fingerprint: str
) -> dict[str, Any]:
    """Write each split's result (``out_dir`` itself or ``out_dir/<split>``) and the summary.

    Outputs of an earlier ingest that this one does not rewrite (a ``train/`` folder left from
    explicit sources, or a top-level set left from an automatic split) are removed first, so
    nothing stale is read back as if it were part of this data set.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY_FILE).unlink(missing_ok=True)
    _remove_stale_outputs(out_dir, keep=set(results))
    for name, result in results.items():
        result.save(out_dir / name if name else out_dir)
    summary = _summary(results, out_dir, fingerprint)
    (out_dir / SUMMARY_FILE).write_text(json.dumps({**summary, "cached": False}, indent=2))
    return summary


#: Files :meth:`IngestResult.save` writes, the report first (a folder without it is incomplete).
_OUTPUT_FILES = (REPORT_FILE, RECORDINGS_FILE, QUARANTINE_FILE)


def _remove_stale_outputs(out_dir: Path, keep: set[str]) -> None:
    """Delete ingest outputs of splits not in ``keep`` (``""`` is ``out_dir`` itself)."""
    for name in ("", *SPLIT_NAMES):
        if name in keep:
            continue
        folder = out_dir / name if name else out_dir
        stale = [folder / f for f in _OUTPUT_FILES if (folder / f).exists()]
        for path in stale:
            path.unlink()
        if stale:
            logger.info("removed %s left by an earlier ingest", ", ".join(map(str, stale)))
        if name and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _summary(results: dict[str, IngestResult], out_dir: Path, fingerprint: str) -> dict[str, Any]:
    totals: dict[str, Any] = {
        "rows_in": 0,
        "rows_used": 0,
        "rows_quarantined": 0,
        "recordings_used": 0,
        "recordings_quarantined": 0,
    }
    reasons: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    for result in results.values():
        for key in totals:
            totals[key] += result.report[key]
        reasons.update(result.report["reasons"])
        warnings.update(result.report["warnings"])
    summary = {
        **totals,
        "reasons": dict(sorted(reasons.items())),
        "warnings": dict(sorted(warnings.items())),
        "dataset_dir": str(out_dir.resolve()),
        "fingerprint": fingerprint,
        "cached": False,
    }
    if set(results) != {""}:
        summary["splits"] = {name: r.summary() for name, r in results.items()}
    return summary


def ingest_dataset(cfg: DataConfig, out_dir: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Ingest ``cfg``'s sources into ``out_dir`` unless the cache says nothing changed.

    The Prefect flow does the same with mapped reads; this is the plain-Python path.

    Args:
        cfg: the data config (``path`` or explicit ``train_path``/``val_path``/``test_path``).
        out_dir: where the data set goes.
        force: ingest even when the fingerprint matches.

    Returns:
        The summary: row and recording counts, ``reasons``, ``dataset_dir``, ``cached``.
    """
    files = {name: list_sources(src, cfg) for name, src in dataset_sources(cfg).items()}
    fingerprint = dataset_fingerprint(files, cfg)
    if cfg.cache and not force:
        cached = cached_summary(out_dir, fingerprint)
        if cached is not None:
            logger.info("ingest cache hit in %s (fingerprint %s)", out_dir, fingerprint[:12])
            return cached
    parts = {name: [read_source(p, cfg) for p in paths] for name, paths in files.items()}
    return save_dataset(combine_dataset(parts, cfg, fingerprint), out_dir, fingerprint)
