"""Ingest: the broken-input corpus, row accounting properties, SKAB, storage and caching."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from data_corpus import (
    CASES,
    CHANNELS,
    LENGTH,
    Case,
    clean_files,
    recording_frame,
    write_parquet,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorlstm.config import DataConfig, load_config
from sensorlstm.ingest import (
    IngestError,
    combine,
    ingest,
    ingest_dataset,
    list_sources,
    load_ingested,
    read_source,
)
from sensorlstm.quarantine import REASONS
from sensorlstm.report import report_table

PROJECT = Path(__file__).resolve().parent.parent


def _accounting_holds(report: dict) -> None:
    assert report["rows_in"] == report["rows_used"] + report["rows_quarantined"]


# -- the broken-input corpus -------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_input_is_reported_with_its_reason(case: Case, tmp_path: Path) -> None:
    good = clean_files(tmp_path)
    case.build(tmp_path)
    cfg = DataConfig.model_validate({"min_length": 5, **case.config})

    result = ingest(str(tmp_path), cfg)

    _accounting_holds(result.report)
    quarantine = result.quarantine
    for reason, recording in case.expect.items():
        hits = quarantine[quarantine["reason"] == reason]
        assert len(hits) >= 1, f"expected {reason} in the quarantine, got {quarantine}"
        if recording is not None:
            assert recording in set(hits["recording_id"])
            assert recording not in result.recordings.ids or (hits["scope"] == "rows").all()
    unexpected = set(quarantine["reason"]) - set(case.expect)
    assert not unexpected, f"unexpected quarantine reasons {unexpected}: {quarantine}"
    warned = Counter(result.report["warnings"])
    for reason in case.warn:
        assert warned[reason] >= 1, f"expected warning {reason}, got {dict(warned)}"
    assert set(good) <= set(result.recordings.ids), "clean files must keep flowing"
    assert result.recordings.values.dtype == np.float32
    assert np.isfinite(result.recordings.values).all()
    if case.check is not None:
        case.check(result)


def test_every_reason_code_has_a_meaning() -> None:
    expected = {reason for case in CASES for reason in case.expect}
    assert expected <= set(REASONS)


def test_fail_policy_raises_naming_file_recording_and_column(tmp_path: Path) -> None:
    frame = recording_frame("broken-rec")
    frame.loc[3, "c1"] = np.nan
    write_parquet(frame, tmp_path / "f.parquet")
    cfg = DataConfig(nan_policy="fail", min_length=5)

    with pytest.raises(IngestError) as excinfo:
        ingest(str(tmp_path), cfg)

    message = str(excinfo.value)
    assert "f.parquet" in message and "broken-rec" in message and "'c1'" in message


def test_interpolation_fills_short_gaps_linearly(tmp_path: Path) -> None:
    frame = recording_frame("gap")
    truth = frame["c0"].to_numpy().copy()
    frame.loc[10:11, "c0"] = np.nan
    write_parquet(frame, tmp_path / "gap.parquet")

    rs = ingest(str(tmp_path), DataConfig(max_gap=2, min_length=5)).recordings

    filled = rs.recording(0)[10:12, 0]
    expected = truth[9] + (truth[12] - truth[9]) * np.array([1, 2]) / 3
    np.testing.assert_allclose(filled, expected, rtol=1e-5)


# -- accounting properties ---------------------------------------------------------------------


@dataclass
class WrittenFile:
    """One file of a generated fleet: its name, the rows it holds and how it is written."""

    name: str
    frame: pd.DataFrame
    kind: str  # "parquet", "csv", "ragged_csv" (a malformed last line) or "garbage"

    @property
    def rows_countable(self) -> int:
        """Rows ingest can know of: all for readable files and ragged CSVs, none for garbage."""
        return {"garbage": 0, "ragged_csv": len(self.frame) + 1}.get(self.kind, len(self.frame))

    def write(self, root: str) -> None:
        with fsspec.open(f"{root}/{self.name}", "wb") as handle:
            if self.kind == "parquet":
                pq.write_table(pa.Table.from_pandas(self.frame, preserve_index=False), handle)
            elif self.kind == "garbage":
                handle.write(b"PAR1 this is not a parquet file")
            else:
                handle.write(self.frame.to_csv(index=False).encode())
                if self.kind == "ragged_csv":
                    handle.write(b"ghost,2024-01-01 00:00:00,1,2,3,0,one too many\n")


@st.composite
def messy_fleets(draw: st.DrawFn) -> tuple[list[WrittenFile], DataConfig]:
    """Long-format fleets spread over Parquet and CSV files, with NaNs, duplicates, shuffles,
    missing ids, and sometimes an unreadable file holding rows of the same recordings."""
    n_recordings = draw(st.integers(1, 6))
    frames = []
    for k in range(n_recordings):
        length = draw(st.integers(1, 30))
        frame = recording_frame(f"r{k}", length, seed=k)
        if draw(st.booleans()):
            n_nan = draw(st.integers(1, length))
            start = draw(st.integers(0, length - 1))
            frame.loc[start : start + n_nan - 1, draw(st.sampled_from(CHANNELS))] = np.nan
        if draw(st.booleans()) and length > 1:
            dup = frame.iloc[draw(st.integers(0, length - 1)) :].head(draw(st.integers(1, 3)))
            frame = pd.concat([frame, dup])
        if draw(st.booleans()):
            frame = frame.sample(frac=1.0, random_state=k)
        frames.append(frame)
    fleet = pd.concat(frames, ignore_index=True).astype({"recording_id": object})
    if draw(st.booleans()):
        fleet.loc[draw(st.integers(0, len(fleet) - 1)), "recording_id"] = None
    n_files = draw(st.integers(1, 3))
    cuts = sorted(
        draw(st.lists(st.integers(0, len(fleet)), min_size=n_files - 1, max_size=n_files - 1))
    )
    bounds = [0, *cuts, len(fleet)]
    files = [
        WrittenFile(f"part-{i}", fleet.iloc[a:b], draw(st.sampled_from(["parquet", "csv"])))
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]
    broken = draw(st.sampled_from([None, "ragged_csv", "garbage"]))
    if broken is not None:
        rows = draw(st.lists(st.integers(0, len(fleet) - 1), min_size=1, max_size=10, unique=True))
        files.append(WrittenFile("broken", fleet.iloc[sorted(rows)], broken))
    for f in files:
        f.name += ".parquet" if f.kind in ("parquet", "garbage") else ".csv"
    cfg = DataConfig(
        min_length=draw(st.integers(2, 10)),
        max_gap=draw(st.integers(0, 5)),
        nan_policy=draw(st.sampled_from(["interpolate", "quarantine"])),
        duplicate_policy=draw(st.sampled_from(["sort_dedup", "quarantine"])),
    )
    return files, cfg


def _ids_of(frame: pd.DataFrame) -> pd.Series:
    return frame["recording_id"].dropna().value_counts()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_fleets())
def test_no_row_is_lost_or_counted_twice(fleet: tuple[list[WrittenFile], DataConfig]) -> None:
    files, cfg = fleet
    root = f"memory://fleet-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for f in files:
        f.write(root)
    try:
        result = ingest(root, cfg)
    finally:
        fs.rm(root.removeprefix("memory://"), recursive=True)

    report, quarantine = result.report, result.quarantine
    assert report["rows_in"] == sum(f.rows_countable for f in files)
    _accounting_holds(report)

    # A file rejected as a whole holds all its rows, under the file (no recording id).
    by_name = {f.name: f for f in files}
    whole_files = quarantine[quarantine["scope"] == "file"]
    rejected = [by_name[source.rsplit("/", 1)[-1]] for source in whole_files["source"]]
    for f, rows in zip(rejected, whole_files["rows"], strict=True):
        assert rows == f.rows_countable, f.name

    # Per recording, over the other files: rows written = rows used + rows quarantined under it.
    quarantined = quarantine.groupby("recording_id")["rows"].sum()
    used = dict(zip(result.recordings.ids, result.recordings.lengths.tolist(), strict=True))
    kept_files = [f for f in files if f not in rejected]
    written = _ids_of(pd.concat([f.frame for f in kept_files])) if kept_files else pd.Series()
    for rec, n in written.items():
        assert n == used.get(rec, 0) + int(quarantined.get(rec, 0)), rec
    assert set(used) <= set(written.index)
    assert len(set(used)) == len(used), "a recording appears twice"

    # A recording with rows in a rejected file is never used in part.
    for f in rejected:
        if f.kind != "garbage":
            assert not set(_ids_of(f.frame).index) & set(used), f.name


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 25), min_size=1, max_size=6), st.integers(1, 4))
def test_clean_recordings_come_out_unchanged(lengths: list[int], n_files: int) -> None:
    frames = [recording_frame(f"rec{i}", n, seed=i) for i, n in enumerate(lengths)]
    root = f"memory://clean-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for i, chunk in enumerate(np.array_split(np.arange(len(frames)), n_files)):
        if len(chunk):
            with fsspec.open(f"{root}/p{i}.parquet", "wb") as handle:
                part = pd.concat([frames[k] for k in chunk])
                pq.write_table(pa.Table.from_pandas(part, preserve_index=False), handle)
    try:
        rs = ingest(root, DataConfig(min_length=1 + 1)).recordings
    finally:
        fs.rm(root.removeprefix("memory://"), recursive=True)

    for i, frame in enumerate(frames):
        if len(frame) < 2:
            assert frame["recording_id"].iloc[0] not in rs.ids
            continue
        got = rs.recording(rs.index_of(f"rec{i}"))
        np.testing.assert_array_equal(got, frame[CHANNELS].to_numpy(np.float32))
        np.testing.assert_array_equal(
            rs.recording_labels(rs.index_of(f"rec{i}")), frame["label"].to_numpy(np.int8)
        )


# -- listing and reading -----------------------------------------------------------------------


def test_list_sources_takes_folders_globs_and_lists(tmp_path: Path) -> None:
    clean_files(tmp_path, 3)
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "notes.md").write_text("not data")
    cfg = DataConfig()

    folder = list_sources(str(tmp_path), cfg)
    glob = list_sources(str(tmp_path / "good-*.parquet"), cfg)
    both = list_sources([str(tmp_path / "good-0.parquet"), str(tmp_path / "good-1.parquet")], cfg)

    assert len(folder) == 3 and folder == glob
    assert len(both) == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_sources(str(tmp_path / "nope"), cfg)


def test_read_source_groups_long_format_by_id(tmp_path: Path) -> None:
    frames = [recording_frame(f"r{i}", 10 + i, seed=i) for i in range(3)]
    interleaved = pd.concat(frames).sort_values("timestamp", kind="stable")
    path = write_parquet(interleaved, tmp_path / "long.parquet")

    part = read_source(str(path), DataConfig())

    assert sorted(part.ids) == ["r0", "r1", "r2"]
    assert part.rows_in == len(interleaved) == part.n_rows
    for i, rec in enumerate(part.ids):
        rows = part.values[part.offsets[i] : part.offsets[i + 1]]
        expected = frames[int(rec[1])][CHANNELS].to_numpy(np.float32)
        np.testing.assert_array_equal(rows, expected)


def test_combine_is_independent_of_part_order(tmp_path: Path) -> None:
    clean_files(tmp_path, 3)
    cfg = DataConfig(min_length=5)
    parts = [read_source(p, cfg) for p in list_sources(str(tmp_path), cfg)]

    forward, backward = combine(parts, cfg), combine(parts[::-1], cfg)

    assert forward.recordings.ids == backward.recordings.ids
    np.testing.assert_array_equal(forward.recordings.values, backward.recordings.values)


# -- storage and caching -----------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    clean_files(source)
    _one = recording_frame("tiny", 2)
    write_parquet(_one, source / "tiny.parquet")
    result = ingest(str(source), DataConfig(min_length=5))

    result.save(tmp_path / "out")
    loaded = load_ingested(tmp_path / "out")

    assert loaded.recordings.ids == result.recordings.ids
    np.testing.assert_array_equal(loaded.recordings.values, result.recordings.values)
    np.testing.assert_array_equal(loaded.recordings.labels, result.recordings.labels)
    assert loaded.report == result.report
    assert loaded.fingerprint == result.fingerprint
    assert list(loaded.quarantine["reason"]) == ["too_short"]


def test_ingest_dataset_caches_until_an_input_changes(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    clean_files(source)
    cfg = DataConfig(path=str(source), min_length=5)

    first = ingest_dataset(cfg, tmp_path / "out")
    again = ingest_dataset(cfg, tmp_path / "out")
    write_parquet(recording_frame("new", 30), source / "new.parquet")
    changed = ingest_dataset(cfg, tmp_path / "out")
    other_config = ingest_dataset(cfg.model_copy(update={"min_length": 35}), tmp_path / "out")

    assert not first["cached"] and again["cached"]
    assert again["fingerprint"] == first["fingerprint"]
    assert not changed["cached"] and changed["recordings_used"] == 3
    assert not other_config["cached"] and other_config["reasons"] == {"too_short": 1}


def test_explicit_splits_land_in_subfolders_with_train_channels(tmp_path: Path) -> None:
    for name in ("train", "test"):
        (tmp_path / name).mkdir()
        clean_files(tmp_path / name)
    extra = recording_frame("with-extra")
    extra["c9"] = 2.0
    write_parquet(extra, tmp_path / "test" / "extra.parquet")
    cfg = DataConfig(
        train_path=str(tmp_path / "train"), test_path=str(tmp_path / "test"), min_length=5
    )

    summary = ingest_dataset(cfg, tmp_path / "out")

    assert set(summary["splits"]) == {"train", "test"}
    train = load_ingested(tmp_path / "out" / "train").recordings
    test = load_ingested(tmp_path / "out" / "test").recordings
    assert test.channels == train.channels == CHANNELS
    assert summary["recordings_used"] == len(train) + len(test) == 5


# -- the real SKAB recordings ------------------------------------------------------------------


@pytest.mark.skab
def test_skab_ingests_the_labelled_experiments_with_nothing_quarantined(skab_dir: Path) -> None:
    config = load_config([PROJECT / "configs" / "skab.yaml"])
    labelled = sorted(
        path
        for folder in ("valve1", "valve2", "other")
        for path in (skab_dir / folder).glob("*.csv")
    )

    result = ingest(str(skab_dir), config.data)

    report = result.report
    assert len(labelled) == 34
    assert report["files_in"] == 34, "anomaly-free/ is left out, as in the published protocol"
    assert report["recordings_used"] == 34
    assert report["recordings_quarantined"] == 0 and report["rows_quarantined"] == 0
    assert report["rows_in"] == sum(len(p.read_text().splitlines()) - 1 for p in labelled)
    assert len(result.recordings.channels) == 8
    assert "Volume Flow RateRMS" in result.recordings.channels
    assert {"valve1/0", "valve2/0", "other/1"} <= set(result.recordings.ids)
    assert not any(rec.startswith("anomaly-free/") for rec in result.recordings.ids)
    assert result.recordings.labels is not None
    assert "label_missing" not in report["warnings"]
    _accounting_holds(report)


def test_a_source_with_no_readable_file_still_writes_its_quarantine(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "junk.parquet").write_bytes(b"junk")

    summary = ingest_dataset(DataConfig(path=str(tmp_path / "in")), tmp_path / "out")
    loaded = load_ingested(tmp_path / "out")

    assert summary["reasons"] == {"unreadable_file": 1} and summary["recordings_used"] == 0
    assert len(loaded.recordings) == 0
    assert list(loaded.quarantine["source"]) == [str(tmp_path / "in" / "junk.parquet")]


# -- whole recordings only ---------------------------------------------------------------------


def _append_ragged_line(path: Path, rec: str) -> None:
    """Make a CSV unreadable: a last line with one field too many."""
    with path.open("a") as handle:
        handle.write(f"{rec},2024-01-02 00:00:00,1,2,3,0,one too many\n")


@pytest.mark.parametrize("bad", ["missing_channel", "unreadable_file"])
def test_a_recording_with_a_rejected_part_is_quarantined_whole(bad: str, tmp_path: Path) -> None:
    good = clean_files(tmp_path)
    frame = recording_frame("split", 60)
    write_parquet(frame.iloc[:30], tmp_path / "a-part1.parquet")
    if bad == "missing_channel":
        bad_file = write_parquet(frame.iloc[30:].drop(columns=["c2"]), tmp_path / "b.parquet")
    else:
        bad_file = tmp_path / "b.csv"
        frame.iloc[30:].to_csv(bad_file, index=False)
        _append_ragged_line(bad_file, "split")

    result = ingest(str(tmp_path), DataConfig(min_length=5))

    quarantine = result.quarantine
    assert "split" not in result.recordings.ids and set(good) <= set(result.recordings.ids)
    partial = quarantine[quarantine["reason"] == "partial_recording"]
    assert list(partial["recording_id"]) == ["split"] and list(partial["rows"]) == [30]
    detail = partial["detail"].iloc[0]
    assert "'split'" in detail and str(bad_file) in detail and bad in detail
    whole = quarantine[quarantine["reason"] == bad]
    assert list(whole["source"]) == [str(bad_file)]
    assert list(whole["rows"]) == [30 if bad == "missing_channel" else 31]
    _accounting_holds(result.report)


def test_text_metadata_is_not_a_channel_but_mostly_numeric_text_is(tmp_path: Path) -> None:
    for i in range(2):
        frame = recording_frame(f"site-{i}", seed=i)
        frame["site"] = "X"
        frame.to_csv(tmp_path / f"site-{i}.csv", index=False)
    typed = recording_frame("typed", seed=5)
    typed["c1"] = typed["c1"].map(lambda v: f"{v:.3f}").astype(object)
    typed.loc[7, "c1"] = "sensor offline"
    typed.to_csv(tmp_path / "typed.csv", index=False)

    result = ingest(str(tmp_path), DataConfig(min_length=5))

    assert result.recordings.channels == CHANNELS
    assert result.recordings.ids == ["site-0", "site-1"]
    assert result.report["warnings"]["unexpected_channel"] == 2
    example = result.report["warning_examples"][0]
    assert "'site'" in example and "'X'" in example and "data.columns.ignore" in example
    rejected = result.quarantine.set_index("recording_id")
    assert rejected.loc["typed", "reason"] == "non_numeric"
    assert rejected.loc["typed", "column"] == "c1"


def test_rows_of_unreadable_files_are_counted_where_they_can_be(tmp_path: Path) -> None:
    clean_files(tmp_path)
    footer_ok = write_parquet(recording_frame("corrupt", 500), tmp_path / "corrupt.parquet")
    data = bytearray(footer_ok.read_bytes())
    data[4:200] = b"\xff" * 196  # page headers broken, footer intact
    footer_ok.write_bytes(bytes(data))
    recording_frame("ragged", 50).to_csv(tmp_path / "ragged.csv", index=False)
    _append_ragged_line(tmp_path / "ragged.csv", "ragged")
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 nothing to count")

    result = ingest(str(tmp_path), DataConfig(min_length=5))

    quarantine = result.quarantine
    assert set(quarantine["reason"]) == {"unreadable_file"}
    rows = {Path(s).name: r for s, r in zip(quarantine["source"], quarantine["rows"], strict=True)}
    assert rows == {"corrupt.parquet": 500, "ragged.csv": 51, "garbage.parquet": 0}
    assert result.report["rows_in"] == 2 * LENGTH + 551
    _accounting_holds(result.report)


# -- report ------------------------------------------------------------------------------------


def test_report_table_shows_the_length_histogram(tmp_path: Path) -> None:
    for i, length in enumerate([30, 300, 3000]):
        write_parquet(recording_frame(f"r{i}", length), tmp_path / f"r{i}.parquet")

    result = ingest(str(tmp_path), DataConfig(min_length=5))

    bins = [row for row in report_table(result.report) if row["kind"] == "length"]
    assert sum(row["count"] for row in bins) == 3
    assert bins[0]["name"].startswith("30-") and bins[-1]["name"].endswith("-3000 steps")
    assert {row["detail"] for row in bins if row["count"]} == {"#" * 40}


# -- storage, URLs and layouts ----------------------------------------------------------------


def test_cache_is_not_trusted_when_recordings_are_missing(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    clean_files(source)
    cfg = DataConfig(path=str(source), min_length=5)
    ingest_dataset(cfg, tmp_path / "out")
    (tmp_path / "out" / "recordings.parquet").unlink()

    again = ingest_dataset(cfg, tmp_path / "out")

    assert again["cached"] is False
    assert len(load_ingested(tmp_path / "out").recordings) == 2


def test_file_and_memory_urls_read_like_local_paths(tmp_path: Path) -> None:
    clean_files(tmp_path)
    cfg = DataConfig(min_length=5)
    local = ingest(str(tmp_path), cfg)
    root = f"memory://urls-{uuid.uuid4().hex}"
    for path in sorted(tmp_path.glob("*.parquet")):
        with fsspec.open(f"{root}/nested/{path.name}", "wb") as handle:
            handle.write(path.read_bytes())
    try:
        via_file = ingest(tmp_path.as_uri(), cfg)
        via_memory = ingest(root, cfg)
        via_glob = list_sources(f"{root}/nested/*.parquet", cfg)
    finally:
        fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)

    for result, scheme in ((via_file, "file://"), (via_memory, "memory://")):
        assert result.recordings.ids == local.recordings.ids
        np.testing.assert_array_equal(result.recordings.values, local.recordings.values)
        assert all(source.startswith(scheme) for source in result.recordings.sources)
    assert [url.rsplit("/", 1)[-1] for url in via_glob] == ["good-0.parquet", "good-1.parquet"]
    assert all(url.startswith("memory://") for url in via_glob)


@pytest.mark.parametrize("problem", ["duplicate_timestamp", "unsorted_timestamps"])
def test_duplicate_policy_fail_names_file_recording_and_column(
    problem: str, tmp_path: Path
) -> None:
    frame = recording_frame("clock")
    if problem == "duplicate_timestamp":
        frame = pd.concat([frame, frame.iloc[[5]]]).sort_values("timestamp", kind="stable")
    else:
        frame = frame.iloc[::-1]
    write_parquet(frame, tmp_path / "clock.parquet")

    with pytest.raises(IngestError) as excinfo:
        ingest(str(tmp_path), DataConfig(duplicate_policy="fail", min_length=5))

    message = str(excinfo.value)
    assert "clock.parquet" in message and "'clock'" in message and "'timestamp'" in message
    assert problem in message and "'fail'" in message


def test_very_long_recordings_are_kept_whole(tmp_path: Path) -> None:
    clean_files(tmp_path)
    long = recording_frame("long", 300_000, seed=7)
    write_parquet(long, tmp_path / "long.parquet")

    result = ingest(str(tmp_path), DataConfig(min_length=5))

    rs = result.recordings
    i = rs.index_of("long")
    assert rs.lengths[i] == 300_000 and result.report["lengths"]["max"] == 300_000
    np.testing.assert_array_equal(rs.recording(i), long[CHANNELS].to_numpy(np.float32))
    assert result.report["recordings_quarantined"] == 0


def test_per_file_layout_takes_ids_from_folder_and_stem(tmp_path: Path) -> None:
    frames = {}
    for folder in ("pump-a", "pump-b"):
        (tmp_path / folder).mkdir()
        for stem in ("0", "1"):
            frame = recording_frame("ignored", 30 + len(frames), seed=len(frames))
            frame = frame.drop(columns=["recording_id"])
            frame.to_csv(tmp_path / folder / f"{stem}.csv", sep=";", index=False)
            frames[f"{folder}/{stem}"] = frame
    cfg = DataConfig(layout="per_file", format="csv", csv_separator=";", min_length=5)

    result = ingest(str(tmp_path), cfg)

    rs = result.recordings
    assert rs.ids == sorted(frames)
    for rec, frame in frames.items():
        got = rs.recording(rs.index_of(rec))
        np.testing.assert_allclose(got, frame[CHANNELS].to_numpy(np.float32), rtol=1e-6)
    assert result.report["rows_in"] == sum(len(f) for f in frames.values())
    _accounting_holds(result.report)


def test_only_the_needed_columns_are_read(tmp_path: Path, monkeypatch) -> None:
    frame = recording_frame("proj")
    frame["notes"] = "free text"
    frame["spare"] = 1.0
    frame.to_csv(tmp_path / "proj.csv", index=False)
    write_parquet(frame, tmp_path / "proj.parquet")
    seen: list[list[str]] = []
    read_csv, read_parquet = pacsv.read_csv, pq.ParquetFile.read

    def spy_csv(*args, **kwargs):
        seen.append(list(kwargs["convert_options"].include_columns))
        return read_csv(*args, **kwargs)

    def spy_parquet(self, *args, **kwargs):
        seen.append(list(kwargs["columns"]))
        return read_parquet(self, *args, **kwargs)

    monkeypatch.setattr(pacsv, "read_csv", spy_csv)
    monkeypatch.setattr(pq.ParquetFile, "read", spy_parquet)
    named = DataConfig(columns={"channels": CHANNELS})
    auto = DataConfig(columns={"ignore": ["notes", "spare"]})

    parts = [
        read_source(str(tmp_path / name), cfg)
        for cfg in (named, auto)
        for name in ("proj.csv", "proj.parquet")
    ]

    contract = ["recording_id", "timestamp", *CHANNELS, "label"]
    assert seen == [contract] * 4
    for part in parts:
        assert part.channels == CHANNELS and not part.warnings and part.n_rows == LENGTH
