"""The evidence behind a comparison (pipeline/evidence.py), against hand-computed values and
scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import evidence


def test_the_bootstrap_interval_brackets_the_accuracy_and_is_repeatable():
    correct = np.array([1] * 90 + [0] * 10)
    interval = evidence.bootstrap_accuracy(correct)
    assert interval.estimate == 0.9
    assert 0.82 <= interval.low < 0.9 < interval.high <= 0.96
    assert evidence.bootstrap_accuracy(correct) == interval  # fixed seed: same report
    wider = evidence.bootstrap_accuracy(correct[::4])  # fewer images, wider interval
    assert wider.high - wider.low > interval.high - interval.low
    # against the normal approximation of a proportion on a large sample
    big = (np.random.default_rng(3).random(5000) < 0.8).astype(int)
    ci = evidence.bootstrap_accuracy(big)
    half = 1.959964 * np.sqrt(big.mean() * (1 - big.mean()) / big.size)
    assert ci.low == pytest.approx(big.mean() - half, abs=0.003)
    assert ci.high == pytest.approx(big.mean() + half, abs=0.003)


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_pairs():
    a = np.array([1] * 10 + [1] * 50 + [0] * 40, bool)
    b = np.array([0] * 10 + [1] * 50 + [0] * 40, bool)
    assert evidence.mcnemar(a, b) == (10, 0, pytest.approx(2 * 0.5 ** 10))
    assert evidence.mcnemar(a, a) == (0, 0, 1.0)
    # 7 vs 3 discordant: two-sided p = 2 * P(X <= 3 | n=10) = 0.34375
    c = np.array([1] * 7 + [0] * 3 + [1] * 5, bool)
    d = np.array([0] * 7 + [1] * 3 + [1] * 5, bool)
    assert evidence.mcnemar(c, d)[2] == pytest.approx(0.34375)


def test_holm_correction_and_the_verdict():
    rng = np.random.default_rng(0)
    strong = rng.random(2000) < 0.95
    close = strong.copy()  # 6 images only strong gets right, 4 only close does: noise
    close[np.flatnonzero(strong)[:6]] = False
    close[np.flatnonzero(~strong)[:4]] = True
    correct = {"strong": strong, "close": close, "weak": rng.random(2000) < 0.70}
    tests = evidence.compare_all(correct)
    assert tests[("strong", "weak")].better == "strong"
    assert tests[("weak", "strong")].better == "strong"
    assert tests[("weak", "strong")].wins == tests[("strong", "weak")].wins[::-1]
    assert tests[("strong", "close")].wins == (6, 4)
    assert tests[("strong", "close")].better is None
    # Holm: the smallest raw p-value times 3, the next times 2 (never below the one before)
    pairs = [("strong", "weak"), ("close", "weak"), ("strong", "close")]
    raw = sorted(tests[pair].p_value for pair in pairs)
    expected = [min(1, 3 * raw[0]), min(1, max(3 * raw[0], 2 * raw[1]))]
    expected.append(min(1, max(expected[1], raw[2])))
    assert sorted(tests[pair].adjusted for pair in pairs) == pytest.approx(expected)
    accuracy = {name: float(c.mean()) for name, c in correct.items()}
    assert evidence.verdict(accuracy, tests) == {"best": None, "tied": ["strong", "close"]}
    del correct["close"]
    two = evidence.compare_all(correct)
    assert evidence.verdict({k: accuracy[k] for k in correct}, two) == {
        "best": "strong", "tied": ["strong"]}


def test_calibration_of_a_perfectly_calibrated_and_an_overconfident_model():
    labels = np.array([0, 1] * 50)
    sure = np.eye(2)[labels]
    perfect = evidence.calibration(sure, labels)
    assert perfect.ece == 0 and perfect.brier == 0
    wrong_half = np.eye(2)[np.array([0, 1] * 25 + [1, 0] * 25)]  # always 100 %, right half the time
    over = evidence.calibration(wrong_half, labels)
    assert over.ece == pytest.approx(0.5) and over.brier == pytest.approx(1.0)
    assert over.bin_count == [100] and over.bin_accuracy == [0.5]


def test_class_curves_agree_with_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    probabilities = rng.dirichlet(np.ones(3), 300)
    probabilities[np.arange(300), labels] += 0.3
    probabilities /= probabilities.sum(1, keepdims=True)
    curves = evidence.class_curves(probabilities, labels)
    for k in range(3):
        assert curves.roc_auc[k] == pytest.approx(roc_auc_score(labels == k, probabilities[:, k]))
    assert curves.roc_tpr.shape == curves.pr_precision.shape == (3, 101)
    assert curves.roc_tpr[:, -1].tolist() == [1.0, 1.0, 1.0]  # every positive at fpr 1
    # on the grid: non-decreasing ROC, non-increasing interpolated precision
    assert (np.diff(curves.roc_tpr, axis=1) >= 0).all()
    assert (np.diff(curves.pr_precision, axis=1) <= 1e-12).all()
    missing = evidence.class_curves(probabilities, np.zeros(300, int))  # one class only
    assert np.isnan(missing.roc_auc[1]) and np.isnan(missing.roc_tpr[1]).all()


@pytest.mark.parametrize("decimals", [None, 2, 1])  # untied scores, and scores with ties
def test_class_curves_are_scikit_learn_s_curves_step_for_step(decimals):
    """evidence.class_curves writes out scikit-learn's arithmetic (its import was 0.7 s of the
    evaluate stage): the curves on the grid and both areas come out the same, ties included."""
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    rng = np.random.default_rng(5)
    labels = rng.choice(4, 500, p=[0.6, 0.3, 0.08, 0.02])  # from common to rare
    probabilities = rng.dirichlet(np.ones(4), 500)
    probabilities[np.arange(500), labels] += rng.uniform(0, 0.6, 500)
    probabilities /= probabilities.sum(1, keepdims=True)
    if decimals is not None:
        probabilities = probabilities.round(decimals)
    curves = evidence.class_curves(probabilities, labels)
    for k in range(4):
        positive, scores = labels == k, probabilities[:, k]
        fpr, tpr, _ = roc_curve(positive, scores)
        precision, recall, _ = precision_recall_curve(positive, scores)
        np.testing.assert_array_equal(curves.roc_tpr[k], np.interp(evidence.CURVE_GRID, fpr, tpr))
        np.testing.assert_array_equal(curves.pr_precision[k],
                                      evidence._interpolated_precision(recall, precision))
        assert curves.roc_auc[k] == roc_auc_score(positive, scores)
        assert curves.average_precision[k] == average_precision_score(positive, scores)


def test_label_issues_find_flipped_labels():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 400)
    probabilities = np.full((400, 4), 0.02)
    probabilities[np.arange(400), labels] = 0.94
    given = labels.copy()
    flipped = [5, 50, 123, 300]
    given[flipped] = (labels[flipped] + 1) % 4
    issues = evidence.label_issues(probabilities, given)
    assert sorted(i.index for i in issues) == flipped
    assert all(i.suggested == labels[i.index] and i.given == given[i.index] for i in issues)
    assert evidence.label_issues(probabilities, labels) == []


def test_time_to_accuracy():
    milestones = evidence.time_to_accuracy([0.2, 0.5, 0.88, 0.95, 0.99, 1.0], [1, 1, 2, 2, 2, 2])
    assert [(m.fraction, m.epoch, m.seconds) for m in milestones] == [
        (0.9, 4, 6.0), (0.95, 4, 6.0), (0.99, 5, 8.0)]
    assert evidence.time_to_accuracy([0.5, 1.0], None)[0].seconds is None


def test_disputed_labels_are_claimed_as_label_errors_only_from_good_models():
    labels = np.arange(400) % 4
    sure = np.full((400, 4), 0.01 / 3)
    sure[np.arange(400), labels] = 0.99
    assert evidence.label_issue_doubt(sure, labels) is None  # right, and as sure as right

    weak = sure.copy()
    weak[:40] = np.roll(weak[:40], 1, axis=1)  # 90 % right
    doubt = evidence.label_issue_doubt(weak, labels)
    assert doubt is not None and "90.0 % accurate (under 95 %)" in doubt

    timid = np.full((400, 4), 0.4 / 3)
    timid[np.arange(400), labels] = 0.6  # always right, but only 60 % sure
    doubt = evidence.label_issue_doubt(timid, labels)
    assert doubt is not None and "miscalibrated (expected calibration error 0.400" in doubt
