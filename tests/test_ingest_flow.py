"""The ingest flow on a real Prefect server: mapped reads, cache, artifact, Dask, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from data_corpus import recording_frame, small_mixed_fleet, write_parquet
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.ingest import ingest_flow
from sensorlstm.config import Config
from sensorlstm.ingest import load_ingested
from tasks.ingest import log_ingest_to_mlflow


def _config(source: Path, **data) -> Config:
    return Config.model_validate(
        {"data": {"path": str(source), "min_length": 5, **data}, "work_dir": str(source.parent)}
    )


async def _read_task_names(marker: str) -> list[str]:
    async with get_client() as client:
        runs = await client.read_task_runs(limit=200)
    return [run.name for run in runs if run.name.startswith("read-") and marker in run.name]


def test_flow_maps_reads_and_skips_unchanged_data(prefect_server, tmp_path: Path) -> None:
    import asyncio

    source = small_mixed_fleet(tmp_path / "fleet")
    config = _config(source)

    first = ingest_flow(config)
    second = ingest_flow(config)

    assert first["cached"] is False and second["cached"] is True
    assert first["dataset_dir"] == str((tmp_path / "ingested").resolve())
    assert first["rows_in"] == first["rows_used"] + first["rows_quarantined"]
    assert first["recordings_used"] == 3
    assert first["reasons"] == {"too_short": 1, "unreadable_file": 1}
    assert {k: second[k] for k in first if k != "cached"} == {
        k: v for k, v in first.items() if k != "cached"
    }
    names = asyncio.run(_read_task_names(str(source)))
    assert len(names) == 5, "one mapped read per file, and none on the cached run"
    assert load_ingested(tmp_path / "ingested").report["recordings_used"] == 3

    async def artifact() -> list:
        async with get_client() as client:
            flt = ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-report"]))
            return await client.read_artifacts(artifact_filter=flt)

    artifacts = asyncio.run(artifact())
    assert artifacts and artifacts[0].type == "table"


def test_flow_reingests_when_a_file_changes(prefect_server, tmp_path: Path) -> None:
    source = small_mixed_fleet(tmp_path / "fleet")
    config = _config(source)
    ingest_flow(config, out_dir=str(tmp_path / "out"))

    write_parquet(recording_frame("late", 50), source / "late.parquet")
    again = ingest_flow(config, out_dir=str(tmp_path / "out"))

    assert again["cached"] is False and again["recordings_used"] == 4


def test_flow_reads_on_a_local_dask_cluster(prefect_server, tmp_path: Path) -> None:
    source = small_mixed_fleet(tmp_path / "fleet")
    threads = ingest_flow(_config(source, cache=False), out_dir=str(tmp_path / "threads"))
    dask = ingest_flow(
        _config(source, task_runner="dask", cache=False), out_dir=str(tmp_path / "dask")
    )

    assert {k: v for k, v in dask.items() if k != "dataset_dir"} == {
        k: v for k, v in threads.items() if k != "dataset_dir"
    }


def test_report_is_logged_to_the_active_mlflow_run(mlflow_store, tmp_path: Path) -> None:
    from sensorlstm.ingest import ingest_dataset

    source = small_mixed_fleet(tmp_path / "fleet")
    summary = ingest_dataset(_config(source).data, tmp_path / "out")

    with mlflow.start_run() as run:
        log_ingest_to_mlflow(summary["dataset_dir"])

    data = mlflow.get_run(run.info.run_id).data
    assert data.metrics["data/rows_in"] == summary["rows_in"]
    assert data.metrics["data/quarantined/too_short"] == 1
    assert data.params["data/fingerprint"] == summary["fingerprint"]
    listed = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "ingest")}
    assert listed == {
        "ingest/report.json",
        "ingest/quarantine.parquet",
        "ingest/length_histogram.png",
    }
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="ingest")
    assert json.loads((Path(local) / "report.json").read_text())["rows_in"] == summary["rows_in"]


def test_flow_logs_to_mlflow_only_when_tracking_is_asked_for(
    prefect_server, mlflow_store, tmp_path: Path
) -> None:
    source = small_mixed_fleet(tmp_path / "fleet")
    config = _config(source)

    untracked = ingest_flow(config, out_dir=str(tmp_path / "out"))
    runs_after_untracked = mlflow.search_runs(search_all_experiments=True, output_format="list")
    tracked = ingest_flow(config, out_dir=str(tmp_path / "out"), track=True)
    with mlflow.start_run() as outer:
        inside = ingest_flow(config, out_dir=str(tmp_path / "out"), track=True)

    assert runs_after_untracked == [] and "mlflow_run_id" not in untracked
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    own = [run for run in runs if run.info.run_id != outer.info.run_id]
    assert [run.info.run_name for run in own] == ["ingest"], "one run of its own"
    assert own[0].info.run_id == tracked["mlflow_run_id"]
    assert own[0].data.tags["sensorlstm.cached"] == "True"
    assert inside["mlflow_run_id"] == outer.info.run_id, "an active run gets the report"
    outer_data = mlflow.get_run(outer.info.run_id).data
    assert outer_data.metrics["data/rows_in"] == tracked["rows_in"]


def test_report_artifact_holds_the_length_histogram(prefect_server, tmp_path: Path) -> None:
    import asyncio

    source = small_mixed_fleet(tmp_path / "fleet")
    ingest_flow(_config(source, cache=False), out_dir=str(tmp_path / "out"))

    async def latest() -> list[dict]:
        async with get_client() as client:
            flt = ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-report"]))
            found = await client.read_latest_artifacts(artifact_filter=flt)
        data = found[0].data
        return json.loads(data) if isinstance(data, str) else data

    rows = asyncio.run(latest())
    bins = [row for row in rows if row["kind"] == "length"]
    assert bins and sum(row["count"] for row in bins) == 3
