"""The evidence behind a comparison: is a difference real, how calibrated is a model, how well
does it rank each class, which labels look wrong, how fast does it get there.

All of it is computed from test-set predictions the evaluate stage stored (plus, for the time to
accuracy, the run's history and timing), deterministically: the bootstrap has a fixed seed, so
the same inputs give the same report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
INTERVAL_LEVEL = 0.95  # of the bootstrap accuracy intervals
ALPHA = 0.05
CALIBRATION_BINS = 15
MILESTONES = (0.9, 0.95, 0.99)  # shares of the best validation accuracy, for time to accuracy
# Confident learning finds the images the models confidently disagree with; whether those are
# label errors or the models' own mistakes depends on how good the models are. Below these, the
# list is shown as disputed labels, not claimed as label errors.
LABEL_ERRORS_MIN_ACCURACY = 0.95
LABEL_ERRORS_MAX_ECE = 0.05


@dataclass(frozen=True)
class Method:
    """The settings behind the evidence, as the report states them (passed to its templates,
    so the page says what was computed)."""

    bootstrap_samples: int = BOOTSTRAP_SAMPLES
    interval_level: float = INTERVAL_LEVEL
    alpha: float = ALPHA
    calibration_bins: int = CALIBRATION_BINS
    milestones: tuple[float, ...] = MILESTONES
    label_errors_min_accuracy: float = LABEL_ERRORS_MIN_ACCURACY
    label_errors_max_ece: float = LABEL_ERRORS_MAX_ECE


METHOD = Method()


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def bootstrap_accuracy(correct: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = INTERVAL_LEVEL) -> Interval:
    """Percentile bootstrap interval of the mean of a 0/1 vector (the test accuracy)."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 250):  # bounded memory on large test sets
        count = min(250, samples - start)
        draws = rng.integers(0, correct.size, (count, correct.size))
        means[start : start + count] = correct[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(correct.mean()), float(low), float(high))


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired predictions of the same images: (a right and b wrong,
    b right and a wrong, two-sided p-value), from the binomial test on the discordant pairs."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    return only_a, only_b, float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)


@dataclass(frozen=True)
class PairTest:
    better: str | None  # the significantly better of the two, after Holm's correction
    wins: tuple[int, int]  # images only the first / only the second got right
    p_value: float  # McNemar's exact, uncorrected
    adjusted: float  # Holm-adjusted over every pair of the dataset


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for the number of tests made (each compared
    with alpha then holds for the whole family), in the order given."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def compare_all(correct: dict[str, np.ndarray], alpha: float = ALPHA
                ) -> dict[tuple[str, str], PairTest]:
    """Every pair of models on the same test images, with Holm's step-down correction for the
    number of pairs (so "significant" holds for the whole table at level alpha)."""
    names = list(correct)
    raw = {}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            raw[(first, second)] = mcnemar(correct[first], correct[second])
    adjusted = dict(zip(raw, holm([p for _, _, p in raw.values()]), strict=True))
    tests = {}
    for (first, second), (only_first, only_second, p) in raw.items():
        better = None
        if adjusted[(first, second)] < alpha and only_first != only_second:
            better = first if only_first > only_second else second
        test = PairTest(better, (only_first, only_second), p, adjusted[(first, second)])
        tests[(first, second)] = test
        tests[(second, first)] = PairTest(better, (only_second, only_first), p,
                                          adjusted[(first, second)])
    return tests


def verdict(accuracy: dict[str, float], tests: dict[tuple[str, str], PairTest]) -> dict:
    """Name a best model only when it is significantly better than the runner-up; otherwise
    the models tied with the top one (not significantly different from it)."""
    ranked = sorted(accuracy, key=lambda name: -accuracy[name])
    top = ranked[0]
    if len(ranked) == 1:
        return {"best": top, "tied": [top]}
    runner_up = ranked[1]
    if tests[(top, runner_up)].better == top:
        return {"best": top, "tied": [top]}
    tied = [name for name in ranked if name == top or tests[(top, name)].better is None]
    return {"best": None, "tied": tied}


@dataclass(frozen=True)
class Calibration:
    bin_confidence: list[float]  # mean top-class probability per non-empty bin
    bin_accuracy: list[float]
    bin_count: list[int]
    ece: float  # expected calibration error: sum of |accuracy - confidence| weighted by count
    brier: float  # mean squared error of the probability vector against the one-hot label


def calibration(probabilities: np.ndarray, labels: np.ndarray,
                bins: int = CALIBRATION_BINS) -> Calibration:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    mean_confidence, mean_accuracy, counts = [], [], []
    ece = 0.0
    for b in range(bins):
        members = which == b
        if not members.any():
            continue
        mean_confidence.append(float(confidence[members].mean()))
        mean_accuracy.append(float(correct[members].mean()))
        counts.append(int(members.sum()))
        ece += members.mean() * abs(mean_accuracy[-1] - mean_confidence[-1])
    one_hot = np.eye(probabilities.shape[1])[labels]
    brier = float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))
    return Calibration(mean_confidence, mean_accuracy, counts, float(ece), brier)


CURVE_GRID = np.linspace(0.0, 1.0, 101)  # where ROC and precision-recall curves are kept


@dataclass(frozen=True)
class ClassCurves:
    """Per class (rows), on CURVE_GRID: the ROC's true positive rate at each false positive
    rate, and the interpolated precision (the best at that recall or more) at each recall; NaN
    rows where the test set lacks the class or has nothing else. A fixed grid keeps a 10,000
    image test set as small as a 300 image one."""

    grid: np.ndarray
    roc_tpr: np.ndarray
    pr_precision: np.ndarray
    roc_auc: list[float]
    average_precision: list[float]


def _interpolated_precision(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    order = np.argsort(recall, kind="stable")
    recall, precision = recall[order], precision[order]
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, CURVE_GRID, side="left")
    return np.where(index < len(recall), best_after[np.minimum(index, len(recall) - 1)], 0.0)


def _counts_above_thresholds(positive: np.ndarray, scores: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives among the images scored at or above each distinct score,
    highest score first: scikit-learn's `confusion_matrix_at_thresholds` without weights."""
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    last_of_each = np.append(np.flatnonzero(np.diff(scores)), len(scores) - 1)
    true_positives = np.cumsum(positive[order], dtype=np.float64)[last_of_each]
    return true_positives, 1 + last_of_each - true_positives


def class_curves(probabilities: np.ndarray, labels: np.ndarray) -> ClassCurves:
    """One-vs-rest ROC and precision-recall curves of every class, with their areas.

    The same arithmetic as scikit-learn's roc_curve, roc_auc_score, precision_recall_curve and
    average_precision_score, step for step (tests/test_evidence.py compares them on tied and
    untied scores), written out to spare the evaluate stage sklearn.metrics' import
    (docs/performance.md, "Hand-rolled replacements")."""
    classes = probabilities.shape[1]
    roc = np.full((classes, len(CURVE_GRID)), np.nan)
    pr = np.full((classes, len(CURVE_GRID)), np.nan)
    roc_auc, average_precision = [float("nan")] * classes, [float("nan")] * classes
    for k in range(classes):
        positive = labels == k
        if positive.all() or not positive.any():
            continue
        tps, fps = _counts_above_thresholds(positive, probabilities[:, k])
        # ROC: corners only (points on a straight run add nothing), from (0, 0)
        corner = np.ones(len(fps), bool)
        if len(fps) > 2:
            corner[1:-1] = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        fpr = np.append(0.0, fps[corner]) / fps[-1]
        tpr = np.append(0.0, tps[corner]) / tps[-1]
        roc[k] = np.interp(CURVE_GRID, fpr, tpr)
        roc_auc[k] = float(np.trapezoid(tpr, fpr))
        # precision-recall, recall falling to the (1, 0) end point
        precision = np.append((tps / (tps + fps))[::-1], 1.0)
        recall = np.append((tps / tps[-1])[::-1], 0.0)
        pr[k] = _interpolated_precision(recall, precision)
        average_precision[k] = float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))
    return ClassCurves(CURVE_GRID, roc, pr, roc_auc, average_precision)


@dataclass(frozen=True)
class LabelIssue:
    index: int  # into the test split
    given: int
    suggested: int
    confidence: float  # the models' mean probability of the suggested class


def label_issue_doubt(probabilities: np.ndarray, labels: np.ndarray) -> str | None:
    """Why the models' disputed labels should not be read as label errors (they are not
    accurate or calibrated enough to tell a wrong label from their own mistake), or None when
    they are good enough to claim them."""
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    if accuracy < LABEL_ERRORS_MIN_ACCURACY:
        return (f"the models together are {100 * accuracy:.1f} % accurate (under "
                f"{100 * LABEL_ERRORS_MIN_ACCURACY:.0f} %), so most of these are likely their "
                "own mistakes")
    ece = calibration(probabilities, labels).ece
    if ece > LABEL_ERRORS_MAX_ECE:
        return (f"the models' probabilities are miscalibrated (expected calibration error "
                f"{ece:.3f}, over {LABEL_ERRORS_MAX_ECE}), so their confidence cannot single "
                "out wrong labels")
    return None


def label_quality(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per test image, how likely its given label is right, 0..1 (cleanlab's
    `get_label_quality_scores`, self-confidence: the models' probability of the given label)."""
    from cleanlab.rank import get_label_quality_scores

    return np.asarray(get_label_quality_scores(labels, probabilities,
                                               method="self_confidence"), dtype=np.float64)


def label_issues(probabilities: np.ndarray, labels: np.ndarray) -> list[LabelIssue]:
    """Test images whose given label the models jointly and confidently disagree with:
    confident learning (cleanlab's `find_label_issues`, pruned by the noise rate estimated from
    the confident joint) on the out-of-sample test predictions, all of them, most doubtful
    first."""
    from cleanlab.filter import find_label_issues

    present = np.unique(labels)
    if len(present) < 2 or len(labels) < 2 * probabilities.shape[1]:
        return []
    ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence",
                               n_jobs=1)
    issues = []
    for index in ranked:
        suggested = int(probabilities[index].argmax())
        if suggested == labels[index]:
            continue
        issues.append(LabelIssue(int(index), int(labels[index]), suggested,
                                 float(probabilities[index, suggested])))
    return issues


@dataclass(frozen=True)
class Milestone:
    fraction: float  # of the best validation accuracy
    epoch: int
    seconds: float | None  # cumulative training time at that epoch; None without a timing


def time_to_accuracy(valid_accuracy: list[float], epoch_seconds: list[float] | None,
                     fractions: tuple[float, ...] = MILESTONES) -> list[Milestone]:
    """The first epoch (and training seconds) at which validation accuracy reached each
    fraction of its best."""
    best = max(valid_accuracy)
    elapsed = np.cumsum(epoch_seconds) if epoch_seconds else None
    milestones = []
    for fraction in fractions:
        epoch = next(i for i, value in enumerate(valid_accuracy) if value >= fraction * best)
        seconds = float(elapsed[epoch]) if elapsed is not None and epoch < len(elapsed) else None
        milestones.append(Milestone(fraction, epoch + 1, seconds))
    return milestones
