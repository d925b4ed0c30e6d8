"""The nightly retrain: fine-tune the pre-trained LSTM on the fleet, promote it if better.

Read top to bottom, the flow is the pipeline:

    ingest -> split + normalise -> fine-tune (masked loss, length buckets) -> evaluate
    -> score the champion on the same test split -> log and register -> promote if better

Run it with ``sensorlstm retrain`` (or ``make run``); trigger it from the Prefect UI once it is
deployed; its parameter is the whole typed :class:`~sensorlstm.config.Config`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.ingest import ingest_flow
from flows.pretrain import ensure_base_model
from sensorlstm.config import Config, load_config
from tasks.champion import promote_if_better
from tasks.data import prepare_splits
from tasks.evaluate import evaluate_candidate, evaluate_champion
from tasks.ingest import log_ingest_to_mlflow
from tasks.registry import register_model
from tasks.tracking import configure, log_metrics, log_params
from tasks.train import fine_tune_model


@flow(name="retrain", log_prints=False)
def retrain_flow(config: Config | None = None) -> dict[str, Any]:
    """Fine-tune the pre-trained LSTM on the fleet and promote it if it beats the champion."""
    config = config or load_config()
    logger = get_run_logger()
    tracking_uri = configure(config.tracking)

    # -- the base model: pre-train it first if the default one is missing ---------------------
    ensure_base_model(config)

    # -- ingest: validate, quarantine, report --------------------------------------------------
    dataset = ingest_flow(config)
    prepared = prepare_splits(dataset["dataset_dir"], config)

    run = mlflow.MlflowClient().create_run(
        mlflow.get_experiment_by_name(config.tracking.experiment).experiment_id,
        run_name="retrain",
        tags={"sensorlstm.flow": "retrain", "sensorlstm.base_model": config.model.base_model},
    )
    run_id = run.info.run_id
    with mlflow.start_run(run_id=run_id):
        log_params(config.flat())
        log_metrics(prepared.sizes())
        log_ingest_to_mlflow(dataset["dataset_dir"])

    # -- fine-tune with the masked loss --------------------------------------------------------
    # Keyed on the Prefect flow run (stable when that run is retried), not on the MLflow run
    # created above, so a retried run resumes from its checkpoint; see tasks/train.py.
    checkpoint_dir = Path(config.work_dir) / "checkpoints" / (flow_run.id or run_id)
    model, training = fine_tune_model(prepared, config, run_id, str(checkpoint_dir))

    # -- evaluate the candidate, then the champion on the same test split ----------------------
    candidate = evaluate_candidate(model, training, prepared, config, run_id)
    champion = evaluate_champion(prepared, config, run_id)

    # -- register, then promote only if it wins ------------------------------------------------
    version = register_model(candidate.bundle_dir, prepared.input_channels, config, run_id)
    decision = promote_if_better(
        config, version, candidate.metrics, champion.metrics, champion.version
    )

    # -- the run is registered: its epoch checkpoints have nothing left to resume ---------------
    shutil.rmtree(checkpoint_dir, ignore_errors=True)

    summary = {
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "experiment": config.tracking.experiment,
        "model_name": config.tracking.model_name,
        "model_version": version,
        "promoted": decision["promote"],
        "reason": decision["reason"],
        "champion_version": decision["champion_version"],
        "metrics": candidate.headline(config.evaluate.primary_metric),
        "data": {k: dataset[k] for k in ("rows_in", "rows_used", "rows_quarantined")},
    }
    logger.info(
        "Run %s: %s v%s %s (%s)",
        run_id,
        config.tracking.model_name,
        version,
        "promoted to champion" if decision["promote"] else "not promoted",
        decision["reason"],
    )
    return summary
