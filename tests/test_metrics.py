"""Thresholds and metrics: checked against brute-force definitions, not hand-picked numbers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sensorlstm.metrics import (
    average_precision,
    classification_metrics,
    evaluate_scores,
    fit_threshold,
    point_adjust,
    precision_recall_curve,
    roc_auc,
)

# Scores from a small alphabet so ties are common.
scored_labels = st.integers(2, 60).flatmap(
    lambda n: st.tuples(
        arrays(np.float64, n, elements=st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])),
        arrays(np.int8, n, elements=st.integers(0, 1)),
    )
)


def _brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    return float(np.mean(pairs))


@settings(max_examples=60, deadline=None)
@given(scored_labels)
def test_roc_auc_equals_the_pairwise_definition_with_ties(data) -> None:
    scores, labels = data
    if labels.min() == labels.max():
        assert math.isnan(roc_auc(labels, scores))
    else:
        assert roc_auc(labels, scores) == pytest.approx(_brute_auc(labels, scores))


@settings(max_examples=60, deadline=None)
@given(scored_labels)
def test_average_precision_equals_the_step_sum_over_distinct_thresholds(data) -> None:
    scores, labels = data
    if labels.sum() == 0:
        assert math.isnan(average_precision(labels, scores))
        return
    expected, previous_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        flagged = scores >= t
        tp = int((flagged & (labels == 1)).sum())
        recall = tp / labels.sum()
        expected += (recall - previous_recall) * tp / flagged.sum()
        previous_recall = recall
    assert average_precision(labels, scores) == pytest.approx(expected)


def test_average_precision_and_auc_of_a_perfect_ranking_are_one() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = labels * 10.0 + np.arange(6) * 0.1
    assert roc_auc(labels, scores) == 1.0
    assert average_precision(labels, scores) == 1.0
    assert roc_auc(labels, -scores) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40))
def test_classification_metrics_are_consistent_and_bounded(pairs) -> None:
    y_true = np.array([t for t, _ in pairs], dtype=bool)
    y_pred = np.array([p for _, p in pairs], dtype=bool)
    m = classification_metrics(y_true, y_pred)
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == len(pairs)
    for key in ("precision", "recall", "f1", "far", "mar", "accuracy"):
        assert 0.0 <= m[key] <= 1.0 and not math.isnan(m[key])
    if m["tp"] + m["fn"] > 0:
        assert m["recall"] + m["mar"] == pytest.approx(1.0)
    if m["precision"] + m["recall"] > 0:
        assert m["f1"] == pytest.approx(
            2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"])
        )


def test_classification_metrics_with_no_positives_anywhere_are_zero_not_nan() -> None:
    m = classification_metrics(np.zeros(5), np.zeros(5))
    assert m["precision"] == m["recall"] == m["f1"] == m["far"] == m["mar"] == 0.0
    assert m["accuracy"] == 1.0 and m["tn"] == 5


@settings(max_examples=60, deadline=None)
@given(scored_labels)
def test_max_f1_threshold_reaches_the_best_f1_of_any_cut(data) -> None:
    scores, labels = data
    if labels.sum() == 0:
        with pytest.raises(ValueError, match="anomalous step"):
            fit_threshold(scores, "max_f1", labels=labels)
        return
    threshold = fit_threshold(scores, "max_f1", labels=labels)
    best = max(
        classification_metrics(labels, scores > cut)["f1"] for cut in [*np.unique(scores), -np.inf]
    )
    assert classification_metrics(labels, scores > threshold)["f1"] == pytest.approx(best)


def test_quantile_threshold_flags_about_the_tail_and_scales() -> None:
    scores = [np.arange(500.0), np.arange(500.0, 1000.0)]
    threshold = fit_threshold(scores, "quantile", quantile=0.9)
    assert np.mean(np.concatenate(scores) > threshold) == pytest.approx(0.1, abs=0.002)
    doubled = fit_threshold(scores, "quantile", quantile=0.9, scale=2.0)
    assert doubled == pytest.approx(2 * threshold)
    assert fit_threshold([np.array([1.0, np.nan, 3.0])], quantile=0.5) == pytest.approx(2.0)


def test_threshold_methods_explain_missing_inputs() -> None:
    with pytest.raises(ValueError, match="threshold_value"):
        fit_threshold([np.ones(3)], "fixed")
    assert fit_threshold([np.ones(3)], "fixed", value=0.7) == 0.7
    with pytest.raises(ValueError, match="needs labels"):
        fit_threshold([np.ones(3)], "max_f1")
    with pytest.raises(ValueError, match="no finite scores"):
        fit_threshold([np.array([np.nan])], "quantile")


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 50).flatmap(
        lambda n: st.tuples(
            arrays(np.bool_, n, elements=st.booleans()),
            arrays(np.bool_, n, elements=st.booleans()),
        )
    )
)
def test_point_adjust_fills_exactly_the_caught_segments(data) -> None:
    y_true, y_pred = data
    adjusted = point_adjust(y_true, y_pred)
    assert (adjusted >= y_pred).all(), "point adjustment never removes a flag"
    assert (adjusted[~y_true] == y_pred[~y_true]).all(), "normal steps are untouched"
    # Each labelled segment is either fully flagged (caught) or left as predicted (missed).
    for key, group in itertools.groupby(range(len(y_true)), key=lambda i: y_true[i]):
        idx = list(group)
        if key:
            assert adjusted[idx].all() == y_pred[idx].any()


def test_precision_recall_curve_is_monotone_in_recall() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + labels
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    assert (np.diff(recall) >= 0).all() and (np.diff(thresholds) < 0).all()
    assert recall[-1] == 1.0 and precision[-1] == pytest.approx(labels.mean())


def test_evaluate_scores_names_buckets_and_skips_unlabelled_recordings() -> None:
    rng = np.random.default_rng(1)
    lengths = [50, 80, 150, 2000]
    scores = [rng.random(n) for n in lengths]
    labels = [np.zeros(n, np.int8) for n in lengths]
    labels[1][10:20] = 1
    scores[1][10:20] += 5.0
    labels[3] = None  # unlabelled: scored but not in label metrics
    scores[3][:] = 100.0

    m = evaluate_scores(scores, labels, threshold=2.0, bucket_edges=[0, 100, 1000], prefix="val/")

    assert m["val/recordings"] == 4 and m["val/labelled_recordings"] == 3
    assert m["val/f1"] == 1.0 and m["val/far"] == 0.0 and m["val/roc_auc"] == 1.0
    assert m["val/tp"] + m["val/fp"] + m["val/fn"] + m["val/tn"] == sum(lengths[:3])
    assert m["val/flagged_rate"] == pytest.approx((10 + 2000) / sum(lengths))
    assert m["val/bucket_0-100/recordings"] == 2 and m["val/bucket_0-100/f1"] == 1.0
    assert m["val/bucket_100-1000/recordings"] == 1
    assert m["val/bucket_100-1000/f1"] == 0.0  # labelled but without anomalies
    assert m["val/bucket_1000-inf/recordings"] == 1
    assert "val/bucket_1000-inf/f1" not in m
    assert all(key.startswith("val/") for key in m)


def test_point_adjusted_f1_is_at_least_the_step_f1() -> None:
    labels = [np.r_[np.zeros(20), np.ones(30), np.zeros(20)].astype(np.int8)]
    scores = [np.zeros(70)]
    scores[0][25] = 1.0  # one step of a 30-step event
    m = evaluate_scores(scores, labels, threshold=0.5)
    assert m["test/recall"] == pytest.approx(1 / 30)
    assert m["test/pa_f1"] == 1.0 and m["test/recording_f1"] == 1.0


def test_evaluate_scores_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="recording 0: 3 scores but 4 labels"):
        evaluate_scores([np.zeros(3)], [np.zeros(4)], threshold=1.0)


# -- figures (sensorlstm.plots draws these metrics; smoke tests that each writes a PNG) ---------


def _figure_inputs():
    rng = np.random.default_rng(2)
    scores = [rng.gamma(2.0, size=n) for n in (40, 300, 1500)]
    labels = [np.zeros(n, np.int8) for n in (40, 300, 1500)]
    labels[1][100:130] = 1
    scores[1][100:130] += 6.0
    labels[2] = None
    return scores, labels


def _figures():
    from sensorlstm import plots

    scores, labels = _figure_inputs()
    metrics = evaluate_scores(scores, labels, threshold=5.0)
    history = [{"epoch": e, "train/loss": 1 / e, "val/loss": 1.2 / e} for e in range(1, 5)]
    return {
        "loss": lambda: plots.plot_loss_curves(history),
        "timeline": lambda: plots.plot_score_timeline(scores[1], 5.0, labels=labels[1]),
        "histogram": lambda: plots.plot_score_histogram(scores, labels, 5.0),
        "pr": lambda: plots.plot_precision_recall(scores, labels, threshold=5.0),
        "lengths": lambda: plots.plot_length_histogram([len(s) for s in scores]),
        "bucket_f1": lambda: plots.plot_bucket_f1(metrics),
        "empty_pr": lambda: plots.plot_precision_recall(scores[2:], labels[2:]),
        "empty_buckets": lambda: plots.plot_bucket_f1({}),
        "empty_history": lambda: plots.plot_loss_curves([]),
    }


@pytest.mark.parametrize("name", list(_figures()))
def test_each_plot_writes_a_non_empty_png(tmp_path, name: str) -> None:
    from sensorlstm.plots import save_figure

    path = save_figure(_figures()[name](), tmp_path / "nested" / f"{name}.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 2_000
