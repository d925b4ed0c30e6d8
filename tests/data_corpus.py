"""A corpus of broken inputs, built at test time, each with the outcome ingest must report.

Every case writes one folder holding a few clean recordings next to the broken input, so a case
also checks that the clean files keep flowing. ``Case.expect`` maps reason codes to the
recording id they must name (``None`` for a whole file); ``Case.warn`` does the same for
warnings (data kept).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CHANNELS = ["c0", "c1", "c2"]
LENGTH = 40


def recording_frame(rec: str, length: int = LENGTH, seed: int = 0, start: str = "2024-01-01"):
    """One clean recording in long format: 1 s sampling, smooth channels, 0/1 labels."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    frame = pd.DataFrame(
        {
            "recording_id": rec,
            "timestamp": pd.Timestamp(start) + pd.to_timedelta(t, unit="s"),
            **{
                c: np.sin(t / (5 + k)) + rng.normal(0, 0.1, length) for k, c in enumerate(CHANNELS)
            },
            "label": (t > length * 0.7).astype(np.int64),
        }
    )
    return frame


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def clean_files(folder: Path, n: int = 2) -> list[str]:
    """``n`` clean single-recording Parquet files; returns their recording ids."""
    ids = [f"good-{i}" for i in range(n)]
    for i, rec in enumerate(ids):
        write_parquet(recording_frame(rec, seed=100 + i), folder / f"{rec}.parquet")
    return ids


@dataclass
class Case:
    """One broken input and what ingest must say about it."""

    name: str
    build: Callable[[Path], None]
    expect: dict[str, str | None] = field(default_factory=dict)
    warn: dict[str, str | None] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    check: Callable[[Any], None] | None = None


# -- builders ----------------------------------------------------------------------------------


def small_mixed_fleet(folder: Path) -> Path:
    """Three clean recordings, one too short and one unreadable file: a bit of every outcome."""
    folder.mkdir()
    clean_files(folder, 3)
    write_parquet(recording_frame("short", 2), folder / "short.parquet")
    (folder / "broken.parquet").write_bytes(b"PAR1 not really")
    return folder


def _truncated(folder: Path) -> None:
    path = write_parquet(recording_frame("trunc", 500), folder / "trunc.parquet")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_parquet(folder: Path) -> None:
    (folder / "garbage.parquet").write_bytes(b"this is not a parquet file at all" * 10)


def _wrong_types(folder: Path) -> None:
    frame = recording_frame("typed")
    frame["c1"] = frame["c1"].map(lambda v: f"{v:.3f}").astype(object)
    frame.loc[7, "c1"] = "sensor offline"
    write_parquet(frame, folder / "typed.parquet")


def _empty(folder: Path) -> None:
    (folder / "empty.parquet").write_bytes(b"")


def _header_only(folder: Path) -> None:
    (folder / "header.csv").write_text("recording_id,timestamp,c0,c1,c2,label\n")


def _nan_storm(folder: Path) -> None:
    storm = recording_frame("storm")
    storm.loc[5:30, "c2"] = np.nan
    short = recording_frame("blip", seed=3)
    short.loc[[4, 5, 20], "c0"] = np.nan
    short.loc[0, "c1"] = np.inf
    write_parquet(pd.concat([storm, short]), folder / "nan.parquet")


def _duplicates(folder: Path) -> None:
    frame = recording_frame("dup")
    frame = pd.concat([frame, frame.iloc[10:13]]).sort_values("timestamp", kind="stable")
    write_parquet(frame, folder / "dup.parquet")


def _unsorted(folder: Path) -> None:
    frame = recording_frame("shuffled").sample(frac=1.0, random_state=0)
    write_parquet(frame, folder / "shuffled.parquet")


def _split_across(folder: Path) -> None:
    frame = recording_frame("long-run", 60)
    write_parquet(frame.iloc[30:], folder / "a-part2.parquet")  # later rows in the first file
    write_parquet(frame.iloc[:30], folder / "b-part1.parquet")


def _unicode(folder: Path) -> None:
    frames = [recording_frame(rec, seed=i) for i, rec in enumerate(["Pumpe-Ä/β 7", "泵-3"])]
    write_parquet(pd.concat(frames), folder / "unicode.parquet")


def _one_row(folder: Path) -> None:
    write_parquet(recording_frame("single", 1), folder / "single.parquet")


def _constant(folder: Path) -> None:
    frame = recording_frame("flat")
    frame["c1"] = 4.2
    write_parquet(frame, folder / "flat.parquet")


def _irregular(folder: Path) -> None:
    frame = recording_frame("jitter")
    steps = np.where(np.arange(LENGTH) % 5 == 0, 3, 1)
    frame["timestamp"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.cumsum(steps), unit="s")
    write_parquet(frame, folder / "jitter.parquet")


def _missing_channel(folder: Path) -> None:
    frame = recording_frame("no-c2").drop(columns=["c2"])
    write_parquet(frame, folder / "no-c2.parquet")


def _unexpected_channel(folder: Path) -> None:
    frame = recording_frame("extra")
    frame["c9"] = 1.0
    frame.to_csv(folder / "extra.csv", index=False)


def _text_metadata(folder: Path) -> None:
    frame = recording_frame("at-site")
    frame["site"] = "plant X"
    frame.to_csv(folder / "site.csv", index=False)


def _ragged_csv(folder: Path) -> None:
    recording_frame("ragged").to_csv(folder / "ragged.csv", index=False)
    with (folder / "ragged.csv").open("a") as handle:
        handle.write("ragged,2024-01-02 00:00:00,1,2,3,0,one too many\n")


def _split_with_a_bad_part(folder: Path) -> None:
    frame = recording_frame("half", 60)
    write_parquet(frame.iloc[:30], folder / "half-1.parquet")
    write_parquet(frame.iloc[30:].drop(columns=["c1"]), folder / "half-2.parquet")


def _missing_ids(folder: Path) -> None:
    frame = recording_frame("holes").astype({"recording_id": object})
    frame.loc[[3, 4, 5], "recording_id"] = None
    write_parquet(frame, folder / "holes.parquet")


def _bad_label(folder: Path) -> None:
    frame = recording_frame("label3")
    frame.loc[10, "label"] = 3
    write_parquet(frame, folder / "label3.parquet")


def _no_timestamp(folder: Path) -> None:
    write_parquet(recording_frame("notime").drop(columns=["timestamp"]), folder / "nt.parquet")


def _bad_timestamp(folder: Path) -> None:
    frame = recording_frame("badtime")
    frame["timestamp"] = frame["timestamp"].astype(str)
    frame.loc[6, "timestamp"] = "yesterday-ish"
    frame.to_csv(folder / "badtime.csv", index=False)


def _semicolon_csv(folder: Path) -> None:
    recording_frame("semi").to_csv(folder / "semi.csv", sep=";", index=False)


# -- checks on the result ----------------------------------------------------------------------


def _interpolated_finite(result: Any) -> None:
    rs = result.recordings
    assert np.isfinite(rs.recording(rs.index_of("blip"))).all()


def _deduplicated(result: Any) -> None:
    rs = result.recordings
    i = rs.index_of("dup")
    t = rs.timestamps[rs.offsets[i] : rs.offsets[i + 1]]
    assert len(t) == LENGTH and (np.diff(t) > 0).all()


def _sorted(result: Any) -> None:
    rs = result.recordings
    i = rs.index_of("shuffled")
    t = rs.timestamps[rs.offsets[i] : rs.offsets[i + 1]]
    assert (np.diff(t) > 0).all()
    expected = recording_frame("shuffled")["c0"].to_numpy(np.float32)
    np.testing.assert_array_equal(rs.recording(i)[:, 0], expected)


def _joined(result: Any) -> None:
    rs = result.recordings
    i = rs.index_of("long-run")
    assert rs.lengths[i] == 60
    t = rs.timestamps[rs.offsets[i] : rs.offsets[i + 1]]
    assert (np.diff(t) > 0).all()


def _unicode_kept(result: Any) -> None:
    assert {"Pumpe-Ä/β 7", "泵-3"} <= set(result.recordings.ids)


def _resampled_regular(result: Any) -> None:
    rs = result.recordings
    i = rs.index_of("jitter")
    t = rs.timestamps[rs.offsets[i] : rs.offsets[i + 1]]
    np.testing.assert_allclose(np.diff(t), 1.0)


def _extra_dropped(result: Any) -> None:
    assert result.recordings.channels == CHANNELS


def _ragged_rows_counted(result: Any) -> None:
    unreadable = result.quarantine[result.quarantine["reason"] == "unreadable_file"]
    assert list(unreadable["rows"]) == [LENGTH + 1]


def _semicolon_read(result: Any) -> None:
    assert "semi" in result.recordings.ids


CASES = [
    Case("truncated_parquet", _truncated, expect={"unreadable_file": None}),
    Case("not_parquet", _not_parquet, expect={"unreadable_file": None}),
    Case("wrong_types", _wrong_types, expect={"non_numeric": "typed"}),
    Case("empty_file", _empty, expect={"empty_file": None}),
    Case("header_only_csv", _header_only, expect={"empty_file": None}),
    Case(
        "nan_storm",
        _nan_storm,
        expect={"nan_gap": "storm"},
        warn={"nan_interpolated": "blip"},
        check=_interpolated_finite,
    ),
    Case(
        "nan_quarantine_policy",
        _nan_storm,
        expect={"nan": "storm"},
        config={"nan_policy": "quarantine"},
    ),
    Case(
        "duplicate_timestamps",
        _duplicates,
        expect={"duplicate_timestamp": "dup"},
        check=_deduplicated,
    ),
    Case(
        "duplicate_quarantine_policy",
        _duplicates,
        expect={"duplicate_timestamp": "dup"},
        config={"duplicate_policy": "quarantine"},
    ),
    Case(
        "unsorted_timestamps", _unsorted, warn={"unsorted_timestamps": "shuffled"}, check=_sorted
    ),
    Case(
        "split_across_files", _split_across, warn={"split_across_files": "long-run"}, check=_joined
    ),
    Case("unicode_ids", _unicode, check=_unicode_kept),
    Case("one_row_recording", _one_row, expect={"too_short": "single"}),
    Case("constant_channel", _constant, warn={"constant_channel": "flat"}),
    Case("irregular_sampling", _irregular, warn={"irregular_sampling": "jitter"}),
    Case(
        "irregular_resampled",
        _irregular,
        warn={"resampled": "jitter"},
        config={"resample": "1s"},
        check=_resampled_regular,
    ),
    Case("missing_channel", _missing_channel, expect={"missing_channel": None}),
    Case(
        "missing_channel_explicit",
        _missing_channel,
        expect={"missing_channel": None},
        config={"columns": {"channels": CHANNELS}},
    ),
    Case(
        "unexpected_channel",
        _unexpected_channel,
        warn={"unexpected_channel": None},
        check=_extra_dropped,
    ),
    Case(
        "text_metadata_column",
        _text_metadata,
        warn={"unexpected_channel": None},
        check=_extra_dropped,
    ),
    Case("ragged_csv", _ragged_csv, expect={"unreadable_file": None}, check=_ragged_rows_counted),
    Case(
        "split_with_a_bad_part",
        _split_with_a_bad_part,
        expect={"missing_channel": None, "partial_recording": "half"},
    ),
    Case("missing_recording_ids", _missing_ids, expect={"missing_recording_id": None}),
    Case("bad_label", _bad_label, expect={"bad_label": "label3"}),
    Case("missing_timestamp_column", _no_timestamp, expect={"missing_column": None}),
    Case("bad_timestamp", _bad_timestamp, expect={"bad_timestamp": "badtime"}),
    Case("semicolon_csv", _semicolon_csv, config={"csv_separator": ";"}, check=_semicolon_read),
]
