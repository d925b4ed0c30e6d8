"""Ingest: the broken-input corpus, row accounting properties, SKAB, storage and caching."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_corpus import CASES, CHANNELS, Case, clean_files, recording_frame, write_parquet
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


@st.composite
def messy_fleets(draw: st.DrawFn) -> tuple[list[pd.DataFrame], DataConfig]:
    """Long-format fleets spread over files, with NaNs, duplicates, shuffles and missing ids."""
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
    files = [fleet.iloc[a:b] for a, b in itertools.pairwise(bounds)]
    cfg = DataConfig(
        min_length=draw(st.integers(2, 10)),
        max_gap=draw(st.integers(0, 5)),
        nan_policy=draw(st.sampled_from(["interpolate", "quarantine"])),
        duplicate_policy=draw(st.sampled_from(["sort_dedup", "quarantine"])),
    )
    return files, cfg


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_fleets())
def test_no_row_is_lost_or_counted_twice(fleet: tuple[list[pd.DataFrame], DataConfig]) -> None:
    files, cfg = fleet
    root = f"memory://fleet-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for i, frame in enumerate(files):
        with fsspec.open(f"{root}/part-{i}.parquet", "wb") as handle:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), handle)
    try:
        result = ingest(root, cfg)
    finally:
        fs.rm(root.removeprefix("memory://"), recursive=True)

    written = pd.concat(files)
    report = result.report
    assert report["rows_in"] == len(written)
    _accounting_holds(report)

    # Per recording: rows written = rows used + rows quarantined under its id.
    quarantined = result.quarantine.groupby("recording_id", dropna=False)["rows"].sum()
    used = dict(zip(result.recordings.ids, result.recordings.lengths.tolist(), strict=True))
    per_id = written["recording_id"].value_counts(dropna=False)
    for rec, n in per_id.items():
        if rec is None or (isinstance(rec, float) and np.isnan(rec)):
            continue
        assert n == used.get(rec, 0) + int(quarantined.get(rec, 0)), rec
    assert set(used) <= set(per_id.index)
    assert len(set(used)) == len(used), "a recording appears twice"


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
def test_skab_ingests_all_files_with_nothing_quarantined(skab_dir: Path) -> None:
    config = load_config([PROJECT / "configs" / "skab.yaml"])

    result = ingest(str(skab_dir), config.data)

    report = result.report
    assert report["files_in"] == 35
    assert report["recordings_used"] == 35
    assert report["recordings_quarantined"] == 0 and report["rows_quarantined"] == 0
    assert len(result.recordings.channels) == 8
    assert "Volume Flow RateRMS" in result.recordings.channels
    assert {"valve1/0", "valve2/0", "other/1"} <= set(result.recordings.ids)
    assert result.recordings.labels is not None
    _accounting_holds(report)


def test_a_source_with_no_readable_file_still_writes_its_quarantine(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "junk.parquet").write_bytes(b"junk")

    summary = ingest_dataset(DataConfig(path=str(tmp_path / "in")), tmp_path / "out")
    loaded = load_ingested(tmp_path / "out")

    assert summary["reasons"] == {"unreadable_file": 1} and summary["recordings_used"] == 0
    assert len(loaded.recordings) == 0
    assert list(loaded.quarantine["source"]) == [str(tmp_path / "in" / "junk.parquet")]
