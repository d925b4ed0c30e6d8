"""A synthetic fleet of multichannel sensor recordings with labelled anomalies.

The fleet stands in for real machines so that the whole pipeline runs on a fresh clone:

- Each *machine type* has a few latent oscillations (periods of ~8 to ~200 steps) and a fixed
  loading matrix that mixes them into the channels, so channels are correlated and a forecaster
  that sees all of them predicts each better than one alone.
- Each *recording* runs on one machine type, with its own operating level and gain per channel,
  random phases, a slow shared AR(1) drift of the operating point and white sensor noise.
- Lengths are log-normal (``median_length``, ``sigma``), clipped to ``min_length..max_length``.
- ``anomaly_rate`` of the recordings carry 1..``max_events`` anomalous events, each of one kind
  (spike, level shift, drift, stuck sensor, noise burst) on a random subset of channels; the
  ``label`` column is 1 on every step an event touches.

Everything is drawn from ``numpy.random.Generator`` streams derived from ``GenerateConfig.seed``,
so the same config gives the same fleet, bit for bit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sensorlstm.config import GenerateConfig

logger = logging.getLogger(__name__)

ANOMALY_KINDS = ("spike", "level_shift", "drift", "stuck", "noise_burst")
FLEET_FILE_GLOB = "fleet-*.parquet"
START_TIME = np.datetime64("2024-01-01T00:00:00", "s")
_OSCILLATIONS_PER_MACHINE = 3


def channel_names(n_channels: int) -> list[str]:
    """Channel column names of a generated fleet: ``ch0 .. ch{C-1}``."""
    return [f"ch{i}" for i in range(n_channels)]


def sample_lengths(cfg: GenerateConfig, rng: np.random.Generator) -> np.ndarray:
    """Log-normal recording lengths around ``cfg.median_length``, clipped, int64 ``(n,)``."""
    if cfg.min_length > cfg.max_length:
        raise ValueError(
            f"generate.min_length ({cfg.min_length}) must be <= generate.max_length "
            f"({cfg.max_length}); lower min_length or raise max_length"
        )
    raw = rng.lognormal(mean=np.log(cfg.median_length), sigma=cfg.sigma, size=cfg.recordings)
    return np.clip(np.rint(raw), cfg.min_length, cfg.max_length).astype(np.int64)


def generate_fleet(cfg: GenerateConfig | None = None) -> pd.DataFrame:
    """Generate the fleet in the long-format data contract.

    Args:
        cfg: fleet size, lengths, anomalies and seed; defaults to ``GenerateConfig()``.

    Returns:
        One row per timestep, recordings one after the other, columns ``recording_id`` (str),
        ``timestamp`` (datetime64, 1 s steps, each recording starting at a different time),
        ``ch0 .. ch{C-1}`` (float32) and ``label`` (int8, 1 on anomalous steps).
    """
    cfg = cfg or GenerateConfig()
    fleet_seed, *recording_seeds = np.random.SeedSequence(cfg.seed).spawn(cfg.recordings + 1)
    fleet_rng = np.random.default_rng(fleet_seed)

    # Fleet-level draws: machine types, lengths, which recordings are anomalous, start times.
    machines = [_machine(cfg.channels, fleet_rng) for _ in range(cfg.machines)]
    lengths = sample_lengths(cfg, fleet_rng)
    n_anomalous = round(cfg.anomaly_rate * cfg.recordings)
    anomalous = np.zeros(cfg.recordings, dtype=bool)
    anomalous[fleet_rng.permutation(cfg.recordings)[:n_anomalous]] = True
    gaps = fleet_rng.integers(3_600, 86_400, size=cfg.recordings)  # 1 h .. 1 day apart
    starts = START_TIME + np.cumsum(gaps).astype("timedelta64[s]")

    values, labels = [], []
    for i, seed in enumerate(recording_seeds):
        rng = np.random.default_rng(seed)
        machine = machines[i % cfg.machines]
        clean = _clean_recording(machine, int(lengths[i]), cfg.noise, rng)
        label = np.zeros(len(clean), dtype=np.int8)
        if anomalous[i]:
            clean, label = _inject_anomalies(clean, cfg, rng)
        values.append(clean)
        labels.append(label)

    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total = int(offsets[-1])
    within = np.arange(total) - np.repeat(offsets[:-1], lengths)
    ids = np.array([f"rec{i:05d}" for i in range(cfg.recordings)], dtype=object)
    frame = pd.DataFrame(
        {
            "recording_id": np.repeat(ids, lengths),
            "timestamp": (np.repeat(starts, lengths) + within.astype("timedelta64[s]")).astype(
                "datetime64[ns]"
            ),
        }
    )
    stacked = np.concatenate(values).astype(np.float32)
    channels = pd.DataFrame(stacked, columns=channel_names(cfg.channels))
    frame = pd.concat([frame, channels], axis=1)
    frame["label"] = np.concatenate(labels).astype(np.int8)
    logger.info(
        "generated %d recordings (%d anomalous), %d rows, lengths %d..%d (median %d)",
        cfg.recordings,
        n_anomalous,
        total,
        lengths.min(),
        lengths.max(),
        int(np.median(lengths)),
    )
    return frame


def write_fleet(df: pd.DataFrame, out_dir: str | Path, *, files: int = 4) -> list[Path]:
    """Write a long-format fleet as Parquet files, each recording whole inside one file.

    Existing ``fleet-*.parquet`` files in ``out_dir`` are removed first, so a smaller fleet
    written over a larger one leaves no stale recordings behind.

    Args:
        df: long-format frame with a ``recording_id`` column, rows of a recording contiguous.
        out_dir: folder to write into (created).
        files: number of files to spread the recordings over (fewer if there are fewer
            recordings).

    Returns:
        The written paths, in order.
    """
    if files < 1:
        raise ValueError(f"files must be >= 1, got {files}")
    if "recording_id" not in df.columns:
        raise KeyError(f"the fleet frame needs a 'recording_id' column, got {list(df.columns)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(FLEET_FILE_GLOB):
        stale.unlink()

    # Recording boundaries: positions where the id changes.
    ids = df["recording_id"].to_numpy()
    change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    bounds = np.concatenate([[0], change, [len(df)]])
    n_recordings = len(bounds) - 1
    parts = np.array_split(np.arange(n_recordings), min(files, max(n_recordings, 1)))
    paths = []
    for k, part in enumerate(parts):
        if len(part) == 0:
            continue
        rows = df.iloc[bounds[part[0]] : bounds[part[-1] + 1]]
        path = out_dir / f"fleet-{k:03d}.parquet"
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), path)
        paths.append(path)
    logger.info("wrote %d recordings to %d files in %s", n_recordings, len(paths), out_dir)
    return paths


# -- signal model ------------------------------------------------------------------------------


def _machine(n_channels: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One machine type: latent oscillation periods and how they load onto the channels."""
    periods = rng.uniform(np.log(8.0), np.log(200.0), size=_OSCILLATIONS_PER_MACHINE)
    return {
        "frequencies": 1.0 / np.exp(periods),  # cycles per step
        "loadings": rng.normal(0.0, 1.0, size=(_OSCILLATIONS_PER_MACHINE, n_channels)),
        "drift_loadings": rng.normal(0.0, 0.5, size=n_channels),
    }


def _clean_recording(
    machine: dict[str, np.ndarray], length: int, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """A normal recording of one machine type, float64 ``(length, C)``."""
    n_channels = machine["loadings"].shape[1]
    t = np.arange(length)[:, None]
    phases = rng.uniform(0, 2 * np.pi, size=machine["frequencies"].shape)
    latent = np.sin(2 * np.pi * machine["frequencies"] * t + phases)  # (L, K)
    signal = latent @ machine["loadings"]  # (L, C)

    # A slow AR(1) wander of the operating point, shared by all channels.
    innovations = rng.normal(0.0, 0.05, size=length)
    wander = np.empty(length)
    wander[0] = innovations[0]
    for step in range(1, length):
        wander[step] = 0.98 * wander[step - 1] + innovations[step]
    signal += wander[:, None] * machine["drift_loadings"]

    level = rng.normal(0.0, 2.0, size=n_channels)
    gain = rng.uniform(0.5, 2.0, size=n_channels)
    amplitude = np.maximum(signal.std(axis=0), 1e-3)
    noisy = signal + rng.normal(0.0, 1.0, size=signal.shape) * noise * amplitude
    return level + gain * noisy


def _inject_anomalies(
    values: np.ndarray, cfg: GenerateConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Add 1..max_events anomalous events; returns the new values and the 0/1 step labels."""
    values = values.copy()
    length, n_channels = values.shape
    scale = np.maximum(values.std(axis=0), 1e-3)
    labels = np.zeros(length, dtype=np.int8)
    for _ in range(int(rng.integers(1, cfg.max_events + 1))):
        kind = str(rng.choice(cfg.anomaly_kinds))
        n_affected = int(rng.integers(1, max(1, n_channels // 2) + 1))
        affected = rng.choice(n_channels, size=n_affected, replace=False)
        if kind == "spike":
            duration = int(rng.integers(1, 4))
        else:
            duration = int(rng.integers(max(2, length // 20), max(3, length // 5) + 1))
        duration = min(duration, length - 1)
        start = int(rng.integers(1, length - duration + 1))  # step 0 stays normal
        window = slice(start, start + duration)
        segment = values[window][:, affected]  # fancy indexing copies: written back below
        before = values[start - 1, affected]
        values[window, affected] = _anomalous(kind, segment, before, scale[affected], rng)
        labels[window] = 1
    return values, labels


def _anomalous(
    kind: str,
    segment: np.ndarray,
    before: np.ndarray,
    scale: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """The ``(duration, k)`` segment with an anomaly of ``kind``.

    Args:
        kind: one of :data:`ANOMALY_KINDS`.
        segment: the normal values of the affected channels during the event.
        before: the affected channels' values on the step before the event (a stuck sensor
            keeps repeating it).
        scale: each affected channel's spread over the recording; magnitudes are multiples of
            it, so an anomaly is as visible on a quiet channel as on a loud one.
        rng: the recording's random stream.
    """
    sign = rng.choice([-1.0, 1.0], size=segment.shape[1])
    match kind:
        case "spike":
            return segment + sign * rng.uniform(4.0, 8.0, size=sign.shape) * scale
        case "level_shift":
            return segment + sign * rng.uniform(2.0, 4.0, size=sign.shape) * scale
        case "drift":
            ramp = np.linspace(1.0 / len(segment), 1.0, len(segment))[:, None]
            return segment + ramp * sign * rng.uniform(3.0, 5.0, size=sign.shape) * scale
        case "stuck":
            return np.broadcast_to(before, segment.shape).copy()
        case "noise_burst":
            noise = rng.normal(0.0, 1.0, size=segment.shape)
            return segment + noise * rng.uniform(1.5, 3.0) * scale
    raise ValueError(f"unknown anomaly kind {kind!r}; expected one of {ANOMALY_KINDS}")
