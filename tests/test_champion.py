"""The champion rule: pure, symmetric in direction, explicit about missing values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensorlstm.champion import decide_promotion, decide_promotion_for
from sensorlstm.config import EvaluateConfig

values = st.floats(-1e6, 1e6, allow_nan=False)
margins = st.floats(0, 10, allow_nan=False)


@given(values, values, margins)
def test_promotion_iff_the_candidate_beats_the_champion_by_the_margin(cand, champ, margin):
    up = decide_promotion({"m": cand}, {"m": champ}, metric="m", min_improvement=margin)
    down = decide_promotion(
        {"m": -cand}, {"m": -champ}, metric="m", greater_is_better=False, min_improvement=margin
    )
    assert up.promote == (cand - champ > margin)
    assert down.promote == up.promote, "negating the metric and the direction changes nothing"
    assert up.candidate_value == cand and up.champion_value == champ


def test_a_tie_is_not_an_improvement() -> None:
    assert not decide_promotion({"f1": 0.5}, {"f1": 0.5}, metric="f1").promote


def test_the_reason_names_the_metric_and_both_values() -> None:
    decision = decide_promotion({"test/f1": 0.8123}, {"test/f1": 0.75}, metric="test/f1")
    assert decision.promote
    assert "test/f1" in decision.reason and "0.8123" in decision.reason
    assert "0.75" in decision.reason


def test_without_a_champion_the_candidate_is_promoted() -> None:
    decision = decide_promotion({"f1": 0.1}, None, metric="f1")
    assert decision.promote and decision.champion_value is None
    assert "no champion" in decision.reason


@pytest.mark.parametrize("candidate", [{}, {"f1": math.nan}, {"f1": None}, {"f1": "n/a"}])
def test_a_candidate_without_the_metric_is_never_promoted(candidate) -> None:
    for champion in (None, {"f1": 0.0}, {}):
        decision = decide_promotion(candidate, champion, metric="f1")
        assert not decision.promote
        assert "candidate has no finite f1" in decision.reason


@pytest.mark.parametrize("champion", [{}, {"f1": math.nan}, {"other": 1.0}])
def test_a_champion_without_the_metric_is_replaced(champion) -> None:
    decision = decide_promotion({"f1": 0.2}, champion, metric="f1")
    assert decision.promote and "champion has no finite f1" in decision.reason


def test_the_config_section_supplies_the_rule() -> None:
    cfg = EvaluateConfig(primary_metric="val/loss", greater_is_better=False, min_improvement=0.1)
    assert decide_promotion_for({"val/loss": 0.5}, {"val/loss": 0.65}, cfg).promote
    assert not decide_promotion_for({"val/loss": 0.6}, {"val/loss": 0.65}, cfg).promote


def test_a_negative_margin_is_refused() -> None:
    with pytest.raises(ValueError, match="min_improvement"):
        decide_promotion({"f1": 1.0}, None, metric="f1", min_improvement=-1)
