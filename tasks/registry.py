"""The MLflow model registry: resolve model URIs, register versions, move the champion alias."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task

from sensorlstm.config import Config
from tasks.serving import BUNDLE_ARTIFACT, log_bundle_model

logger = logging.getLogger(__name__)


def resolve_model_source(source: str) -> Path:
    """A local path for ``source``: a bundle folder, or a ``.pt``/``.safetensors`` weights file.

    ``models:/name@alias``, ``models:/name/3`` and ``runs:/...`` URIs are downloaded from the
    tracking store; local paths are returned as they are after checking they exist.
    """
    if source.startswith(("models:/", "runs:/")) or "://" in source:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
        except MlflowException as error:
            raise LookupError(
                f"model {source!r} could not be loaded from MLflow: {error}"
            ) from error
        return logged_bundle_dir(local)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"base model {source!r} does not exist; give a models:/ URI, a bundle folder, "
            "or a .pt/.safetensors weights file"
        )
    return path


def logged_bundle_dir(model_dir: Path) -> Path:
    """The bundle folder inside a downloaded pyfunc model, or ``model_dir`` if it holds none.

    MLflow stores a pyfunc artifact under a folder of its own choosing (the source folder's
    name), so the place is read from the ``MLmodel`` file rather than guessed.
    """
    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_file():
        import yaml

        meta = yaml.safe_load(mlmodel.read_text()) or {}
        artifacts = meta.get("flavors", {}).get("python_function", {}).get("artifacts", {})
        entry = artifacts.get(BUNDLE_ARTIFACT)
        if entry and (model_dir / entry["path"]).is_dir():
            return model_dir / entry["path"]
    return model_dir


def aliased_version(name: str, alias: str) -> ModelVersion | None:
    """The version of ``name`` carrying ``alias``, or None (no model, or no alias yet)."""
    client = MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str | int) -> None:
    """Point ``alias`` of registered model ``name`` at ``version``."""
    MlflowClient().set_registered_model_alias(name, alias, str(version))
    logger.info("Alias %r of %r now points to version %s", alias, name, version)


@task(name="register-model")
def register_model(bundle_dir: str, input_channels: list[str], config: Config, run_id: str) -> str:
    """Log the bundle as an MLflow pyfunc in ``run_id`` and register a new model version."""
    with mlflow.start_run(run_id=run_id):
        info = log_bundle_model(
            bundle_dir, input_channels, registered_model_name=config.tracking.model_name
        )
    version = str(info.registered_model_version)
    get_run_logger().info("Registered %s version %s", config.tracking.model_name, version)
    return version
