"""Train / validation / test splits: by whole recording, or by time within each recording.

``method: recording`` never cuts a recording: recordings are ordered by length and each split
takes every k-th one from a random start (systematic sampling), so validation and test hold short
and long recordings alike. The same seed and input give the same split.

``method: time`` follows protocols such as SKAB's: the first ``train_steps`` rows of each
recording train, the rest test. Validation is the last ``val_fraction`` of each recording's
training rows, so thresholds can be set on scores of rows the model did not fit, without
touching the test rows. Recordings left with fewer than 2 rows in a split (nothing to forecast)
are left out of that split.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sensorlstm.config import Config, SplitConfig
from sensorlstm.recording import RECORDINGS_FILE, RecordingSet
from sensorlstm.report import SUMMARY_FILE

logger = logging.getLogger(__name__)

MIN_SPLIT_LENGTH = 2


@dataclass
class Splits:
    """The three splits, each a :class:`RecordingSet` with the same channels."""

    train: RecordingSet
    val: RecordingSet
    test: RecordingSet

    def sizes(self) -> dict[str, int]:
        """Recordings per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_recordings(rs: RecordingSet, cfg: SplitConfig) -> Splits:
    """Split one set of recordings as ``cfg.method`` says.

    Args:
        rs: the ingested recordings.
        cfg: method, fractions, ``train_steps`` and seed.

    Returns:
        The splits; with ``method: recording`` every recording is in exactly one of them.
    """
    if cfg.method == "time":
        return _split_in_time(rs, cfg)
    test_idx, val_idx, train_idx = _stratified_indices(
        rs.lengths, (cfg.test_fraction, cfg.val_fraction), cfg.seed
    )
    logger.info(
        "split %d recordings by recording: %d train, %d val, %d test",
        len(rs),
        len(train_idx),
        len(val_idx),
        len(test_idx),
    )
    return Splits(train=rs.subset(train_idx), val=rs.subset(val_idx), test=rs.subset(test_idx))


def _stratified_indices(
    lengths: np.ndarray, fractions: tuple[float, ...], seed: int
) -> list[np.ndarray]:
    """Draw one group per fraction by systematic sampling over length order; the rest last.

    Each group of size k takes one recording from each of k consecutive length strata, at a
    random position inside the stratum, so every group spans the whole length range.
    """
    rng = np.random.default_rng(seed)
    n = len(lengths)
    # Ties in length are broken randomly (but reproducibly), so equal-length fleets mix too.
    remaining = np.lexsort((rng.permutation(n), lengths))
    counts = [round(f * n) for f in fractions]
    for g, f in enumerate(fractions):
        if f > 0 and counts[g] == 0 and n - sum(counts) > 1:
            counts[g] = 1  # a requested split is never silently empty
    while sum(counts) >= n and any(counts):  # always leave a training recording
        counts[int(np.argmax(counts))] -= 1
    groups = []
    for k in counts:
        if k == 0:
            groups.append(np.zeros(0, np.int64))
            continue
        m = len(remaining)
        # Integer strata [edges[i], edges[i+1]), one pick in each: distinct positions.
        edges = (np.arange(k + 1) * m) // k
        positions = edges[:-1] + np.floor(rng.random(k) * np.diff(edges)).astype(np.int64)
        groups.append(np.sort(remaining[positions]))
        remaining = np.delete(remaining, positions)
    groups.append(np.sort(remaining))
    return groups


def _split_in_time(rs: RecordingSet, cfg: SplitConfig) -> Splits:
    val_steps = round(cfg.train_steps * cfg.val_fraction)
    fit_steps = cfg.train_steps - val_steps
    train = _nonempty(rs.slice_time(0, fit_steps))
    val = _nonempty(rs.slice_time(fit_steps, cfg.train_steps))
    test = _nonempty(rs.slice_time(cfg.train_steps, None))
    logger.info(
        "split %d recordings in time: rows [0, %d) train, [%d, %d) val, [%d, end) test",
        len(rs),
        fit_steps,
        fit_steps,
        cfg.train_steps,
        cfg.train_steps,
    )
    return Splits(train=train, val=val, test=test)


def _nonempty(rs: RecordingSet) -> RecordingSet:
    keep = np.flatnonzero(rs.lengths >= MIN_SPLIT_LENGTH)
    return rs if len(keep) == len(rs) else rs.subset(keep)


def load_splits(dataset_dir: str | Path, config: Config) -> Splits:
    """The splits of an ingested data set.

    With explicit sources (``train/``, ``val/``, ``test/`` subfolders) those are used as they
    are; a missing ``val/`` is carved from ``train/`` by recording (``split.val_fraction``), a
    missing ``test/`` is empty. Otherwise the one set is split by ``config.split``. Which of
    the two the folder holds is read from its ``summary.json`` (so a folder left from an older
    ingest cannot win); only a folder without a summary is judged by its subfolders.

    Args:
        dataset_dir: the ingest output folder.
        config: the run config (its ``split`` section).

    Returns:
        The splits.

    Raises:
        FileNotFoundError: the folder (or its ``train/`` split) holds no ingested recordings.
    """
    dataset_dir = Path(dataset_dir)
    explicit = _ingested_splits(dataset_dir)
    if explicit:
        return _load_explicit_splits(dataset_dir, explicit, config)
    if not (dataset_dir / RECORDINGS_FILE).exists():
        raise FileNotFoundError(
            f"{dataset_dir} holds no ingested recordings ({RECORDINGS_FILE}); "
            "run `sensorlstm ingest --data PATH --out DIR` first (if it ran, see "
            f"{dataset_dir / 'quarantine.parquet'} for why nothing was kept)"
        )
    return split_recordings(RecordingSet.load(dataset_dir), config.split)


def _ingested_splits(dataset_dir: Path) -> set[str]:
    """The explicit splits the last ingest wrote; empty for one automatically split set."""
    summary = dataset_dir / SUMMARY_FILE
    if summary.exists():
        return set(json.loads(summary.read_text()).get("splits") or ())
    return {n for n in ("train", "val", "test") if (dataset_dir / n / RECORDINGS_FILE).exists()}


def _load_explicit_splits(dataset_dir: Path, names: set[str], config: Config) -> Splits:
    train_dir = dataset_dir / "train"
    if not (train_dir / RECORDINGS_FILE).exists():
        raise FileNotFoundError(
            f"{train_dir} holds no ingested recordings ({RECORDINGS_FILE}); the training "
            f"source had nothing readable: see {train_dir / 'quarantine.parquet'}"
        )
    train = RecordingSet.load(train_dir)

    def load_or_none(name: str) -> RecordingSet | None:
        path = dataset_dir / name
        found = name in names and (path / RECORDINGS_FILE).exists()
        return RecordingSet.load(path) if found else None

    val, test = load_or_none("val"), load_or_none("test")
    if val is None:
        carve = config.split.model_copy(update={"method": "recording", "test_fraction": 0.0})
        carved = split_recordings(train, carve)
        train, val = carved.train, carved.val
    if test is None:
        test = train.subset([])
    return Splits(train=train, val=val, test=test)
