"""Pre-train the base LSTM forecaster the way a typical pre-trained model was trained.

The base model sees fixed windows of ``pretrain.window`` timesteps cut from a generated corpus
(next-step prediction, 2 layers). It is registered as ``sensor-lstm-base`` with alias
``pretrained``, which is what the retrain flow fine-tunes from by default. A real deployment
replaces it with its own pre-trained checkpoint (``model.base_model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task

from sensorlstm.bundle import Bundle, save_bundle
from sensorlstm.config import Config, DataConfig, GenerateConfig, load_config
from sensorlstm.ingest import ingest
from sensorlstm.normalize import Normalizer
from sensorlstm.recording import RecordingSet
from sensorlstm.synthetic import generate_fleet, write_fleet
from sensorlstm.train import pretrain
from tasks.registry import aliased_version, set_alias
from tasks.serving import log_bundle_model
from tasks.tracking import configure, log_metrics, log_params

PRETRAINED_ALIAS = "pretrained"


def default_base_uri(config: Config) -> str:
    """The URI the retrain flow uses when the config names no base model of its own."""
    return f"models:/{config.tracking.base_model_name}@{PRETRAINED_ALIAS}"


def ensure_base_model(config: Config) -> bool:
    """Pre-train the default base model when it is missing; True if it had to.

    A base model the user named (a file or another URI) is never replaced: if it is missing,
    loading it fails later with a message naming it.
    """
    if config.model.base_model != default_base_uri(config):
        return False
    if aliased_version(config.tracking.base_model_name, PRETRAINED_ALIAS) is not None:
        return False
    get_run_logger().warning(
        "Base model %s is not in the registry yet: pre-training it first (once)",
        config.model.base_model,
    )
    pretrain_flow(config)
    return True


@task(name="generate-corpus")
def generate_corpus(config: Config) -> RecordingSet:
    """Write a synthetic pre-training corpus as Parquet and ingest it like any fleet."""
    corpus_cfg = GenerateConfig(
        recordings=config.pretrain.recordings,
        channels=config.generate.channels,
        median_length=config.generate.median_length,
        seed=config.pretrain.seed,
    )
    corpus_dir = Path(config.work_dir) / "pretrain-corpus"
    write_fleet(generate_fleet(corpus_cfg), corpus_dir)
    # The corpus is written in the project's own long format, whatever the fleet's data
    # section says about its files (CSV, one file per recording, other column names).
    corpus_data = DataConfig(path=str(corpus_dir), min_length=config.data.min_length)
    return ingest(str(corpus_dir), corpus_data).recordings


@task(name="pretrain-base-model")
def train_base_model(corpus: RecordingSet, config: Config) -> Bundle:
    """Train the base forecaster on fixed windows of the normalised corpus."""
    normalizer = Normalizer.fit(corpus, "fleet")
    model = pretrain(normalizer.transform(corpus), cfg=config.pretrain, model_cfg=config.model)
    return Bundle(
        model=model,
        normalizer=normalizer,
        input_channels=list(corpus.channels),
        target_channels=list(corpus.channels),
        config=config.model_dump(mode="json"),
    )


@flow(name="pretrain")
def pretrain_flow(config: Config | None = None) -> dict[str, Any]:
    """Pre-train the base LSTM and register it as ``<base_model_name>@pretrained``."""
    config = config or load_config()
    logger = get_run_logger()
    configure(config.tracking)
    corpus = generate_corpus(config)
    bundle = train_base_model(corpus, config)

    name = config.tracking.base_model_name
    with mlflow.start_run(run_name="pretrain", tags={"sensorlstm.flow": "pretrain"}) as run:
        log_params({f"pretrain.{k}": v for k, v in config.pretrain.model_dump().items()})
        log_metrics({"data/pretrain_recordings": len(corpus), "data/pretrain_rows": corpus.n_rows})
        bundle_dir = save_bundle(bundle, Path(config.work_dir) / "bundles" / run.info.run_id)
        info = log_bundle_model(bundle_dir, bundle.input_channels, registered_model_name=name)
    version = str(info.registered_model_version)
    set_alias(name, PRETRAINED_ALIAS, version)
    logger.info("Registered base model %s version %s as @%s", name, version, PRETRAINED_ALIAS)
    return {"run_id": run.info.run_id, "model_name": name, "model_version": version}
