"""The synthetic fleet: data contract, determinism, anomalies where the labels say, Parquet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorlstm.config import GenerateConfig
from sensorlstm.synthetic import ANOMALY_KINDS, channel_names, generate_fleet, write_fleet

SMALL = {"recordings": 12, "channels": 4, "median_length": 80, "min_length": 30, "max_length": 400}

configs = st.builds(
    GenerateConfig,
    recordings=st.integers(1, 15),
    channels=st.integers(1, 6),
    median_length=st.integers(10, 200),
    sigma=st.floats(0.0, 1.5),
    min_length=st.integers(4, 40),
    max_length=st.integers(40, 300),
    anomaly_rate=st.floats(0.0, 1.0),
    max_events=st.integers(1, 4),
    machines=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)


def _per_recording(df: pd.DataFrame) -> list[pd.DataFrame]:
    return [group for _, group in df.groupby("recording_id", sort=False)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs)
def test_generate_fleet_follows_the_data_contract(cfg: GenerateConfig) -> None:
    df = generate_fleet(cfg)

    assert list(df.columns) == ["recording_id", "timestamp", *channel_names(cfg.channels), "label"]
    assert all(df[c].dtype == np.float32 for c in channel_names(cfg.channels))
    assert df["label"].dtype == np.int8
    assert set(np.unique(df["label"])) <= {0, 1}
    assert np.issubdtype(df["timestamp"].dtype, np.datetime64)
    assert np.isfinite(df[channel_names(cfg.channels)].to_numpy()).all()

    recordings = _per_recording(df)
    assert len(recordings) == cfg.recordings
    starts = []
    for rec in recordings:
        assert cfg.min_length <= len(rec) <= cfg.max_length
        steps = np.diff(rec["timestamp"].to_numpy()).astype("timedelta64[s]").astype(int)
        assert (steps == 1).all(), "timestamps advance in 1 s steps within a recording"
        starts.append(rec["timestamp"].iloc[0])
    assert len(set(starts)) == len(starts), "every recording starts at a different time"

    anomalous = sum(int(rec["label"].any()) for rec in recordings)
    assert anomalous == round(cfg.anomaly_rate * cfg.recordings)


def test_generate_fleet_is_deterministic_for_a_seed() -> None:
    cfg = GenerateConfig(**SMALL, seed=7)
    pd.testing.assert_frame_equal(generate_fleet(cfg), generate_fleet(cfg))
    other = generate_fleet(cfg.model_copy(update={"seed": 8}))
    assert not np.array_equal(other["ch0"].to_numpy()[:30], generate_fleet(cfg)["ch0"][:30])


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_anomalies_change_exactly_the_labelled_steps(kind: str) -> None:
    # The clean signal does not depend on anomaly_rate, so a fleet without anomalies is the
    # reference for the same fleet with them.
    cfg = GenerateConfig(**SMALL, anomaly_kinds=[kind], seed=3)
    clean = generate_fleet(cfg.model_copy(update={"anomaly_rate": 0.0}))
    dirty = generate_fleet(cfg.model_copy(update={"anomaly_rate": 1.0}))
    channels = channel_names(cfg.channels)

    changed = (clean[channels].to_numpy() != dirty[channels].to_numpy()).any(axis=1)
    labelled = dirty["label"].to_numpy() == 1
    np.testing.assert_array_equal(changed, labelled)
    assert clean["label"].sum() == 0


def test_a_stuck_sensor_repeats_its_last_normal_reading() -> None:
    cfg = GenerateConfig(**SMALL, anomaly_kinds=["stuck"], max_events=1, anomaly_rate=1.0)
    channels = channel_names(cfg.channels)
    for rec in _per_recording(generate_fleet(cfg)):
        labels = rec["label"].to_numpy()
        first = int(np.argmax(labels))
        event = rec[channels].to_numpy()[first - 1 : first + int(labels.sum())]
        flat = (np.diff(event, axis=0) == 0).all(axis=0)
        assert flat.any(), f"{rec['recording_id'].iloc[0]}: no channel stays stuck"


def test_clean_recordings_are_forecastable_from_their_recent_past() -> None:
    # A linear next-step predictor on the last two steps of all channels must explain most of
    # the variance: the fleet is learnable, not noise.
    cfg = GenerateConfig(**SMALL, anomaly_rate=0.0, seed=11)
    channels = channel_names(cfg.channels)
    explained = []
    for rec in _per_recording(generate_fleet(cfg)):
        x = rec[channels].to_numpy(np.float64)
        features = np.hstack([x[1:-1], x[:-2], np.ones((len(x) - 2, 1))])
        target = x[2:]
        coef, *_ = np.linalg.lstsq(features, target, rcond=None)
        residual = target - features @ coef
        explained.append(1 - residual.var(axis=0).sum() / target.var(axis=0).sum())
    assert np.median(explained) > 0.8


def test_channels_of_a_recording_are_correlated() -> None:
    cfg = GenerateConfig(**SMALL, anomaly_rate=0.0, seed=5)
    channels = channel_names(cfg.channels)
    mean_abs = []
    for rec in _per_recording(generate_fleet(cfg)):
        corr = np.corrcoef(rec[channels].to_numpy(np.float64), rowvar=False)
        mean_abs.append(np.abs(corr[~np.eye(len(channels), dtype=bool)]).mean())
    assert np.median(mean_abs) > 0.3


@pytest.mark.parametrize("files", [1, 3, 50])
def test_write_fleet_round_trips_without_splitting_recordings(tmp_path, files: int) -> None:
    df = generate_fleet(GenerateConfig(**SMALL, seed=1))
    (tmp_path / "fleet-999.parquet").write_bytes(b"stale")
    paths = write_fleet(df, tmp_path, files=files)

    assert len(paths) == min(files, SMALL["recordings"])
    assert sorted(tmp_path.glob("*.parquet")) == sorted(paths), "stale fleet files are removed"
    parts = [pd.read_parquet(p) for p in paths]
    ids_per_file = [set(part["recording_id"]) for part in parts]
    assert sum(len(ids) for ids in ids_per_file) == len(set().union(*ids_per_file))
    back = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["label"].dtype == np.int8 and back["ch0"].dtype == np.float32


def test_impossible_length_bounds_are_explained() -> None:
    with pytest.raises(ValueError, match="min_length"):
        generate_fleet(GenerateConfig(min_length=50, max_length=40))
