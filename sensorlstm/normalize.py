"""Per-channel standardisation with statistics from the training split only.

Modes:

- ``fleet``: one mean and std per channel over all training rows (the default).
- ``recording``: each recording standardised by its own statistics, for fleets whose recordings
  come from different sensors or machines. Statistics of the recordings seen in training are
  stored by id and reused for later parts of the same recording (a time split's test rows are
  scaled with their training rows' statistics); a recording never seen is scaled by its own.
- ``none``: values pass through.

A channel with (near) zero variance keeps std 1, so it is centred but never divided by zero.
The normaliser is saved with the model bundle as ``to_dict()`` JSON.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from sensorlstm.recording import RecordingSet

logger = logging.getLogger(__name__)

Mode = Literal["fleet", "recording", "none"]
#: Standard deviations below this are treated as zero (the channel is constant).
MIN_STD = 1e-8


@dataclass
class Normalizer:
    """Fitted standardisation: ``(x - mean) / std`` per channel.

    Attributes:
        mode: ``fleet``, ``recording`` or ``none``.
        channels: channel names, in the order of ``mean`` and ``std``.
        mean: float64 ``(C,)`` fleet means (used in ``fleet`` mode; informative otherwise).
        std: float64 ``(C,)`` fleet standard deviations, zero-variance channels set to 1.
        recording_stats: ``recording`` mode only: id -> (mean, std) from the training rows.
    """

    mode: Mode
    channels: list[str]
    mean: np.ndarray
    std: np.ndarray
    recording_stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def fit(cls, rs: RecordingSet, mode: Mode = "fleet") -> Normalizer:
        """Statistics of ``rs`` (the training split).

        Args:
            rs: training recordings.
            mode: ``fleet``, ``recording`` or ``none``.

        Returns:
            The fitted normaliser.
        """
        if mode not in ("fleet", "recording", "none"):
            raise ValueError(f"normalize mode must be fleet, recording or none, got {mode!r}")
        values = rs.values.astype(np.float64)
        if len(values):
            mean, std = values.mean(axis=0), _guard(values.std(axis=0))
        else:
            mean, std = np.zeros(rs.n_channels), np.ones(rs.n_channels)
        constant = [c for c, s in zip(rs.channels, std, strict=True) if s == 1.0 and len(values)]
        if constant and mode == "fleet":
            logger.warning(
                "channels %s are constant in the training split; std set to 1", constant
            )
        stats = {}
        if mode == "recording":
            for i, rec in enumerate(rs.ids):
                stats[rec] = _stats(rs.recording(i))
        return cls(mode, list(rs.channels), mean, std, stats)

    def transform(self, rs: RecordingSet) -> RecordingSet:
        """A standardised copy of ``rs`` (channels reordered to the fitted order).

        Raises:
            KeyError: ``rs`` lacks a fitted channel (the message names it).
        """
        values = rs.values[:, rs.select_channels(self.channels)].astype(np.float64)
        if self.mode == "fleet":
            values = (values - self.mean) / self.std
        elif self.mode == "recording":
            for i, rec in enumerate(rs.ids):
                lo, hi = rs.offsets[i], rs.offsets[i + 1]
                mean, std = self.recording_stats.get(rec) or _stats(values[lo:hi])
                values[lo:hi] = (values[lo:hi] - mean) / std
        return replace(rs, values=values.astype(np.float32), channels=list(self.channels))

    def inverse_transform(self, rs: RecordingSet) -> RecordingSet:
        """Undo :meth:`transform` where the statistics are known (fleet mode, or ids seen)."""
        values = rs.values.astype(np.float64)
        if self.mode == "fleet":
            values = values * self.std + self.mean
        elif self.mode == "recording":
            for i, rec in enumerate(rs.ids):
                if rec not in self.recording_stats:
                    raise KeyError(
                        f"recording {rec!r} was scaled by its own statistics, which were not "
                        "stored; its original scale cannot be restored"
                    )
                lo, hi = rs.offsets[i], rs.offsets[i + 1]
                mean, std = self.recording_stats[rec]
                values[lo:hi] = values[lo:hi] * std + mean
        return replace(rs, values=values.astype(np.float32))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (saved as ``normalizer.json`` in the model bundle)."""
        return {
            "mode": self.mode,
            "channels": list(self.channels),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "recording_stats": {
                rec: {"mean": m.tolist(), "std": s.tolist()}
                for rec, (m, s) in self.recording_stats.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`."""
        return cls(
            mode=d["mode"],
            channels=list(d["channels"]),
            mean=np.asarray(d["mean"], np.float64),
            std=np.asarray(d["std"], np.float64),
            recording_stats={
                rec: (np.asarray(s["mean"], np.float64), np.asarray(s["std"], np.float64))
                for rec, s in d.get("recording_stats", {}).items()
            },
        )


def _guard(std: np.ndarray) -> np.ndarray:
    return np.where(std < MIN_STD, 1.0, std)


def _stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return np.zeros(values.shape[1]), np.ones(values.shape[1])
    return values.mean(axis=0), _guard(values.std(axis=0))
