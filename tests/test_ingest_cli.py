"""``sensorlstm ingest`` as users run it: a subprocess, ``--json``, MLflow, optional ``--data``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml
from data_corpus import clean_files, small_mixed_fleet

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = {
    "rows_in",
    "rows_used",
    "rows_quarantined",
    "recordings_used",
    "recordings_quarantined",
    "reasons",
}


def _cli(*args: str, api_url: str | None = None) -> tuple[int, dict, str]:
    """Run ``python -m flows.cli ingest ... --json``; returns the code, last JSON line, stderr."""
    env = dict(os.environ)
    if api_url:
        env["PREFECT_API_URL"] = api_url  # the test server: no temporary server per call
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else {}, done.stderr


def _api_url() -> str:
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url)


def test_ingest_json_prints_the_summary_and_logs_an_ingest_run(
    prefect_server, mlflow_store, tmp_path: Path
) -> None:
    source = small_mixed_fleet(tmp_path / "fleet")

    code, summary, stderr = _cli(
        "--data",
        str(source),
        "--out",
        str(tmp_path / "out"),
        "--set",
        "data.min_length=5",
        api_url=_api_url(),
    )

    assert code == 0, stderr
    assert set(summary) >= SUMMARY_KEYS
    assert summary["rows_in"] == 3 * 40 + 2
    assert summary["rows_in"] == summary["rows_used"] + summary["rows_quarantined"]
    assert summary["recordings_used"] == 3 and summary["recordings_quarantined"] == 2
    assert summary["reasons"] == {"too_short": 1, "unreadable_file": 1}
    runs = mlflow.search_runs(experiment_names=["sensorlstm"], output_format="list")
    assert [run.info.run_name for run in runs] == ["ingest"]
    assert runs[0].info.run_id == summary["mlflow_run_id"]
    assert runs[0].data.metrics["data/rows_in"] == summary["rows_in"]


def test_data_is_optional_when_the_config_names_the_splits(
    prefect_server, mlflow_store, tmp_path: Path
) -> None:
    for name in ("train", "test"):
        (tmp_path / name).mkdir()
        clean_files(tmp_path / name)
    config = tmp_path / "splits.yaml"
    data = {"train_path": str(tmp_path / "train"), "test_path": str(tmp_path / "test")}
    config.write_text(yaml.safe_dump({"data": {**data, "min_length": 5}}))

    code, summary, stderr = _cli(
        "--config", str(config), "--out", str(tmp_path / "out"), api_url=_api_url()
    )

    assert code == 0, stderr
    assert set(summary["splits"]) == {"train", "test"} and summary["recordings_used"] == 4


def test_no_source_at_all_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text(yaml.safe_dump({"data": {"min_length": 5}}))

    code, summary, _ = _cli("--config", str(config), "--out", str(tmp_path / "out"))

    assert code == 2
    assert summary["type"] == "ValueError"
    assert "--data PATH" in summary["error"] and "data.train_path" in summary["error"]
    assert not (tmp_path / "out").exists()
