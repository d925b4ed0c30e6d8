"""Score recordings with a registered model: per-timestep anomaly scores and alarms.

This is the batch counterpart of ``mlflow.pyfunc.load_model("models:/sensor-lstm@champion")``:
it ingests the recordings with the same validation as training (quarantining what cannot be
scored), scores them with the bundle's own normaliser and threshold, and writes one row per
timestep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger

from sensorlstm.bundle import load_bundle
from sensorlstm.config import Config, load_config
from sensorlstm.ingest import ingest
from sensorlstm.metrics import classification_metrics
from tasks.registry import resolve_model_source
from tasks.tracking import configure


@flow(name="score")
def score_flow(
    config: Config | None = None, model_uri: str | None = None, out: str = "scores.parquet"
) -> dict[str, Any]:
    """Score ``config.data.path`` with ``model_uri`` (default: the champion) into ``out``."""
    config = config or load_config()
    logger = get_run_logger()
    configure(config.tracking)
    model_uri = (
        model_uri or f"models:/{config.tracking.model_name}@{config.tracking.champion_alias}"
    )
    bundle = load_bundle(resolve_model_source(model_uri))

    if not config.data.path:
        raise ValueError("nothing to score: set data.path (or --data) to the recordings")
    result = ingest(config.data.path, config.data)
    recordings = result.recordings
    scores = bundle.score(recordings)

    flat = np.concatenate(scores) if scores else np.zeros(0)
    frame = pd.DataFrame(
        {
            "recording_id": np.repeat(recordings.ids, recordings.lengths),
            "step": np.concatenate([np.arange(n) for n in recordings.lengths])
            if len(recordings)
            else [],
            "score": flat,
            "anomaly": flat > bundle.threshold,
        }
    )
    if recordings.timestamps is not None:
        frame["timestamp"] = recordings.timestamps
    if recordings.labels is not None:
        frame["label"] = recordings.labels
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)

    summary: dict[str, Any] = {
        "model": model_uri,
        "out": str(Path(out).resolve()),
        "recordings": len(recordings),
        "rows": len(frame),
        "anomalous_rows": int(frame["anomaly"].sum()),
        "threshold": bundle.threshold,
        "recordings_quarantined": result.report.recordings_quarantined,
    }
    if recordings.labels is not None:
        summary["metrics"] = classification_metrics(
            frame["label"].to_numpy(), frame["anomaly"].to_numpy()
        )
    logger.info(
        "Scored %d recordings (%d rows) with %s: %d alarms",
        len(recordings),
        len(frame),
        model_uri,
        summary["anomalous_rows"],
    )
    return summary
