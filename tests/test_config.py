"""Typed configuration: YAML files merged in order, --set overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sensorlstm.config import Config, load_config, parse_override

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    assert isinstance(load_config([path]), Config)


def test_later_files_and_overrides_win(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text("train: {epochs: 7, lr: 0.1}\nbucket: {batch_size: 4}\n")
    second = tmp_path / "b.yaml"
    second.write_text("train: {epochs: 9}\n")
    config = load_config([first, second], ["bucket.batch_size=12", "model.target_channels=[a, b]"])
    assert config.train.epochs == 9
    assert config.train.lr == 0.1  # merged, not replaced
    assert config.bucket.batch_size == 12
    assert config.model.target_channels == ["a", "b"]


def test_override_values_are_parsed_as_yaml() -> None:
    assert parse_override("train.grad_clip=null") == {"train": {"grad_clip": None}}
    assert parse_override("a.b.c=2.5") == {"a": {"b": {"c": 2.5}}}


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "train.epochs3"])
def test_malformed_override_names_the_expected_form(bad: str) -> None:
    with pytest.raises(ValueError, match=r"section\.key=value"):
        parse_override(bad)


def test_unknown_keys_and_bad_values_name_the_field() -> None:
    with pytest.raises(ValidationError, match="epochz"):
        load_config(None, ["train.epochz=3"])
    with pytest.raises(ValidationError, match="epochs"):
        load_config(None, ["train.epochs=0"])


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config([tmp_path / "nope.yaml"])


def test_flat_view_for_mlflow_params() -> None:
    flat = load_config(None, ["train.epochs=2"]).flat()
    assert flat["train.epochs"] == 2
    assert "tracking.model_name" in flat
