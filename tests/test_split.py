"""Splits: whole recordings, seeded, stratified by length; time split; explicit sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_corpus import clean_files, recording_frame, write_parquet
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorlstm.config import Config, DataConfig, SplitConfig
from sensorlstm.ingest import ingest_dataset
from sensorlstm.recording import RecordingSet
from sensorlstm.split import load_splits, split_recordings


def _fleet(lengths: list[int], channels: int = 2) -> RecordingSet:
    rng = np.random.default_rng(0)
    return RecordingSet.from_arrays(
        [rng.normal(size=(n, channels)).astype(np.float32) for n in lengths],
        labels=[np.zeros(n, np.int8) for n in lengths],
    )


fractions = st.tuples(st.floats(0.0, 0.45), st.floats(0.0, 0.45))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(2, 500), min_size=1, max_size=80), fractions, st.integers(0, 99))
def test_recording_split_is_a_seeded_partition(lengths, fracs, seed) -> None:
    rs = _fleet(lengths)
    cfg = SplitConfig(val_fraction=fracs[0], test_fraction=fracs[1], seed=seed)

    splits = split_recordings(rs, cfg)
    again = split_recordings(rs, cfg)

    ids = splits.train.ids + splits.val.ids + splits.test.ids
    assert sorted(ids) == sorted(rs.ids), "every recording in exactly one split"
    assert len(splits.train) >= 1
    assert (splits.train.ids, splits.val.ids, splits.test.ids) == (
        again.train.ids,
        again.val.ids,
        again.test.ids,
    )
    for part in (splits.train, splits.val, splits.test):
        for rec in part.ids:  # whole recordings, never cut
            assert part.lengths[part.index_of(rec)] == rs.lengths[rs.index_of(rec)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(2, 2000), min_size=20, max_size=120), st.integers(0, 99))
def test_val_and_test_span_short_and_long_recordings(lengths, seed) -> None:
    rs = _fleet(lengths, channels=1)
    splits = split_recordings(rs, SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=seed))

    order = np.sort(rs.lengths)
    short, long = order[len(order) // 4], order[-(len(order) // 4) - 1]
    for part in (splits.val, splits.test):
        assert part.lengths.min() <= short and part.lengths.max() >= long


def test_different_seeds_give_different_splits() -> None:
    rs = _fleet(list(range(10, 70)))
    a = split_recordings(rs, SplitConfig(seed=0)).test.ids
    b = split_recordings(rs, SplitConfig(seed=1)).test.ids
    assert a != b


def test_time_split_cuts_each_recording_at_train_steps() -> None:
    rs = _fleet([1000, 450, 300])
    splits = split_recordings(rs, SplitConfig(method="time", train_steps=400, val_fraction=0.15))

    assert splits.train.lengths.tolist() == [340, 340, 300]
    assert splits.val.lengths.tolist() == [60, 60]  # the 300-row recording has no val rows
    assert splits.test.lengths.tolist() == [600, 50]
    np.testing.assert_array_equal(splits.test.recording(0), rs.recording(0)[400:])
    np.testing.assert_array_equal(splits.val.recording(0), rs.recording(0)[340:400])


def test_load_splits_uses_explicit_folders(tmp_path: Path) -> None:
    _fleet([30] * 10).save(tmp_path / "train")
    _fleet([40] * 3).save(tmp_path / "test")

    splits = load_splits(tmp_path, Config())

    assert len(splits.test) == 3
    assert len(splits.train) + len(splits.val) == 10 and len(splits.val) >= 1


def test_load_splits_splits_a_single_set(tmp_path: Path) -> None:
    _fleet(list(range(30, 50))).save(tmp_path)
    splits = load_splits(tmp_path, Config())
    assert sum(splits.sizes().values()) == 20


def test_load_splits_names_the_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="sensorlstm ingest"):
        load_splits(tmp_path, Config())


def test_load_splits_follows_the_latest_ingest_not_leftover_folders(tmp_path: Path) -> None:
    for name in ("all", "train", "test"):
        (tmp_path / name).mkdir()
    clean_files(tmp_path / "train", 3)
    clean_files(tmp_path / "test", 2)
    for i in range(10):
        write_parquet(recording_frame(f"auto-{i}", seed=i), tmp_path / "all" / f"{i}.parquet")
    explicit = DataConfig(
        train_path=str(tmp_path / "train"), test_path=str(tmp_path / "test"), min_length=5
    )
    automatic = DataConfig(path=str(tmp_path / "all"), min_length=5)
    out = tmp_path / "out"

    ingest_dataset(explicit, out)
    ingest_dataset(automatic, out)
    after_auto = load_splits(out, Config())
    ingest_dataset(explicit, out)
    after_explicit = load_splits(out, Config())

    auto_ids = after_auto.train.ids + after_auto.val.ids + after_auto.test.ids
    assert sorted(auto_ids) == sorted(f"auto-{i}" for i in range(10))
    assert len(after_explicit.test) == 2
    assert len(after_explicit.train) + len(after_explicit.val) == 3
    assert not (out / "recordings.parquet").exists(), "the automatic set was removed"


def test_load_splits_trusts_the_summary_over_a_stray_train_folder(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    clean_files(tmp_path / "in", 4)
    ingest_dataset(DataConfig(path=str(tmp_path / "in"), min_length=5), tmp_path / "out")
    _fleet([30] * 7).save(tmp_path / "out" / "train")  # e.g. copied in by hand

    splits = load_splits(tmp_path / "out", Config())

    assert sum(splits.sizes().values()) == 4
