"""Normalisation: train-only statistics, fleet or per recording, zero-variance guard, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorlstm.normalize import Normalizer
from sensorlstm.recording import RecordingSet


def _fleet(lengths: list[int], seed: int = 0, scale: float = 10.0) -> RecordingSet:
    rng = np.random.default_rng(seed)
    return RecordingSet.from_arrays(
        [
            (rng.normal(size=(n, 3)) * scale * (i + 1) + 5 * i).astype(np.float32)
            for i, n in enumerate(lengths)
        ]
    )


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(3, 60), min_size=1, max_size=8), st.sampled_from(["fleet", "recording"])
)
def test_transform_standardises_the_training_data(lengths, mode) -> None:
    rs = _fleet(lengths)
    out = Normalizer.fit(rs, mode).transform(rs)

    groups = [out.values] if mode == "fleet" else [out.recording(i) for i in range(len(out))]
    for values in groups:
        np.testing.assert_allclose(values.mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(values.std(axis=0), 1.0, atol=1e-3)


@pytest.mark.parametrize("mode", ["fleet", "recording", "none"])
def test_round_trips_through_json_and_inverts(mode: str) -> None:
    rs = _fleet([20, 30])
    norm = Normalizer.fit(rs, mode)
    restored = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))

    out = restored.transform(rs)
    np.testing.assert_allclose(out.values, norm.transform(rs).values)
    np.testing.assert_allclose(restored.inverse_transform(out).values, rs.values, atol=1e-3)


def test_constant_channel_is_centred_not_divided_by_zero() -> None:
    rs = _fleet([25, 25])
    rs.values[:, 1] = 3.0
    for mode in ("fleet", "recording"):
        out = Normalizer.fit(rs, mode).transform(rs)
        assert np.isfinite(out.values).all()
        np.testing.assert_allclose(out.values[:, 1], 0.0)


def test_statistics_come_from_the_fitted_split_only() -> None:
    train, test = _fleet([50], seed=0), _fleet([50], seed=1, scale=100.0)
    norm = Normalizer.fit(train, "fleet")
    np.testing.assert_allclose(norm.mean, train.values.mean(axis=0), rtol=1e-5)
    assert np.abs(norm.transform(test).values).std() > 5


def test_recording_mode_reuses_training_statistics_for_known_ids() -> None:
    rs = _fleet([400])
    train, later = rs.slice_time(0, 100), rs.slice_time(100)
    norm = Normalizer.fit(train, "recording")
    expected = (later.values - train.values.mean(axis=0)) / train.values.std(axis=0)
    np.testing.assert_allclose(norm.transform(later).values, expected, rtol=1e-3, atol=1e-3)


def test_transform_names_a_missing_channel() -> None:
    norm = Normalizer.fit(_fleet([10]), "fleet")
    other = RecordingSet.from_arrays([np.zeros((5, 3), np.float32)], channels=["a", "b", "c"])
    with pytest.raises(KeyError, match="ch0"):
        norm.transform(other)
