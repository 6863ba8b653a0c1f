from __future__ import annotations

import numpy as np
import pytest

from pipeline import analysis
from pipeline.architectures import ConvNet, Linear
from pipeline.models import build


def test_pareto_front_keeps_models_nothing_beats_on_both_axes():
    points = {"tiny": (100, 0.80), "small": (1_000, 0.90), "bloated": (50_000, 0.89),
              "big": (100_000, 0.95), "twin": (1_000, 0.90)}
    assert analysis.pareto_front(points) == ["tiny", "small", "twin", "big"]


def test_most_confused_pairs_are_off_diagonal_and_sorted():
    confusion = np.array([[50, 3, 0], [9, 40, 1], [0, 0, 30]])
    assert analysis.most_confused(confusion, ["a", "b", "c"], top=5) == [
        ("b", "a", 9), ("a", "b", 3), ("b", "c", 1)]


def test_ensemble_averages_logits():
    labels = np.array([0, 1, 1])
    first = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])   # 2 of 3 right
    second = np.array([[0.0, 1.0], [0.0, 3.0], [0.0, 4.0]])  # 2 of 3 right
    result = analysis.ensemble({"first": first, "second": second}, labels)
    assert result["members"] == {"first": pytest.approx(2 / 3), "second": pytest.approx(2 / 3)}
    assert result["accuracy"] == 1.0
    assert result["gain_over_best"] == pytest.approx(1 / 3)


def test_a_seed_ensemble_adds_the_mean_and_spread_of_its_seeds():
    labels = np.array([0, 1, 1, 0])
    seeds = {"seed 0": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]),   # 3/4
             "seed 1": np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])}   # 3/4
    result = analysis.seed_ensemble(seeds, labels)
    assert result["mean"] == pytest.approx(0.75) and result["std"] == 0.0
    assert result["accuracy"] == 1.0 and set(result["members"]) == set(seeds)
    single = analysis.seed_ensemble({"seed 0": seeds["seed 0"]}, labels)
    assert single["std"] == 0.0 and single["accuracy"] == 0.75


def test_per_class_scores_match_hand_counts():
    scores = analysis.per_class_scores(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]),
                                       ["cat", "dog"])
    assert scores[0] == analysis.ClassScores("cat", 1.0, 0.5, pytest.approx(2 / 3), 2)
    assert scores[1].precision == pytest.approx(2 / 3) and scores[1].recall == 1.0


def test_per_class_scores_agree_with_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 5, 300), rng.integers(0, 4, 300)  # class 4 never guessed
    expected = precision_recall_fscore_support(labels, predicted, labels=range(6),
                                               zero_division=0)
    scores = analysis.per_class_scores(labels, predicted, list("abcdef"))
    for field, values in zip(("precision", "recall", "f1", "support"), expected, strict=True):
        np.testing.assert_allclose([getattr(s, field) for s in scores], values)


def test_confusion_matrix_counts_true_by_predicted():
    confusion = analysis.confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_feature_maps_have_the_first_convolution_s_shape():
    model = build(ConvNet(channels=[5], activation="relu"), (1, 4, 4), 3)
    image = np.random.default_rng(0).integers(0, 255, (1, 4, 4)).astype(np.uint8)
    assert analysis.first_block_maps(model, image).shape == (5, 4, 4)
    assert analysis.first_block_maps(build(Linear(), (1, 4, 4), 3), image) is None
    logits = np.random.default_rng(1).normal(size=(7, 3))
    np.testing.assert_allclose(analysis.softmax(logits).sum(1), 1.0, rtol=1e-6)


def test_telling_examples_are_not_the_easy_ones():
    probabilities = np.array([[0.99, 0.01], [0.55, 0.45], [0.2, 0.8], [0.9, 0.1], [0.7, 0.3],
                              [0.05, 0.95]])
    labels = np.array([0, 0, 1, 1, 0, 1])  # index 3 is wrong, confidently
    picks = analysis.telling_examples(probabilities, labels, 4).tolist()
    assert picks[0] == 3 and picks[1] == 1  # most confident wrong, least confident right
    assert len(set(picks)) == 4 and 0 not in picks[:2]
    assert len(analysis.telling_examples(probabilities[:1], labels[:1], 4)) == 1
