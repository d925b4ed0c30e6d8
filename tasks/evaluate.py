"""Evaluation: anomaly scores, a threshold from held-out data, metrics, plots, the champion.

The threshold is fitted on validation scores (recordings or time ranges the model did not train
on): a threshold fitted on in-sample training errors sits far below test errors and flags almost
everything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import MissingContextError

from sensorlstm import plots
from sensorlstm.bundle import Bundle, load_bundle, save_bundle
from sensorlstm.config import Config
from sensorlstm.metrics import evaluate_scores, fit_threshold
from sensorlstm.model import LSTMForecaster
from sensorlstm.recording import RecordingSet
from sensorlstm.scoring import fit_error_scale, score_recordings
from sensorlstm.train import TrainResult
from tasks.data import PreparedData
from tasks.registry import aliased_version, resolve_model_source
from tasks.tracking import log_metrics

logger = logging.getLogger(__name__)

HEADLINE = (
    "test/f1",
    "test/precision",
    "test/recall",
    "test/far",
    "test/mar",
    "test/roc_auc",
    "test/average_precision",
    "test/pa_f1",
    "test/recording_f1",
    "val/loss",
)


@dataclass
class CandidateEvaluation:
    """The fine-tuned model's bundle (with its threshold) and its metrics."""

    bundle_dir: str
    threshold: float
    metrics: dict[str, float]

    def headline(self, primary: str) -> dict[str, float]:
        """The metrics a person reads first, primary metric included."""
        keys = dict.fromkeys((primary, *HEADLINE))
        return {k: self.metrics[k] for k in keys if k in self.metrics}


@dataclass
class ChampionEvaluation:
    """The current champion scored on the candidate's test split (None when there is none)."""

    version: str | None
    metrics: dict[str, float] | None
    note: str = ""


def _labels(recordings: RecordingSet) -> list[np.ndarray | None]:
    return [recordings.recording_labels(i) for i in range(len(recordings))]


def _threshold(scores: list[np.ndarray], labels: list[np.ndarray | None], config: Config) -> float:
    """The alarm threshold from held-out scores; ``max_f1`` falls back to the label-free rule.

    A fleet whose validation recordings carry no anomaly labels cannot use ``max_f1``; rather
    than fail the nightly run, the quantile rule is used and the switch is logged.
    """
    evaluate = config.evaluate
    method = evaluate.threshold
    has_anomalies = any(lab is not None and lab.any() for lab in labels)
    if method == "max_f1" and not has_anomalies:
        logger.warning("No labelled anomalies in the validation split: quantile threshold used")
        method = "quantile"
    return fit_threshold(
        scores,
        method,
        quantile=evaluate.quantile,
        scale=evaluate.threshold_scale,
        labels=labels,
        value=evaluate.threshold_value,
    )


@task(name="evaluate-candidate")
def evaluate_candidate(
    model: LSTMForecaster,
    training: TrainResult,
    prepared: PreparedData,
    config: Config,
    run_id: str,
) -> CandidateEvaluation:
    """Fit the threshold on validation scores, score the test split, log metrics and plots."""
    run_logger = get_run_logger()
    evaluate = config.evaluate
    inputs = prepared.train.select_channels(prepared.input_channels)
    targets = prepared.train.select_channels(prepared.target_channels)
    holdout = prepared.val if len(prepared.val) else prepared.train
    if holdout is prepared.train:
        run_logger.warning("Validation split is empty: threshold fitted on training scores")

    # -- threshold from held-out scores -------------------------------------------------------
    scoring = {
        "input_channels": inputs,
        "target_channels": targets,
        "max_length": config.train.max_length,
        "batch_size": evaluate.batch_size,
    }
    error_scale = fit_error_scale(model, holdout, **scoring) if evaluate.error_scale else None
    val_scores = score_recordings(
        model, holdout, smoothing=evaluate.smoothing, error_scale=error_scale, **scoring
    )
    val_labels = _labels(holdout)
    threshold = _threshold(val_scores, val_labels, config)

    # -- the bundle: what serving and the next champion comparison load -----------------------
    bundle = Bundle(
        model=model,
        normalizer=prepared.normalizer,
        input_channels=prepared.input_channels,
        target_channels=prepared.target_channels,
        threshold=threshold,
        smoothing=evaluate.smoothing,
        error_scale=None if error_scale is None else [float(x) for x in error_scale],
        max_length=config.train.max_length,
        config=config.model_dump(mode="json"),
    )
    bundle_dir = save_bundle(bundle, Path(config.work_dir) / "bundles" / run_id)

    # -- test metrics, overall and per length bucket ------------------------------------------
    test_scores = bundle.score(prepared.raw_test)
    test_labels = _labels(prepared.raw_test)
    metrics = evaluate_scores(
        test_scores, test_labels, threshold, bucket_edges=evaluate.bucket_edges, prefix="test/"
    )
    metrics |= evaluate_scores(val_scores, val_labels, threshold, prefix="val/")
    metrics["threshold"] = threshold
    metrics["val/loss"] = training.best_val_loss

    with mlflow.start_run(run_id=run_id):
        log_metrics(metrics)
        _log_plots(training, test_scores, test_labels, prepared.raw_test, threshold, metrics)
    _markdown_summary(metrics, threshold, config)
    run_logger.info(
        "Candidate: threshold %.4g, %s",
        threshold,
        ", ".join(f"{k}={metrics[k]:.3f}" for k in HEADLINE if k in metrics),
    )
    return CandidateEvaluation(str(bundle_dir), threshold, metrics)


@task(name="evaluate-champion")
def evaluate_champion(prepared: PreparedData, config: Config, run_id: str) -> ChampionEvaluation:
    """Score the current champion on the same raw test split, with its own threshold."""
    run_logger = get_run_logger()
    name, alias = config.tracking.model_name, config.tracking.champion_alias
    version = aliased_version(name, alias)
    if version is None:
        return ChampionEvaluation(None, None, f"no {name}@{alias} yet")
    champion: Bundle = load_bundle(resolve_model_source(f"models:/{name}/{version.version}"))
    try:
        scores = champion.score(prepared.raw_test)
    except KeyError as error:
        note = f"champion v{version.version} cannot score this data: {error}"
        run_logger.warning("%s", note)
        return ChampionEvaluation(str(version.version), None, note)
    metrics = evaluate_scores(
        scores, _labels(prepared.raw_test), champion.threshold, prefix="test/"
    )
    with mlflow.start_run(run_id=run_id):
        log_metrics({f"champion/{k.removeprefix('test/')}": v for k, v in metrics.items()})
    run_logger.info(
        "Champion v%s on the same test split: %s=%.4f",
        version.version,
        config.evaluate.primary_metric,
        metrics.get(config.evaluate.primary_metric, float("nan")),
    )
    return ChampionEvaluation(str(version.version), metrics)


def _log_plots(
    training: TrainResult,
    scores: list[np.ndarray],
    labels: list[np.ndarray | None],
    recordings: RecordingSet,
    threshold: float,
    metrics: dict[str, float],
) -> None:
    """Loss curves, score timeline, score histogram, PR curve, per-bucket F1 into MLflow."""
    figures: dict[str, Any] = {"loss_curves.png": plots.plot_loss_curves(training.history)}
    labelled = [i for i, lab in enumerate(labels) if lab is not None and lab.any()]
    if len(scores):
        shown = max(labelled or range(len(scores)), key=lambda i: len(scores[i]))
        figures["score_timeline.png"] = plots.plot_score_timeline(
            scores[shown], threshold, labels=labels[shown], title=recordings.ids[shown]
        )
    if labelled:
        figures["score_histogram.png"] = plots.plot_score_histogram(scores, labels, threshold)
        figures["precision_recall.png"] = plots.plot_precision_recall(
            scores, labels, threshold=threshold
        )
        figures["bucket_f1.png"] = plots.plot_bucket_f1(metrics, prefix="test/")
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}")


def _markdown_summary(metrics: dict[str, float], threshold: float, config: Config) -> None:
    rows = "\n".join(f"| {k} | {metrics[k]:.4f} |" for k in HEADLINE if k in metrics)
    text = (
        f"## Candidate evaluation\n\nThreshold `{threshold:.5g}` "
        f"({config.evaluate.threshold}).\n\n| metric | value |\n|---|---|\n{rows}\n"
    )
    try:
        create_markdown_artifact(text, key="candidate-evaluation", description="Test metrics")
    except MissingContextError:
        logger.debug("No Prefect run context: evaluation summary not published as an artifact")
