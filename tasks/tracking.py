"""Where MLflow tracks: the embedded SQLite default, or a server the user points us at.

MLflow's own default store depends on the current directory. Pipelines started from a scheduler
run in other directories, so every URI is resolved to an absolute one here, once, and the same
store is used for runs and for the model registry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from sensorlstm.config import PROJECT_ROOT, TrackingConfig

logger = logging.getLogger(__name__)

ARTIFACT_ENV = "SENSORLSTM_ARTIFACT_LOCATION"


def tracking_uri(cfg: TrackingConfig) -> str:
    """The tracking URI: config, then ``$MLFLOW_TRACKING_URI``, then ``<project>/mlflow.db``."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{(PROJECT_ROOT / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative SQLite path would follow the current directory; pin it to an absolute one.
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def artifact_location(cfg: TrackingConfig) -> str | None:
    """Where new experiments keep artifacts; None lets a tracking server decide."""
    location = cfg.artifact_location or os.environ.get(ARTIFACT_ENV)
    if location:
        return location if "://" in location else Path(location).resolve().as_uri()
    if tracking_uri(cfg).startswith("sqlite:"):
        return (PROJECT_ROOT / "mlartifacts").resolve().as_uri()
    return None


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow (runs and registry) at the configured store; create the experiment."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri)
    if client.get_experiment_by_name(cfg.experiment) is None:
        client.create_experiment(cfg.experiment, artifact_location=artifact_location(cfg))
        logger.info("Created MLflow experiment %r in %s", cfg.experiment, uri)
    mlflow.set_experiment(cfg.experiment)
    return uri


def log_params(params: Mapping[str, Any]) -> None:
    """Log parameters in chunks (MLflow caps a batch at 100) with values cut to MLflow's limit."""
    items = [(k, "None" if v is None else str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start : start + 100]))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite numeric metrics; MLflow metric names may not contain some characters."""
    clean = {
        _metric_name(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and v == v and abs(float(v)) != float("inf")
    }
    if clean:
        mlflow.log_metrics(clean, step=step)


def _metric_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)
