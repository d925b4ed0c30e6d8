"""The ingest flow: list -> mapped reads (threads or Dask) -> validate -> save, with a cache.

``ingest_flow(config, out_dir)`` is what ``sensorlstm ingest`` runs (with ``track=True``: the
report also goes to MLflow) and what the retrain flow calls as a subflow. When the fingerprint
of the input files and the ingest config matches the one saved in ``out_dir``, it returns the
saved summary (``cached: true``) without reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from sensorlstm.config import Config, DataConfig
from sensorlstm.ingest import cached_summary, dataset_fingerprint, dataset_sources, save_dataset
from sensorlstm.sources import SourcePart
from tasks.ingest import (
    combine_task,
    list_sources_task,
    read_source_task,
    report_artifact_task,
    track_ingest,
)


def build_task_runner(cfg: DataConfig) -> TaskRunner:
    """The task runner for the reads: a thread pool, or Dask (local cluster or an address).

    The local Dask cluster uses threads in this process (pyarrow releases the GIL while it
    parses), so workers need no Prefect API of their own; point ``data.dask_address`` at a
    real cluster to read on other machines.
    """
    if cfg.task_runner == "thread":
        return ThreadPoolTaskRunner(max_workers=cfg.parallelism)
    if cfg.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.dask_address:
            return DaskTaskRunner(address=cfg.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": cfg.dask_workers,
                "threads_per_worker": max(1, cfg.parallelism // cfg.dask_workers),
                "processes": False,
                "dashboard_address": None,
            }
        )
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise ImportError(
            "data.task_runner is 'ray' but prefect-ray is not installed; "
            "pip install 'sensorlstm[ray]' or set data.task_runner: thread"
        ) from exc
    return RayTaskRunner()


@flow(name="ingest-read-sources", persist_result=False)
def read_sources_flow(files: dict[str, list[str]], cfg: DataConfig) -> dict[str, list[SourcePart]]:
    """Read every file, one mapped task per file, on the configured task runner."""
    parts: dict[str, list[SourcePart]] = {}
    for name, paths in files.items():
        futures = read_source_task.map(paths, unmapped(cfg))
        parts[name] = [future.result() for future in futures]
    return parts


@flow(name="ingest", persist_result=False)
def ingest_flow(config: Config, out_dir: str | None = None, track: bool = False) -> dict[str, Any]:
    """Validate recordings, quarantine bad ones, write the data set, quarantine and report.

    Args:
        config: the run config (its ``data`` section; ``data.path`` or explicit split paths).
        out_dir: output folder; default ``<config.work_dir>/ingested``.
        track: log the report to MLflow (the active run, else a run named ``ingest``). The
            CLI sets it; the retrain flow leaves it off and logs into its own run.

    Returns:
        The summary: ``rows_in``, ``rows_used``, ``rows_quarantined``, ``recordings_used``,
        ``recordings_quarantined``, ``reasons``, ``warnings``, ``dataset_dir``, ``fingerprint``,
        ``cached`` (``splits`` with explicit sources, ``mlflow_run_id`` when tracked).
    """
    out = Path(out_dir) if out_dir else Path(config.work_dir) / "ingested"
    summary = _ingest(config.data, out)
    if track:
        summary = {**summary, "mlflow_run_id": track_ingest(summary, config.tracking)}
    return summary


def _ingest(cfg: DataConfig, out: Path) -> dict[str, Any]:
    """The flow's body: skip when the fingerprint matches, else read, validate and save."""
    logger = get_run_logger()

    # -- what to read, and whether it changed ---------------------------------------------------
    sources = dataset_sources(cfg)
    files = {name: list_sources_task(source, cfg) for name, source in sources.items()}
    fingerprint = dataset_fingerprint(files, cfg)
    if cfg.cache:
        cached = cached_summary(out, fingerprint)
        if cached is not None:
            logger.info("%s is up to date (fingerprint %s); ingest skipped", out, fingerprint[:12])
            return cached

    # -- read in parallel, validate, save --------------------------------------------------------
    n_files = sum(len(paths) for paths in files.values())
    logger.info("reading %d files with the %s task runner", n_files, cfg.task_runner)
    reader = read_sources_flow.with_options(task_runner=build_task_runner(cfg))
    parts = reader(files, cfg)
    results = combine_task(parts, cfg, fingerprint)
    summary = save_dataset(results, out, fingerprint)
    report_artifact_task(results)
    logger.info(
        "ingested %d recordings (%d of %d rows); quarantined %d: %s",
        summary["recordings_used"],
        summary["rows_used"],
        summary["rows_in"],
        summary["recordings_quarantined"],
        summary["reasons"] or "nothing",
    )
    return summary
