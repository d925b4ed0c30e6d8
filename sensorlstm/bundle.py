"""The model bundle: everything needed to score new recordings, in one folder.

A trained forecaster is useless without the normalisation it was trained with, the channel order
it expects and the threshold that turns its prediction errors into alarms. The bundle keeps them
together so that serving, the champion comparison and the next fine-tune all load the same thing::

    bundle/
      model.safetensors   weights (state dict)
      model.json          constructor arguments, input and target channel names
      normalizer.json     per-channel statistics fitted on the training split
      scoring.json        threshold and scoring settings (smoothing, per-channel error scale)
      config.json         the resolved run configuration

The MLflow pyfunc in ``tasks/serving.py`` is a thin shell around :func:`load_bundle`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from sensorlstm.model import LSTMForecaster
from sensorlstm.normalize import Normalizer
from sensorlstm.recording import RecordingSet
from sensorlstm.scoring import score_recordings

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"


@dataclass
class Bundle:
    """A trained model with its normaliser, channel layout and alarm threshold."""

    model: LSTMForecaster
    normalizer: Normalizer
    input_channels: list[str]
    target_channels: list[str]
    threshold: float = float("nan")
    smoothing: int = 1
    error_scale: list[float] | None = None
    max_length: int | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def score(
        self, recordings: RecordingSet, device: torch.device | str = "cpu"
    ) -> list[np.ndarray]:
        """Per-timestep anomaly scores of raw (not yet normalised) recordings."""
        normalized = self.normalizer.transform(recordings)
        self.model.eval()
        return score_recordings(
            self.model,
            normalized,
            input_channels=recordings.select_channels(self.input_channels),
            target_channels=recordings.select_channels(self.target_channels),
            device=torch.device(device),
            max_length=self.max_length,
            smoothing=self.smoothing,
            error_scale=None if self.error_scale is None else np.asarray(self.error_scale),
        )

    def score_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Score a long-format frame (``recording_id``, ``timestamp``, channels).

        Returns one row per input row, in the input's order, with ``score`` and ``anomaly``
        (score above the bundle's threshold). Rows are ordered by timestamp within each recording
        before scoring, because the model reads them in time order.
        """
        missing = [c for c in ("recording_id", *self.input_channels) if c not in frame.columns]
        if missing:
            raise KeyError(
                f"input frame lacks columns {missing}; the model expects recording_id, "
                f"timestamp and channels {self.input_channels}"
            )
        order_cols = ["recording_id"] + (["timestamp"] if "timestamp" in frame.columns else [])
        ordered = frame.reset_index(drop=True).sort_values(order_cols, kind="stable")
        ids = ordered["recording_id"].astype(str).to_numpy()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        offsets = np.r_[starts, len(ids)].astype(np.int64)
        recordings = RecordingSet(
            ids=[str(ids[s]) for s in starts],
            offsets=offsets,
            values=ordered[self.input_channels].to_numpy(dtype=np.float32),
            channels=list(self.input_channels),
        )
        scores = np.concatenate(self.score(recordings)) if len(recordings) else np.zeros(0)
        result = pd.DataFrame(
            {"recording_id": ids, "score": scores, "anomaly": scores > self.threshold},
            index=ordered.index,
        )
        if "timestamp" in ordered.columns:
            result.insert(1, "timestamp", ordered["timestamp"].to_numpy())
        return result.sort_index()


def save_bundle(bundle: Bundle, directory: str | Path) -> Path:
    """Write ``bundle`` to ``directory`` (created) and return the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    save_file(state, directory / WEIGHTS_FILE)
    model_meta = {
        "hparams": bundle.model.hparams,
        "input_channels": bundle.input_channels,
        "target_channels": bundle.target_channels,
    }
    scoring = {
        "threshold": bundle.threshold,
        "smoothing": bundle.smoothing,
        "error_scale": bundle.error_scale,
        "max_length": bundle.max_length,
    }
    _write_json(directory / "model.json", model_meta)
    _write_json(directory / "normalizer.json", bundle.normalizer.to_dict())
    _write_json(directory / "scoring.json", scoring)
    _write_json(directory / "config.json", bundle.config)
    return directory


def load_bundle(directory: str | Path) -> Bundle:
    """Read a bundle written by :func:`save_bundle`; weights are loaded without unpickling."""
    directory = Path(directory)
    if not (directory / "model.json").exists():
        raise FileNotFoundError(
            f"{directory} is not a sensorlstm model bundle (no model.json); expected the folder "
            "written by save_bundle or the 'bundle' artifact of a sensorlstm MLflow model"
        )
    model_meta = _read_json(directory / "model.json")
    scoring = _read_json(directory / "scoring.json")
    model = LSTMForecaster(**model_meta["hparams"])
    model.load_state_dict(load_file(directory / WEIGHTS_FILE))
    model.eval()
    config_path = directory / "config.json"
    return Bundle(
        model=model,
        normalizer=Normalizer.from_dict(_read_json(directory / "normalizer.json")),
        input_channels=list(model_meta["input_channels"]),
        target_channels=list(model_meta["target_channels"]),
        threshold=float(scoring.get("threshold", float("nan"))),
        smoothing=int(scoring.get("smoothing", 1)),
        error_scale=scoring.get("error_scale"),
        max_length=scoring.get("max_length"),
        config=_read_json(config_path) if config_path.exists() else {},
    )


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=float))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())
