"""One typed configuration for every stage, loaded from YAML and overridable per run.

A run's configuration comes from, in order of precedence (last wins):

1. the defaults declared on the models below,
2. one or more YAML files (``configs/default.yaml``, ``configs/skab.yaml``, ...),
3. ``--set section.key=value`` overrides from the command line or a flow parameter.

The resolved :class:`Config` is logged with every MLflow run and saved in every checkpoint, so a
run can be reproduced from its logged parameters alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


class _Section(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ColumnsConfig(_Section):
    """How the columns of the source files map onto the long-format data contract."""

    recording_id: str = Field("recording_id", description="Column holding the recording id.")
    timestamp: str | None = Field(
        "timestamp", description="Column holding the timestamp; None uses the row order."
    )
    label: str | None = Field("label", description="Optional 0/1 anomaly label column.")
    channels: list[str] | None = Field(
        None, description="Channel columns; None means every numeric column not named above."
    )
    ignore: list[str] = Field(
        default_factory=list, description="Columns to drop before validation (e.g. changepoint)."
    )


class DataConfig(_Section):
    """Where the recordings are and how to read and validate them."""

    path: str | None = Field(
        None, description="File, folder, glob or fsspec URL of the recordings (long format)."
    )
    train_path: str | None = Field(None, description="Explicit training source (no auto split).")
    val_path: str | None = Field(None, description="Explicit validation source.")
    test_path: str | None = Field(None, description="Explicit test source.")
    exclude: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of files to leave out of the source, matched against each "
        "file's path without the URL protocol ('*' crosses folders), e.g. '*/anomaly-free/*'.",
    )
    format: Literal["auto", "parquet", "csv"] = "auto"
    layout: Literal["long", "per_file"] = Field(
        "long",
        description="'long': a recording_id column; 'per_file': one file per recording, "
        "id from the file stem (unless the id column is present).",
    )
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    csv_separator: str = ","
    timestamp_format: str | None = Field(
        None, description="strptime format for string timestamps; None lets pyarrow infer."
    )
    nan_policy: Literal["interpolate", "quarantine", "fail"] = "interpolate"
    max_gap: int = Field(5, ge=0, description="Longest NaN run (steps) that is interpolated.")
    duplicate_policy: Literal["sort_dedup", "quarantine", "fail"] = "sort_dedup"
    min_length: int = Field(
        22, ge=2, description="Recordings shorter than this (timesteps) are quarantined."
    )
    resample: str | None = Field(
        None, description="Resample irregular recordings to this fixed rate (e.g. '1s')."
    )
    parallelism: int = Field(4, ge=1, description="Files read concurrently.")
    task_runner: Literal["thread", "dask", "ray"] = "thread"
    cache: bool = Field(True, description="Skip ingest when inputs and config are unchanged.")
    irregular_tolerance: float = Field(
        0.01,
        ge=0,
        description="Relative deviation of a time step from the median that counts "
        "as irregular sampling.",
    )
    dask_address: str | None = Field(
        None, description="Scheduler of an existing Dask cluster; None starts a local one."
    )
    dask_workers: int = Field(2, ge=1, description="Workers of the local Dask cluster.")


class SplitConfig(_Section):
    """How recordings are divided into train, validation and test."""

    method: Literal["recording", "time"] = Field(
        "recording",
        description="'recording': whole recordings per split, stratified by length; "
        "'time': first part of each recording trains, the rest tests (SKAB protocol).",
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    train_steps: int = Field(400, ge=2, description="Time split: rows per recording to train on.")
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self


class NormalizeConfig(_Section):
    """Per-channel standardisation, fitted on the training split only."""

    mode: Literal["fleet", "recording", "none"] = "fleet"


class BucketConfig(_Section):
    """Length bucketing: how batches are formed."""

    batch_size: int | None = Field(32, ge=1, description="Recordings per batch (count mode).")
    max_timesteps: int | None = Field(
        None, ge=1, description="Padded timesteps per batch (budget mode; overrides batch_size)."
    )
    num_buckets: int = Field(
        1,
        ge=1,
        description="Length buckets, from length quantiles; jitter never crosses a bucket wall, "
        "so 1 (one jittered sort) gives the best efficiency at equal randomness.",
    )
    boundaries: list[int] | None = Field(None, description="Explicit bucket boundaries.")
    shuffle: bool = True
    drop_last: bool = False
    pad_to_multiple_of: int | None = Field(None, ge=1)
    target_overlap: float = Field(
        0.14,
        ge=0.0,
        le=1.0,
        description="Efficiency/randomness knob: expected share of a recording's batch-mates "
        "that are its batch-mates again next epoch (0 shuffles within buckets, 1 sorts).",
    )


class ModelConfig(_Section):
    """The LSTM forecaster and where its pre-trained weights come from."""

    base_model: str = Field(
        "models:/sensor-lstm-base@pretrained",
        description="Pre-trained weights: models:/ URI, .pt state dict or .safetensors file.",
    )
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(2, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_channels: list[str] | None = Field(
        None, description="Channels to forecast (and score); None means all input channels."
    )
    head: Literal["forecast", "mean", "max", "last", "attention"] = Field(
        "forecast",
        description="'forecast': next-step per timestep; others pool to one label per recording.",
    )
    num_classes: int = Field(2, ge=2, description="Classes for a sequence-level head.")


class TrainConfig(_Section):
    """Fine-tuning schedule."""

    epochs: int = Field(5, ge=1)
    lr: float = Field(3e-3, gt=0)
    pretrained_lr_scale: float = Field(
        0.3, gt=0, le=1, description="Learning rate of pre-trained layers relative to new ones."
    )
    freeze_epochs: int = Field(0, ge=0, description="Epochs with pre-trained layers frozen.")
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(20, ge=0)
    scheduler: Literal["cosine", "plateau", "constant"] = "cosine"
    grad_clip: float | None = Field(1.0, gt=0)
    accumulation_steps: int = Field(1, ge=1)
    loss: Literal["mse", "mae", "huber"] = "mse"
    early_stopping_patience: int | None = Field(3, ge=1)
    max_length: int = Field(
        512, ge=2, description="Longer recordings are trained in chunks (truncated BPTT)."
    )
    packing: Literal["auto", "packed", "padded"] = Field(
        "auto", description="'auto' uses padded + mask where it is exact (it is faster)."
    )
    device: str = Field(
        "auto",
        description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'. Under DDP 'auto'/'cuda' mean "
        "cuda:<local rank> (auto: CPU without CUDA) and 'cpu' trains on CPU with gloo.",
    )
    num_workers: int = Field(0, ge=0)
    seed: int = 0
    log_every_steps: int = Field(10, ge=1)
    nproc_per_node: int = Field(
        1, ge=1, description="Processes (one per GPU) for torchrun DDP; 1 trains in-process."
    )


class PretrainConfig(_Section):
    """How the base model is pre-trained on fixed windows of a generated corpus."""

    recordings: int = Field(200, ge=1)
    window: int = Field(20, ge=2, description="Fixed window length the base model sees.")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(3e-3, gt=0)
    seed: int = 1234


class EvaluateConfig(_Section):
    """Anomaly scoring and thresholding."""

    threshold: Literal["quantile", "max_f1", "fixed"] = Field(
        "quantile",
        description="'quantile' of validation scores (label-free); 'max_f1' on validation "
        "labels; 'fixed' uses threshold_value.",
    )
    quantile: float = Field(0.99, gt=0, lt=1)
    threshold_scale: float = Field(1.0, gt=0, description="Multiplier on the quantile.")
    threshold_value: float | None = None
    smoothing: int = Field(1, ge=1, description="Rolling mean window over per-step scores.")
    primary_metric: str = Field(
        "test/f1", description="Metric that decides whether a candidate beats the champion."
    )
    greater_is_better: bool = True
    min_improvement: float = Field(0.0, ge=0)
    error_scale: bool = Field(
        True,
        description="Divide each channel's squared error by its typical (validation) error, "
        "so noisy channels do not dominate the score.",
    )
    bucket_edges: list[int] = Field(
        default_factory=lambda: [0, 100, 300, 1000, 3000],
        min_length=1,
        description="Recording-length bucket edges for per-bucket metrics (last is open-ended).",
    )
    batch_size: int = Field(32, ge=1, description="Recordings per scoring batch.")


class TrackingConfig(_Section):
    """MLflow tracking store, experiment and registry names."""

    tracking_uri: str | None = Field(
        None, description="None: $MLFLOW_TRACKING_URI or sqlite:///<project>/mlflow.db."
    )
    artifact_location: str | None = Field(None, description="None: <project>/mlartifacts.")
    experiment: str = "sensorlstm"
    model_name: str = "sensor-lstm"
    base_model_name: str = "sensor-lstm-base"
    champion_alias: str = "champion"


class GenerateConfig(_Section):
    """The synthetic sample fleet."""

    recordings: int = Field(120, ge=1)
    channels: int = Field(8, ge=1)
    median_length: int = Field(300, ge=2)
    sigma: float = Field(1.0, ge=0)
    min_length: int = Field(30, ge=2)
    max_length: int = Field(4000, ge=2)
    anomaly_rate: float = Field(0.5, ge=0, le=1, description="Share of recordings with anomalies.")
    anomaly_kinds: list[Literal["spike", "level_shift", "drift", "stuck", "noise_burst"]] = Field(
        default_factory=lambda: ["spike", "level_shift", "drift", "stuck", "noise_burst"],
        min_length=1,
        description="Kinds of anomaly injected, drawn uniformly per event.",
    )
    max_events: int = Field(3, ge=1, description="Anomalous events per anomalous recording, 1..N.")
    machines: int = Field(6, ge=1, description="Machine types, each with its own oscillations.")
    noise: float = Field(0.1, ge=0, description="Sensor noise std relative to signal amplitude.")
    seed: int = 0


class Config(_Section):
    """Everything a run needs. Logged with every run; saved in every checkpoint."""

    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    bucket: BucketConfig = Field(default_factory=BucketConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    work_dir: str = Field("data", description="Where ingested data, caches and checkpoints go.")

    @field_validator("work_dir")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("work_dir must not be empty")
        return value

    def flat(self) -> dict[str, Any]:
        """The config as ``{"section.key": value}``, for MLflow parameters."""
        return dict(_flatten(self.model_dump(mode="json")))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(override: str) -> dict[str, Any]:
    """Turn ``"train.epochs=3"`` into ``{"train": {"epochs": 3}}``; the value is parsed as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ValueError(
            f"override {override!r} is not of the form section.key=value "
            "(for example train.epochs=3)"
        )
    value: Any = yaml.safe_load(raw) if raw.strip() else None
    tree: dict[str, Any] = {}
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def load_config(
    paths: Iterable[str | Path] | str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> Config:
    """Load YAML files (merged in order) and apply overrides.

    Args:
        paths: YAML files; None loads ``configs/default.yaml`` when it exists.
        overrides: ``["train.epochs=3", ...]`` or an already nested mapping.

    Raises:
        FileNotFoundError: a config file does not exist (the message names it).
        pydantic.ValidationError: a value is invalid (the message names the field).
    """
    if paths is None:
        paths = [DEFAULT_CONFIG] if DEFAULT_CONFIG.exists() else []
    elif isinstance(paths, str | Path):
        paths = [paths]
    tree: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(
                f"config file {path} must hold a mapping, got {type(loaded).__name__}"
            )
        tree = _deep_merge(tree, loaded)
    if isinstance(overrides, Mapping):
        tree = _deep_merge(tree, overrides)
    else:
        for override in overrides or []:
            tree = _deep_merge(tree, parse_override(override))
    return Config.model_validate(tree)
