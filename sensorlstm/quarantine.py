"""Reason codes and the quarantine: every rejected file, recording or row, and why.

Ingest never drops data silently. Whatever it does not use is recorded as an :class:`Issue`
that names the source file, the recording, the column and the number of rows involved, so the
accounting identity ``rows_in == rows_used + rows_quarantined`` can be checked on every run.
Issues that only warn (a constant channel, irregular sampling) carry ``rows == 0`` and go to the
report, not the quarantine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

import pandas as pd

QUARANTINE_FILE = "quarantine.parquet"

Scope = Literal["file", "recording", "rows", "warning"]

#: Reason codes, each with the one-line meaning shown in reports.
REASONS: dict[str, str] = {
    # whole file
    "unreadable_file": "the file could not be opened or parsed (corrupt, truncated, bad format)",
    "empty_file": "the file holds no data rows (0 bytes or a header only)",
    "missing_column": "a required column (recording id or timestamp) is absent",
    "missing_channel": "a channel the data set needs is absent from the file",
    # whole recording
    "non_numeric": "a channel holds values that are not numbers",
    "bad_timestamp": "a timestamp is missing or cannot be parsed",
    "unsorted_timestamps": "timestamps decrease within the recording",
    "duplicate_timestamp": "several rows share a timestamp",
    "nan": "a channel holds NaN or infinite values",
    "nan_gap": "a run of NaN or infinite values is longer than data.max_gap",
    "bad_label": "the label column holds values other than 0 and 1",
    "too_short": "fewer timesteps than data.min_length",
    "partial_recording": "another file holding rows of this recording was rejected as a whole",
    # rows only
    "missing_recording_id": "rows without a recording id",
    # warnings (data kept)
    "unexpected_channel": "a column not in the channel list was dropped",
    "label_missing": "no label column (or empty labels); labels set to 0",
    "nan_interpolated": "short NaN gaps were filled by linear interpolation",
    "constant_channel": "a channel does not vary within the recording",
    "irregular_sampling": "time steps within the recording are not uniform",
    "resampled": "the recording was resampled to data.resample",
    "split_across_files": "the recording's rows came from several files and were joined",
}


@dataclass(frozen=True)
class Issue:
    """One finding about the input: a rejected file, recording or set of rows, or a warning.

    Attributes:
        source: the file the finding is about.
        recording_id: the recording, or None for a whole file.
        reason: a code from :data:`REASONS`.
        column: the column involved, or None.
        detail: a human-readable message naming expected / got / how to fix.
        rows: source rows rejected because of this finding (0 for warnings).
        scope: ``file``, ``recording``, ``rows`` (some rows of a kept recording) or ``warning``.
    """

    source: str
    recording_id: str | None
    reason: str
    column: str | None
    detail: str
    rows: int
    scope: Scope

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reason code {self.reason!r}; known: {sorted(REASONS)}")

    def message(self) -> str:
        """The finding in one line: file, recording, column, then the detail."""
        where = [f"file {self.source}"]
        if self.recording_id is not None:
            where.append(f"recording {self.recording_id!r}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.reason}: {self.detail}"


class IngestError(ValueError):
    """Raised when a policy says ``fail``; the message names the file, recording and column."""


QUARANTINE_COLUMNS = ["source", "recording_id", "reason", "column", "detail", "rows", "scope"]


def quarantine_frame(issues: Iterable[Issue]) -> pd.DataFrame:
    """The quarantine table: one row per rejected file, recording or set of rows."""
    rows = [asdict(issue) for issue in issues if issue.scope != "warning"]
    frame = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    frame["rows"] = frame["rows"].astype("int64")
    for column in ("source", "recording_id", "reason", "column", "detail", "scope"):
        frame[column] = frame[column].astype("string")
    return frame
