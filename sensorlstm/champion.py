"""Whether a freshly trained candidate replaces the current champion model.

The decision is a pure function of two metric dictionaries, so it is tested without MLflow;
``tasks/registry.py`` reads the champion's metrics from the registry, calls
:func:`decide_promotion` and moves the alias only when it says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from sensorlstm.config import EvaluateConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """The outcome of comparing a candidate with the champion.

    Attributes:
        promote: True when the candidate should become the champion.
        reason: one human-readable sentence with both values, for the run summary.
        metric: the metric compared.
        candidate_value: the candidate's value (NaN when missing).
        champion_value: the champion's value (NaN when missing, None when there is no champion).
    """

    promote: bool
    reason: str
    metric: str
    candidate_value: float
    champion_value: float | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _value(metrics: Mapping[str, float], metric: str) -> float:
    raw = metrics.get(metric)
    try:
        return float(raw) if raw is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def decide_promotion(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    *,
    metric: str,
    greater_is_better: bool = True,
    min_improvement: float = 0.0,
) -> Decision:
    """Decide whether ``candidate`` beats ``champion`` on ``metric``.

    Rules, in order:

    1. A candidate without a finite value for ``metric`` is never promoted.
    2. With no champion, the candidate is promoted.
    3. A champion without a finite value for ``metric`` (e.g. logged before the metric existed)
       is replaced.
    4. Otherwise the candidate must improve on the champion by more than ``min_improvement``
       in the metric's better direction; a tie is not an improvement.

    Args:
        candidate: the candidate run's metrics, e.g. ``{"test/f1": 0.71, ...}``.
        champion: the champion's metrics, or None when no champion exists yet.
        metric: the deciding metric's name.
        greater_is_better: False for losses and error rates.
        min_improvement: required margin (absolute, in the metric's units), >= 0.

    Returns:
        The :class:`Decision`, with a reason that names the metric and both values.
    """
    if min_improvement < 0:
        raise ValueError(f"min_improvement must be >= 0, got {min_improvement}")
    cand = _value(candidate, metric)
    direction = "higher" if greater_is_better else "lower"

    if not math.isfinite(cand):
        known = ", ".join(sorted(candidate)) or "none"
        return Decision(
            False,
            f"not promoted: the candidate has no finite {metric} (got {cand}); "
            f"its metrics are: {known}",
            metric,
            cand,
            None if champion is None else _value(champion, metric),
        )
    if champion is None:
        return Decision(
            True, f"promoted: no champion yet; candidate {metric}={cand:.4g}", metric, cand, None
        )
    champ = _value(champion, metric)
    if not math.isfinite(champ):
        return Decision(
            True,
            f"promoted: the champion has no finite {metric} (got {champ}); "
            f"candidate {metric}={cand:.4g}",
            metric,
            cand,
            champ,
        )

    gain = cand - champ if greater_is_better else champ - cand
    promote = gain > min_improvement
    verdict = "promoted" if promote else "not promoted"
    margin = f" by more than {min_improvement:.4g}" if min_improvement > 0 else ""
    reason = (
        f"{verdict}: candidate {metric}={cand:.4g} vs champion {champ:.4g} "
        f"({direction} is better{margin}; change {gain:+.4g})"
    )
    logger.info(reason)
    return Decision(promote, reason, metric, cand, champ)


def decide_promotion_for(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    cfg: EvaluateConfig,
) -> Decision:
    """:func:`decide_promotion` with the rule taken from the ``evaluate`` config section."""
    return decide_promotion(
        candidate,
        champion,
        metric=cfg.primary_metric,
        greater_is_better=cfg.greater_is_better,
        min_improvement=cfg.min_improvement,
    )
