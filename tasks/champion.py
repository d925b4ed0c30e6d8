"""Register the candidate and move the champion alias only when it wins.

The candidate and the current champion are scored on the same test split, each with its own
normaliser and threshold, so the comparison is between two deployable models, not two numbers
from different data.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task

from sensorlstm.champion import Decision, decide_promotion
from sensorlstm.config import Config
from tasks.registry import set_alias


@task(name="promote-if-better")
def promote_if_better(
    config: Config,
    version: str,
    candidate_metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    champion_version: str | None,
) -> dict[str, Any]:
    """Move the champion alias to ``version`` if it beats the champion on the primary metric."""
    tracking, evaluate = config.tracking, config.evaluate
    decision: Decision = decide_promotion(
        candidate_metrics,
        champion_metrics,
        metric=evaluate.primary_metric,
        greater_is_better=evaluate.greater_is_better,
        min_improvement=evaluate.min_improvement,
    )
    if decision.promote:
        set_alias(tracking.model_name, tracking.champion_alias, version)
    get_run_logger().info(
        "%s version %s: %s",
        "Promoted" if decision.promote else "Kept champion over",
        version,
        decision.reason,
    )
    return {**asdict(decision), "champion_version": champion_version}
