"""The served model: an MLflow pyfunc around a sensorlstm model bundle.

Downstream code needs only MLflow and this project's core installed::

    model = mlflow.pyfunc.load_model("models:/sensor-lstm@champion")
    scored = model.predict(frame)   # long format in, one score per row out

The pyfunc keeps no weights of its own: it loads the bundle folder logged beside it (safetensors
weights, normaliser, channels, threshold), so the served model and the evaluated one are the same
files.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from sensorlstm.config import PROJECT_ROOT

BUNDLE_ARTIFACT = "bundle"
CODE_PATHS = [str(PROJECT_ROOT / "sensorlstm"), str(PROJECT_ROOT / "tasks")]


class SensorLSTMModel(mlflow.pyfunc.PythonModel):
    """Scores long-format sensor frames: per-row anomaly score and alarm flag."""

    def load_context(self, context: Any) -> None:
        from sensorlstm.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """Columns ``recording_id``, ``timestamp`` (optional) and the channels -> scores."""
        return self.bundle.score_frame(model_input)


def signature(input_channels: list[str]) -> ModelSignature:
    """Input: ``recording_id`` string, optional ``timestamp``, one double per channel."""
    inputs = Schema(
        [
            ColSpec("string", "recording_id"),
            ColSpec("datetime", "timestamp", required=False),
            *[ColSpec("double", name) for name in input_channels],
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "recording_id"),
            ColSpec("double", "score"),
            ColSpec("boolean", "anomaly"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_bundle_model(
    bundle_dir: str | Path,
    input_channels: list[str],
    *,
    registered_model_name: str | None = None,
) -> Any:
    """Log the bundle as a pyfunc model in the active run; register it when a name is given.

    Returns MLflow's ``ModelInfo`` (``registered_model_version`` is set when registered).
    """
    import torch

    with warnings.catch_warnings():
        # The signature is given explicitly; an input example would only repeat it.
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        return _log_pyfunc(bundle_dir, input_channels, registered_model_name, torch.__version__)


def _log_pyfunc(
    bundle_dir: str | Path,
    input_channels: list[str],
    registered_model_name: str | None,
    torch_version: str,
) -> Any:
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=SensorLSTMModel(),
        artifacts={BUNDLE_ARTIFACT: str(Path(bundle_dir).resolve())},
        code_paths=CODE_PATHS,
        signature=signature(input_channels),
        registered_model_name=registered_model_name,
        pip_requirements=[
            f"torch=={torch_version.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            f"pandas=={pd.__version__}",
            "numpy",
            "pyarrow",
            "safetensors",
        ],
    )
