"""Fine-tuning as a Prefect task: the core loop, with MLflow metrics and a progress artifact.

The training loop itself (``sensorlstm.train.fine_tune``) knows nothing of Prefect or MLflow; it
reports through a callback. :class:`TrackingCallback` turns those reports into MLflow metrics
(``train/loss`` per step, ``train/loss``, ``val/loss`` ... per epoch) and a progress bar in the
Prefect UI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import mlflow
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.exceptions import MissingContextError

from sensorlstm.checkpoint import load_pretrained
from sensorlstm.config import Config
from sensorlstm.model import LSTMForecaster
from sensorlstm.train import TrainResult, fine_tune
from tasks.data import PreparedData
from tasks.registry import resolve_model_source
from tasks.tracking import log_metrics

logger = logging.getLogger(__name__)


@dataclass
class TrackingCallback:
    """Forwards training progress to MLflow (metrics) and Prefect (a progress artifact)."""

    total_epochs: int
    progress_id: UUID | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        log_metrics({f"step/{k.split('/')[-1]}": v for k, v in metrics.items()}, step=step)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.history.append(dict(metrics))
        log_metrics(metrics, step=epoch)
        if self.progress_id is not None:
            done = 100.0 * (epoch + 1) / self.total_epochs
            update_progress_artifact(self.progress_id, min(done, 100.0))


def build_model(
    base_source: str, prepared: PreparedData, config: Config
) -> tuple[LSTMForecaster, set[str]]:
    """The fleet's model, initialised from the pre-trained weights where shapes allow.

    Returns the model and the names of parameters that came from the pre-trained model (they
    get the lower learning rate and are the ones frozen during the first epochs).
    """
    from sensorlstm.bundle import WEIGHTS_FILE

    source = resolve_model_source(base_source)
    weights = source / WEIGHTS_FILE if source.is_dir() else source
    base_hparams: dict[str, Any] = {}
    if source.is_dir() and (source / "model.json").exists():
        import json

        base_hparams = json.loads((source / "model.json").read_text())["hparams"]
    model = LSTMForecaster(
        n_inputs=len(prepared.input_channels),
        n_outputs=len(prepared.target_channels),
        hidden_size=base_hparams.get("hidden_size", config.model.hidden_size),
        num_layers=base_hparams.get("num_layers", config.model.num_layers),
        dropout=config.model.dropout,
        base_inputs=base_hparams.get("n_inputs"),
    )
    report = load_pretrained(model, weights)
    logger.info("Pre-trained weights from %s: %s", base_source, report)
    return model, set(report.reused)


@task(name="fine-tune", retries=1, retry_delay_seconds=2)
def fine_tune_model(
    prepared: PreparedData, config: Config, run_id: str, checkpoint_dir: str
) -> tuple[LSTMForecaster, TrainResult]:
    """Fine-tune the pre-trained LSTM on the fleet with a masked loss.

    A retry of this task resumes from the last epoch checkpoint in ``checkpoint_dir``.
    """
    run_logger = get_run_logger()
    model, pretrained_names = build_model(config.model.base_model, prepared, config)
    try:
        progress_id = create_progress_artifact(
            progress=0.0, key="fine-tune-progress", description="Fine-tuning epochs done (%)"
        )
    except MissingContextError:
        progress_id = None
    callback = TrackingCallback(total_epochs=config.train.epochs, progress_id=progress_id)
    with mlflow.start_run(run_id=run_id):
        result = fine_tune(
            model,
            prepared.train,
            prepared.val,
            input_channels=prepared.train.select_channels(prepared.input_channels),
            target_channels=prepared.train.select_channels(prepared.target_channels),
            train_cfg=config.train,
            bucket_cfg=config.bucket,
            checkpoint_dir=Path(checkpoint_dir),
            callback=callback,
            pretrained_names=pretrained_names,
        )
        log_metrics(
            {"train/best_epoch": result.best_epoch, "train/best_val_loss": result.best_val_loss}
        )
    run_logger.info(
        "Fine-tuned %d epochs (best %d, val loss %.4f)%s",
        len(result.history),
        result.best_epoch,
        result.best_val_loss,
        ", stopped early" if result.stopped_early else "",
    )
    return model, result
