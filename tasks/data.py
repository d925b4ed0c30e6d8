"""Prepare ingested recordings for training: split by recording, fit normalisation on train."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task

from sensorlstm.config import Config
from sensorlstm.normalize import Normalizer
from sensorlstm.recording import RecordingSet
from sensorlstm.split import load_splits


@dataclass
class PreparedData:
    """Splits ready for the model: normalised copies, the raw test split, channel layout."""

    train: RecordingSet
    val: RecordingSet
    test: RecordingSet
    raw_test: RecordingSet
    normalizer: Normalizer
    input_channels: list[str]
    target_channels: list[str]

    def sizes(self) -> dict[str, int]:
        """Recordings and timesteps per split, for logging."""
        sizes: dict[str, int] = {}
        for name in ("train", "val", "test"):
            split: RecordingSet = getattr(self, name)
            sizes[f"data/{name}_recordings"] = len(split)
            sizes[f"data/{name}_timesteps"] = split.n_rows
        return sizes


def prepare(dataset_dir: str | Path, config: Config) -> PreparedData:
    """Split the ingested data set and normalise every split with train-only statistics."""
    splits = load_splits(dataset_dir, config)
    if len(splits.train) == 0:
        raise ValueError(
            f"the training split of {dataset_dir} is empty; check split.* in the config "
            "and the ingest report for quarantined recordings"
        )
    channels = list(splits.train.channels)
    targets = list(config.model.target_channels or channels)
    unknown = [c for c in targets if c not in channels]
    if unknown:
        raise ValueError(
            f"model.target_channels {unknown} are not channels of the data; "
            f"available channels: {channels}"
        )
    normalizer = Normalizer.fit(splits.train, config.normalize.mode)
    return PreparedData(
        train=normalizer.transform(splits.train),
        val=normalizer.transform(splits.val),
        test=normalizer.transform(splits.test),
        raw_test=splits.test,
        normalizer=normalizer,
        input_channels=channels,
        target_channels=targets,
    )


@task(name="prepare-splits")
def prepare_splits(dataset_dir: str, config: Config) -> PreparedData:
    """Split by recording and normalise with statistics from the training split only."""
    prepared = prepare(dataset_dir, config)
    get_run_logger().info(
        "Splits: %d train / %d val / %d test recordings; %d input, %d target channels",
        len(prepared.train),
        len(prepared.val),
        len(prepared.test),
        len(prepared.input_channels),
        len(prepared.target_channels),
    )
    return prepared
