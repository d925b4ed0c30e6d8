"""Fine-tuning as a Prefect task: the core loop, with MLflow metrics and a progress artifact.

The training loop itself (``sensorlstm.train.fine_tune``) knows nothing of Prefect or MLflow; it
reports through a callback. :class:`TrackingCallback` turns those reports into MLflow metrics
(``train/loss`` per step, ``train/loss``, ``val/loss`` ... per epoch) and a progress bar in the
Prefect UI.

With ``train.nproc_per_node > 1`` the loop runs under torchrun DDP instead
(:func:`fine_tune_with_torchrun`); this process then logs the same per-epoch metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import mlflow
import yaml
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.exceptions import MissingContextError

from sensorlstm.bundle import WEIGHTS_FILE
from sensorlstm.checkpoint import build_fleet_model, load_training_checkpoint
from sensorlstm.config import Config
from sensorlstm.distributed import launch, read_result
from sensorlstm.model import LSTMForecaster
from sensorlstm.train import TrainCallback, TrainResult, fine_tune
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

    ``base_source`` (a ``models:/`` URI, a bundle folder, or a ``.pt``/``.safetensors`` file) is
    resolved to a weights file; :func:`sensorlstm.checkpoint.build_fleet_model` reads the LSTM's
    shape off those weights (an input adapter when the fleet has another channel count) and
    builds the head from ``config.model`` (forecast or a pooling head).

    Returns:
        The model and the names of parameters that came from the pre-trained model, renamed keys
        included (they get the lower learning rate and are frozen during the first epochs).
    """
    weights = resolve_base_weights(base_source)
    model, report = build_fleet_model(
        config.model,
        n_inputs=len(prepared.input_channels),
        n_outputs=len(prepared.target_channels),
        base=weights,
        seed=config.train.seed,
    )
    logger.info("Pre-trained weights from %s: %s", base_source, report)
    return model, report.pretrained_names


def resolve_base_weights(base_source: str) -> Path:
    """The weights file of ``base_source`` (a ``models:/`` URI is downloaded; a bundle folder
    gives its ``model.safetensors``)."""
    source = resolve_model_source(base_source)
    return source / WEIGHTS_FILE if source.is_dir() else source


@dataclass
class TorchrunInputs:
    """What :func:`write_torchrun_inputs` wrote for ``python -m sensorlstm.distributed``."""

    train_dir: Path
    val_dir: Path | None
    config_file: Path
    base: Path
    out_dir: Path
    checkpoint_dir: Path


def write_torchrun_inputs(
    prepared: PreparedData, config: Config, checkpoint_dir: Path
) -> TorchrunInputs:
    """Save the DDP entry point's inputs under ``checkpoint_dir/ddp``.

    The splits are saved as they are (already normalised by ``prepare_splits``). The entry
    point reads every channel of ``--train`` as input and ``model.target_channels`` (else all)
    as targets, so the written config pins ``model.target_channels`` to the prepared targets.

    Raises:
        ValueError: the prepared inputs are not all the split's channels (the entry point
            cannot express another input selection).
    """
    if list(prepared.input_channels) != list(prepared.train.channels):
        raise ValueError(
            f"torchrun training uses every channel as input, but the prepared inputs are "
            f"{prepared.input_channels} of {prepared.train.channels}; set train.nproc_per_node=1"
        )
    folder = checkpoint_dir / "ddp"
    resolved = config.model_copy(deep=True)
    resolved.model.target_channels = list(prepared.target_channels)
    config_file = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))
    val_dir = prepared.val.save(folder / "val").parent if len(prepared.val) else None
    return TorchrunInputs(
        train_dir=prepared.train.save(folder / "train").parent,
        val_dir=val_dir,
        config_file=config_file,
        base=resolve_base_weights(config.model.base_model),
        out_dir=folder / "out",
        checkpoint_dir=checkpoint_dir,
    )


def fine_tune_with_torchrun(
    prepared: PreparedData, config: Config, checkpoint_dir: Path, callback: TrainCallback
) -> tuple[LSTMForecaster, TrainResult]:
    """Fine-tune on ``train.nproc_per_node`` torchrun processes (DDP), report from this one.

    Why a subprocess: DDP needs one process per GPU (or CPU worker), and torchrun starts and
    supervises them; this Prefect task stays the single place that talks to MLflow and Prefect.
    What: :func:`write_torchrun_inputs`, then :func:`sensorlstm.distributed.launch` with
    ``--checkpoint-dir checkpoint_dir`` (a retry resumes from the last epoch, as in-process).
    The workers log nothing, so rank 0's per-epoch history is replayed here through
    ``callback`` (a :class:`TrackingCallback`) into the active MLflow run, once, all epochs
    (a resumed run included: the interrupted attempt logged none). The best weights are loaded
    into a model built as in the in-process path, so adapter and head match the base.
    """
    inputs = write_torchrun_inputs(prepared, config, checkpoint_dir)
    previous = load_training_checkpoint(checkpoint_dir)
    launch(
        train_dir=inputs.train_dir,
        val_dir=inputs.val_dir,
        out_dir=inputs.out_dir,
        nproc_per_node=config.train.nproc_per_node,
        config_files=[inputs.config_file],
        base=inputs.base,
        checkpoint_dir=inputs.checkpoint_dir,
    )
    state, _, summary = read_result(inputs.out_dir)
    # Each rank's step counts and final-weights digest: the evidence that the ranks stayed in
    # step, kept with the run (the checkpoint folder is removed once the run is registered).
    if mlflow.active_run() is not None:
        for rank_file in sorted(inputs.out_dir.glob("rank*.json")):
            mlflow.log_artifact(str(rank_file), artifact_path="ddp")
    model, _ = build_model(str(inputs.base), prepared, config)
    model.load_state_dict(state)
    result = TrainResult(
        history=summary["history"],
        best_epoch=int(summary["best_epoch"]),
        best_val_loss=float(summary["best_val_loss"]),
        stopped_early=bool(summary["stopped_early"]),
        steps=int(summary["steps"]),
        resumed_from_epoch=None if previous is None else int(previous["epoch"]) + 1,
    )
    for row in result.history:
        callback.on_epoch_end(int(row["epoch"]), row)
    return model, result


@task(name="fine-tune", retries=1, retry_delay_seconds=2)
def fine_tune_model(
    prepared: PreparedData, config: Config, run_id: str, checkpoint_dir: str
) -> tuple[LSTMForecaster, TrainResult]:
    """Fine-tune the pre-trained LSTM on the fleet with a masked loss.

    Every epoch writes a checkpoint to ``checkpoint_dir``; a call that finds one there resumes
    after its epoch (a kill mid-epoch repeats that epoch, with identical results). What resumes:

    - a retry of this task (``retries=1``, same process: an exception during training), with the
      same ``run_id`` and ``checkpoint_dir``;
    - a retry of the same *flow run* after the process died (a killed worker, an OOM kill:
      the run is Crashed; the UI's Retry on it runs the same flow run id again):
      ``flows/retrain.py`` keys ``checkpoint_dir`` on the Prefect flow run id. The flow makes
      a new MLflow run for the retry, so that run's per-epoch metrics start at the resumed
      epoch; the earlier ones are in the interrupted run and in ``TrainResult.history``.

    What does not resume: a *new* flow run (a new deployment run, "run again", a new
    ``sensorlstm retrain``) gets a new flow run id and trains from the pre-trained weights.
    Outside a Prefect flow run the folder is keyed on the MLflow run id.

    ``train.nproc_per_node > 1`` trains under torchrun DDP (:func:`fine_tune_with_torchrun`),
    with the same checkpoint folder and per-epoch metrics; no per-step metrics then.
    """
    run_logger = get_run_logger()
    try:
        progress_id = create_progress_artifact(
            progress=0.0, key="fine-tune-progress", description="Fine-tuning epochs done (%)"
        )
    except MissingContextError:
        progress_id = None
    callback = TrackingCallback(total_epochs=config.train.epochs, progress_id=progress_id)
    with mlflow.start_run(run_id=run_id):
        if config.train.nproc_per_node > 1:
            model, result = fine_tune_with_torchrun(
                prepared, config, Path(checkpoint_dir), callback
            )
        else:
            model, pretrained_names = build_model(config.model.base_model, prepared, config)
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
