"""Prefect tasks around the core ingest, and logging of the ingest report to MLflow.

The reads are mapped one task per file (``read_source_task.map``); the heavy results stay in
memory (``persist_result=False``, no input hashing) because the ingested data set itself is
the persisted output and the cache is the data set's fingerprint, not Prefect's task cache.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from sensorlstm.config import DataConfig, TrackingConfig
from sensorlstm.ingest import IngestResult, combine_dataset, list_sources, read_source
from sensorlstm.quarantine import QUARANTINE_FILE
from sensorlstm.report import REPORT_FILE, plot_length_histogram, report_table
from sensorlstm.sources import SourcePart

logger = logging.getLogger(__name__)

SUMMARY_METRICS = (
    "rows_in",
    "rows_used",
    "rows_quarantined",
    "recordings_used",
    "recordings_quarantined",
)


@task(name="list-sources", cache_policy=NO_CACHE, persist_result=False)
def list_sources_task(source: str, cfg: DataConfig) -> list[str]:
    """Every data file of one source (file, folder, glob or URL)."""
    return list_sources(source, cfg)


@task(
    name="read-source",
    task_run_name="read-{path}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def read_source_task(path: str, cfg: DataConfig) -> SourcePart:
    """Read, type and group one file; a broken file comes back as a quarantine issue."""
    return read_source(path, cfg)


@task(name="combine-sources", cache_policy=NO_CACHE, persist_result=False)
def combine_task(
    parts: dict[str, Sequence[SourcePart]], cfg: DataConfig, fingerprint: str
) -> dict[str, IngestResult]:
    """Validate each split's recordings as one fleet; the rows are accounted for here."""
    return combine_dataset(parts, cfg, fingerprint)


@task(name="ingest-report-artifact", cache_policy=NO_CACHE, persist_result=False)
def report_artifact_task(results: dict[str, IngestResult]) -> None:
    """A Prefect table artifact per split: totals, reasons, warnings, channels, length bins."""
    for name, result in results.items():
        key = f"ingest-report-{name}" if name else "ingest-report"
        report = result.report
        create_table_artifact(
            table=report_table(report),
            key=key,
            description=(
                f"Ingest{' (' + name + ')' if name else ''}: {report['rows_used']} of "
                f"{report['rows_in']} rows used, {report['recordings_quarantined']} "
                f"recordings/files quarantined ({report['reasons'] or 'none'})"
            ),
        )


def log_ingest_to_mlflow(dataset_dir: str | Path) -> None:
    """Log the ingest report to the *active* MLflow run.

    Metrics ``data/rows_in``, ``data/rows_used``, ... (per split as ``data/<split>/...`` with
    explicit sources), parameters ``data/fingerprint`` and ``data/dataset_dir``, and the
    artifacts ``ingest[/<split>]/report.json``, ``quarantine.parquet`` and
    ``length_histogram.png``.

    Args:
        dataset_dir: the ingest output folder (``summary["dataset_dir"]``).

    Raises:
        RuntimeError: no MLflow run is active.
    """
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError(
            "log_ingest_to_mlflow needs an active MLflow run; call it inside "
            "`with mlflow.start_run():`"
        )
    dataset_dir = Path(dataset_dir)
    summary = json.loads((dataset_dir / "summary.json").read_text())
    splits = list(summary.get("splits") or {"": None})
    metrics = {f"data/{key}": float(summary[key]) for key in SUMMARY_METRICS}
    for reason, count in summary["reasons"].items():
        metrics[f"data/quarantined/{reason}"] = float(count)
    for name in splits:
        if not name:
            continue
        report = json.loads((dataset_dir / name / REPORT_FILE).read_text())
        metrics.update({f"data/{name}/{key}": float(report[key]) for key in SUMMARY_METRICS})
    mlflow.log_metrics(metrics)
    mlflow.log_params(
        {"data/fingerprint": summary["fingerprint"], "data/dataset_dir": str(dataset_dir)}
    )
    for name in splits:
        folder = dataset_dir / name if name else dataset_dir
        artifact_path = f"ingest/{name}" if name else "ingest"
        report = json.loads((folder / REPORT_FILE).read_text())
        mlflow.log_artifact(str(folder / REPORT_FILE), artifact_path)
        mlflow.log_artifact(str(folder / QUARANTINE_FILE), artifact_path)
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_length_histogram(report, Path(tmp) / "length_histogram.png")
            mlflow.log_artifact(str(png), artifact_path)


def track_ingest(summary: dict[str, Any], tracking: TrackingConfig) -> str:
    """Log an ingest to MLflow: into the active run, else into a new run named ``ingest``.

    ``sensorlstm ingest`` calls this (through ``ingest_flow(track=True)``) so a stand-alone
    ingest is on record too; the retrain flow logs the report into its own run instead. A
    cache hit is logged as well (tag ``sensorlstm.cached``), since it says which data set the
    command left in place.

    Args:
        summary: what ``ingest_flow`` returned (``dataset_dir`` and ``cached`` are read).
        tracking: where MLflow tracks (used only when no run is active).

    Returns:
        The id of the run the report went to.
    """
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        log_ingest_to_mlflow(summary["dataset_dir"])
        return active.info.run_id
    from tasks.tracking import configure

    configure(tracking)
    tags = {"sensorlstm.flow": "ingest", "sensorlstm.cached": str(bool(summary["cached"]))}
    with mlflow.start_run(run_name="ingest", tags=tags) as run:
        log_ingest_to_mlflow(summary["dataset_dir"])
    logger.info("logged the ingest report to MLflow run %s", run.info.run_id)
    return run.info.run_id
