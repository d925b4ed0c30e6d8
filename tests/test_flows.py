"""End to end: the real Prefect flows against a real MLflow store and registry, on real Parquet.

These tests train tiny models for a couple of epochs; they are marked slow and run in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sensorlstm.config import Config, load_config
from sensorlstm.synthetic import generate_fleet, write_fleet

ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "generate.recordings=24",
    "generate.median_length=80",
    "pretrain.recordings=16",
    "pretrain.epochs=1",
    "model.hidden_size=16",
    "train.epochs=2",
    "train.warmup_steps=2",
    "bucket.batch_size=8",
    "split.val_fraction=0.2",
    "split.test_fraction=0.25",
]


def tiny_config(tmp_path: Path, *extra: str) -> Config:
    data_dir = tmp_path / "fleet"
    overrides = [*TINY, f"work_dir={tmp_path / 'work'}", f"data.path={data_dir}", *extra]
    config = load_config(None, overrides)
    if not data_dir.exists():
        write_fleet(generate_fleet(config.generate), data_dir)
    return config


@pytest.mark.slow
def test_retrain_flow_registers_promotes_and_serves(
    tmp_path: Path, mlflow_store: str, prefect_server: None
) -> None:
    from flows.retrain import retrain_flow

    config = tiny_config(tmp_path)
    first = retrain_flow(config)

    # The default base model was missing, so it was pre-trained and registered first.
    client = MlflowClient(mlflow_store)
    base = client.get_model_version_by_alias("sensor-lstm-base", "pretrained")
    assert str(base.version) == "1"

    # The first candidate has no champion to beat: it becomes the champion.
    assert first["promoted"] is True, first
    assert first["model_version"] == "1"
    champion = client.get_model_version_by_alias("sensor-lstm", "champion")
    assert str(champion.version) == "1"

    # A finished run leaves no epoch checkpoints behind (nothing is left to resume).
    assert not list((tmp_path / "work" / "checkpoints").glob("*"))

    # The run carries parameters, metrics, plots, the data report and the model.
    run = client.get_run(first["run_id"])
    assert run.data.params["train.epochs"] == "2"
    for metric in ("test/f1", "test/precision", "test/recall", "val/loss", "data/rows_in"):
        assert metric in run.data.metrics, metric
    artifacts = {a.path for a in client.list_artifacts(first["run_id"], "plots")}
    assert "plots/loss_curves.png" in artifacts

    # A second candidate is compared against the champion on the same test split.
    second = retrain_flow(config)
    assert second["model_version"] == "2"
    assert second["champion_version"] == "1"
    alias_now = str(client.get_model_version_by_alias("sensor-lstm", "champion").version)
    assert alias_now == ("2" if second["promoted"] else "1")
    assert "test/f1" in second["reason"] or "f1" in second["reason"]

    # Downstream code loads the champion in a fresh process with MLflow alone.
    frame = pd.read_parquet(next((tmp_path / "fleet").glob("*.parquet")))
    sample = frame[frame["recording_id"] == frame["recording_id"].iloc[0]]
    sample_path = tmp_path / "sample.parquet"
    sample.to_parquet(sample_path)
    code = (
        "import mlflow, pandas as pd, sys\n"
        f"mlflow.set_tracking_uri({mlflow_store!r})\n"
        "model = mlflow.pyfunc.load_model('models:/sensor-lstm@champion')\n"
        f"out = model.predict(pd.read_parquet({str(sample_path)!r}))\n"
        "print(len(out), float(out['score'].mean()), int(out['anomaly'].sum()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows, mean_score, _ = result.stdout.split()
    assert int(rows) == len(sample)
    assert np.isfinite(float(mean_score))


@pytest.mark.slow
def test_cli_retrain_on_the_embedded_defaults_prints_json(tmp_path: Path) -> None:
    """What `make run` does: the console script on Prefect's ephemeral API and SQLite MLflow."""
    data_dir = tmp_path / "fleet"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "SENSORLSTM_ARTIFACT_LOCATION": str(tmp_path / "mlartifacts"),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
    }
    env.pop("PREFECT_API_URL", None)
    common = [f"--set={o}" for o in TINY] + [f"--set=work_dir={tmp_path / 'work'}"]
    cli = [sys.executable, "-m", "flows.cli"]

    generated = subprocess.run(
        [*cli, "generate", "--out", str(data_dir), "--json", *common],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert json.loads(generated.stdout.strip().splitlines()[-1])["recordings"] == 24

    retrained = subprocess.run(
        [*cli, "retrain", "--data", str(data_dir), "--json", *common],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert retrained.returncode == 0, retrained.stderr[-5000:]
    summary = json.loads(retrained.stdout.strip().splitlines()[-1])
    assert summary["promoted"] is True
    assert summary["model_version"] == "1"
    assert "test/f1" in summary["metrics"]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    version = MlflowClient().get_model_version_by_alias("sensor-lstm", "champion")
    assert str(version.version) == "1"


def test_cli_reports_bad_config_clearly(tmp_path: Path) -> None:
    from flows.cli import main

    code = main(["generate", "--out", str(tmp_path), "--set", "generate.recordingz=3", "--json"])
    assert code == 2


def test_pretrain_corpus_is_read_in_the_projects_format_whatever_the_fleet_uses(
    tmp_path: Path,
) -> None:
    """A fleet of ';'-separated CSVs (SKAB-like config) must not change how the corpus is read."""
    from flows.pretrain import generate_corpus

    config = load_config(
        [ROOT / "configs" / "skab.yaml"],
        ["pretrain.recordings=6", "generate.median_length=60", f"work_dir={tmp_path}"],
    )
    corpus = generate_corpus.fn(config)

    assert len(corpus) == 6
    assert corpus.n_channels == config.generate.channels
