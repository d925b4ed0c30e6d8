"""The data contract: a fleet of variable-length multichannel recordings in one compact block.

Source files are long format, one row per timestep::

    recording_id | timestamp | <channel 1> ... <channel C> | label (optional, 0/1)

After ingest every stage works on a :class:`RecordingSet`: the values of all recordings stacked
into one ``(total_rows, C)`` float32 array plus row offsets, the layout a ragged tensor or Arrow's
ListArray uses. Recording ``i`` is ``values[offsets[i]:offsets[i + 1]]``, a view, never a copy.
The same layout is what :meth:`RecordingSet.save` writes, so the training step memory-maps it
without re-parsing anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RECORDINGS_FILE = "recordings.parquet"
META_KEY = b"sensorlstm"


@dataclass
class RecordingSet:
    """Recordings of equal channel layout, stacked row-wise.

    Attributes:
        ids: recording ids, one per recording, unique.
        offsets: int64 ``(n + 1,)``; recording ``i`` spans rows ``offsets[i]:offsets[i + 1]``.
        values: float32 ``(total_rows, n_channels)``.
        channels: channel names, one per column of ``values``.
        labels: int8 ``(total_rows,)`` 0/1 anomaly labels, or None when the source has none.
        timestamps: float64 ``(total_rows,)`` seconds (or the source's numeric unit), or None.
        sources: the file each recording came from (for error messages and reports).
    """

    ids: list[str]
    offsets: np.ndarray
    values: np.ndarray
    channels: list[str]
    labels: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.values.ndim != 2 or self.values.shape[1] != len(self.channels):
            raise ValueError(
                f"values must be (rows, {len(self.channels)} channels), got {self.values.shape}"
            )
        if len(self.offsets) != len(self.ids) + 1:
            raise ValueError(
                f"offsets must have len(ids) + 1 = {len(self.ids) + 1} entries, "
                f"got {len(self.offsets)}"
            )
        if len(self.offsets) and (self.offsets[0] != 0 or self.offsets[-1] != len(self.values)):
            raise ValueError(
                f"offsets must run from 0 to {len(self.values)}, "
                f"got {self.offsets[0]}..{self.offsets[-1]}"
            )
        if not self.sources:
            self.sources = [""] * len(self.ids)

    # -- sizes ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """Timesteps per recording, int64 ``(n,)``."""
        return np.diff(self.offsets)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1]) if len(self.offsets) else 0

    # -- access --------------------------------------------------------------------------------

    def recording(self, i: int) -> np.ndarray:
        """Values of recording ``i``, ``(length, C)``, a view."""
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def recording_labels(self, i: int) -> np.ndarray | None:
        if self.labels is None:
            return None
        return self.labels[self.offsets[i] : self.offsets[i + 1]]

    def index_of(self, recording_id: str) -> int:
        return self.ids.index(recording_id)

    def subset(self, indices: Sequence[int] | np.ndarray) -> RecordingSet:
        """A new set holding the given recordings, in the given order (values copied)."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[indices]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        rows = _row_index(self.offsets, indices, lengths)
        return RecordingSet(
            ids=[self.ids[i] for i in indices],
            offsets=offsets,
            values=self.values[rows],
            channels=list(self.channels),
            labels=None if self.labels is None else self.labels[rows],
            timestamps=None if self.timestamps is None else self.timestamps[rows],
            sources=[self.sources[i] for i in indices],
        )

    def slice_time(self, start: int, stop: int | None = None) -> RecordingSet:
        """Rows ``start:stop`` of every recording (for a time-based split).

        Recordings left with no rows are kept with length 0; callers filter them if needed.
        """
        lengths = self.lengths
        begin = np.minimum(lengths, start)
        end = lengths if stop is None else np.minimum(lengths, stop)
        end = np.maximum(end, begin)
        new_lengths = end - begin
        rows = np.concatenate(
            [
                np.arange(o + b, o + e)
                for o, b, e in zip(self.offsets[:-1], begin, end, strict=True)
            ]
            or [np.zeros(0, dtype=np.int64)]
        ).astype(np.int64)
        return RecordingSet(
            ids=list(self.ids),
            offsets=np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int64),
            values=self.values[rows],
            channels=list(self.channels),
            labels=None if self.labels is None else self.labels[rows],
            timestamps=None if self.timestamps is None else self.timestamps[rows],
            sources=list(self.sources),
        )

    def select_channels(self, channels: Sequence[str]) -> np.ndarray:
        """Column indices of ``channels``; raises naming any channel that is missing."""
        missing = [c for c in channels if c not in self.channels]
        if missing:
            raise KeyError(f"channels {missing} are not in this data set; it has {self.channels}")
        return np.array([self.channels.index(c) for c in channels], dtype=np.int64)

    # -- storage -------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the compact form: one Parquet file, one row per recording, list columns."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        offsets = pa.array(self.offsets.astype(np.int32 if self.n_rows < 2**31 else np.int64))
        list_type = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
        columns = {
            "recording_id": pa.array(self.ids, type=pa.string()),
            "source": pa.array(self.sources, type=pa.string()),
            "values": list_type.from_arrays(
                offsets,
                pa.FixedSizeListArray.from_arrays(self.values.reshape(-1), self.n_channels),
            ),
        }
        if self.labels is not None:
            columns["labels"] = list_type.from_arrays(offsets, pa.array(self.labels, pa.int8()))
        if self.timestamps is not None:
            columns["timestamps"] = list_type.from_arrays(
                offsets, pa.array(self.timestamps, pa.float64())
            )
        table = pa.table(columns)
        meta = {"channels": self.channels}
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        path = directory / RECORDINGS_FILE
        pq.write_table(table, path, compression="zstd")
        return path

    @classmethod
    def load(cls, directory: str | Path, memory_map: bool = True) -> RecordingSet:
        """Read what :meth:`save` wrote; the value buffers are used without per-row parsing."""
        path = Path(directory)
        if path.is_dir():
            path = path / RECORDINGS_FILE
        table = pq.read_table(path, memory_map=memory_map)
        meta = json.loads(table.schema.metadata[META_KEY])
        channels = list(meta["channels"])
        values_col = table.column("values").combine_chunks()
        offsets = values_col.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        flat = values_col.flatten().flatten().to_numpy(zero_copy_only=False)
        values = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, len(channels))

        def _flat(name: str, dtype: type) -> np.ndarray | None:
            if name not in table.column_names:
                return None
            col = table.column(name).combine_chunks().flatten()
            return np.asarray(col.to_numpy(zero_copy_only=False), dtype=dtype)

        return cls(
            ids=table.column("recording_id").to_pylist(),
            offsets=offsets,
            values=values,
            channels=channels,
            labels=_flat("labels", np.int8),
            timestamps=_flat("timestamps", np.float64),
            sources=table.column("source").to_pylist(),
        )

    @classmethod
    def from_arrays(
        cls,
        recordings: Sequence[np.ndarray],
        channels: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> RecordingSet:
        """Build a set from a list of ``(length, C)`` arrays (tests, synthetic data)."""
        n_channels = recordings[0].shape[1] if recordings else len(channels or [])
        channels = (
            list(channels) if channels is not None else [f"ch{i}" for i in range(n_channels)]
        )
        lengths = [len(r) for r in recordings]
        values = (
            np.concatenate(recordings).astype(np.float32)
            if recordings
            else np.zeros((0, n_channels), np.float32)
        )
        return cls(
            ids=list(ids) if ids is not None else [f"rec{i:05d}" for i in range(len(recordings))],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            values=values,
            channels=channels,
            labels=None
            if labels is None
            else np.concatenate([np.asarray(lab, np.int8) for lab in labels]),
        )


def _row_index(offsets: np.ndarray, indices: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Row numbers of the given recordings, concatenated, without a Python loop per row."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = offsets[indices]
    # Each output row is start_of_its_recording + position_within_it.
    run_starts = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return run_starts + np.arange(total, dtype=np.int64)
