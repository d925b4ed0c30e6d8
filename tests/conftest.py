"""Shared fixtures: a real Prefect test server and a real MLflow SQLite store per test.

Environment variables are set before Prefect or MLflow is imported anywhere, so every test
session gets its own ``PREFECT_HOME`` (no stale cache hits from other runs) and no telemetry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="sensorlstm-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO_ROOT.parent / "shared" / "data").resolve()
SKAB_DIR = SHARED_DATA / "skab"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A real Prefect API (the test harness: a temporary server on SQLite), once per session."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Two cores shared by several jobs: intra-op threads spin and run ~30x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def _mlflow_template() -> Path:
    """An MLflow SQLite store migrated once; each test gets a copy (migration takes seconds)."""
    import mlflow

    template = _SESSION_TMP / "mlflow-template"
    template.mkdir()
    db = template / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    client.search_experiments()
    client.search_registered_models()
    return db


@pytest.fixture
def mlflow_store(_mlflow_template: Path, tmp_path: Path, monkeypatch) -> Iterator[str]:
    """A fresh, real MLflow tracking store and registry; returns its tracking URI."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SENSORLSTM_ARTIFACT_LOCATION", str(tmp_path / "mlartifacts"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow remembers the active experiment per process; an earlier test's id may not exist in
    # this fresh store, so start from the default experiment every store has.
    mlflow.set_experiment(experiment_id="0")
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def skab_dir() -> Path:
    """The real SKAB recordings; tests using them skip when ../shared/data is absent."""
    if not SKAB_DIR.is_dir():
        pytest.skip(f"real SKAB data not found at {SKAB_DIR} (expected ../shared/data/skab)")
    return SKAB_DIR


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
    for leftover in ("dask-scratch-space", "runner_storage"):
        shutil.rmtree(Path(tempfile.gettempdir()) / leftover, ignore_errors=True)
