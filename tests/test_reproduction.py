"""pipeline-verify's statistics: three verdicts from the strongest evidence both runs have."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.experiments import Experiment
from pipeline.params import VerifyParams
from pipeline.reproduction import (
    DIFFERS,
    INCONCLUSIVE,
    REPRODUCED,
    compare,
    headline,
    paired_interval,
    seed_margin,
)
from pipeline.tracking import SeedSummary, Summary

RUN = ("digits", "cnn")
SETTINGS = VerifyParams(margin=1.0, seed_coverage=0.95)


def correct_vector(n: int, accuracy: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vector = np.zeros(n, bool)
    vector[rng.choice(n, round(n * accuracy), replace=False)] = True
    return vector


def flip(vector: np.ndarray, right: int, wrong: int, seed: int = 0) -> np.ndarray:
    """A copy with `right` wrong images made right and `wrong` right images made wrong."""
    rng = np.random.default_rng(seed)
    out = vector.copy()
    out[rng.choice(np.flatnonzero(~vector), right, replace=False)] = True
    out[rng.choice(np.flatnonzero(vector), wrong, replace=False)] = False
    return out


def experiment(name: str, correct: np.ndarray | None = None, seeds: SeedSummary | None = None,
               accuracy: float | None = None, images: int | None = None,
               machine: dict | None = None, **params) -> Experiment:
    found = Experiment(name, {"train.epochs": 10, **params})
    if correct is not None:
        found.correct[RUN] = correct
        accuracy = float(correct.mean())
    if accuracy is not None:
        found.summaries[RUN] = Summary(accuracy, 0.1, 9, accuracy, 26194, seeds)
    if images:  # dvclive's confusion file: actual and predicted class per test image
        hits = round(images * accuracy)
        found.predictions[RUN] = (["1"] * images, ["1"] * hits + ["2"] * (images - hits))
    found.made_on[RUN] = machine or {"cpu": "AMD EPYC", "threads": 2}
    return found


def verdict_of(ours: Experiment, theirs: Experiment):
    [verdict] = compare(ours, theirs, [RUN], SETTINGS)
    return verdict


def test_the_same_predictions_reproduce_with_a_zero_width_interval():
    correct = correct_vector(10_000, 0.95, seed=1)
    verdict = verdict_of(experiment("ours", correct), experiment("theirs", correct))
    assert verdict.verdict == REPRODUCED and verdict.evidence == "evaluation records"
    assert verdict.difference == verdict.low == verdict.high == 0
    assert "the same 10,000 test images right" in verdict.reason


def test_a_few_images_judged_differently_on_a_large_test_set_reproduce():
    theirs = correct_vector(10_000, 0.95, seed=1)
    ours = flip(theirs, right=30, wrong=40)  # -0.10 points, 70 disagreements
    verdict = verdict_of(experiment("ours", ours), experiment("theirs", theirs))
    assert verdict.verdict == REPRODUCED and verdict.level == 0.90
    assert -1 < verdict.low < verdict.difference < verdict.high < 1
    assert math.isclose(verdict.difference, -0.10, abs_tol=1e-9)
    assert "70 of 10,000 test images judged differently" in verdict.reason


def test_a_model_far_worse_than_the_reference_differs_with_an_interval_clear_of_the_margin():
    theirs = correct_vector(2_000, 0.95, seed=2)
    ours = flip(theirs, right=10, wrong=210)  # -10 points
    verdict = verdict_of(experiment("ours", ours, **{"models.cnn.train.epochs": 2}),
                         experiment("theirs", theirs, **{"models.cnn.train.epochs": 60}))
    assert verdict.verdict == DIFFERS and verdict.level == 0.95
    assert verdict.high < -1 and math.isclose(verdict.difference, -10.0)
    assert "models.cnn.train.epochs 60 → 2" in verdict.reason  # what bears on this run


def test_a_small_test_set_is_inconclusive_and_says_how_many_images_would_settle_it():
    theirs = correct_vector(360, 0.95, seed=3)
    ours = flip(theirs, right=2, wrong=6)  # -1.1 points on 360 images: can't tell
    verdict = verdict_of(experiment("ours", ours), experiment("theirs", theirs))
    assert verdict.verdict == INCONCLUSIVE
    assert verdict.low < -1 < verdict.high
    needed = int(verdict.settle.split()[1].replace(",", ""))
    assert needed > 360 and "test images would settle it" in verdict.settle


def test_the_seed_spread_widens_the_margin_as_two_seeds_would_differ():
    assert seed_margin(None, SETTINGS) == 0.0
    # 95 % of the differences of two seeds with spread s lie within 1.96 * sqrt(2) * s
    assert math.isclose(seed_margin(0.01, SETTINGS), 1.959964 * math.sqrt(2) * 0.01,
                        rel_tol=1e-5)
    spread = SeedSummary(count=3, test_accuracy_mean=0.95, test_accuracy_std=0.01,
                         ensemble_test_accuracy=0.96)
    theirs = correct_vector(360, 0.95, seed=3)
    ours = flip(theirs, right=2, wrong=6)
    verdict = verdict_of(experiment("ours", ours, seeds=spread),
                         experiment("theirs", theirs, seeds=spread))
    assert math.isclose(verdict.margin, 100 * seed_margin(0.01, SETTINGS))
    assert verdict.verdict == REPRODUCED and "seed spread 1.00 pts" in verdict.reason


def test_without_evaluation_records_dvclive_predictions_pair_the_images():
    ours = experiment("ours", accuracy=0.95, images=4000)
    theirs = experiment("theirs", accuracy=0.95, images=4000)
    verdict = verdict_of(ours, theirs)
    assert verdict.evidence == "dvclive predictions" and verdict.verdict == REPRODUCED


def test_other_prepared_data_are_not_compared_image_by_image():
    ours = experiment("ours", correct_vector(4000, 0.9, 1), images=4000)
    theirs = experiment("theirs", correct_vector(4000, 0.9, 2), images=4000)
    ours.prepared["digits"], theirs.prepared["digits"] = "a" * 32, "b" * 32
    verdict = verdict_of(ours, theirs)
    assert verdict.evidence == "accuracies" and "the prepared data differ" in verdict.reason


def test_seed_means_decide_when_only_metrics_and_several_seeds_are_there():
    def seeds(mean):
        return SeedSummary(count=5, test_accuracy_mean=mean, test_accuracy_std=0.004,
                           ensemble_test_accuracy=mean)

    same = verdict_of(experiment("ours", seeds=seeds(0.951), accuracy=0.95),
                      experiment("theirs", seeds=seeds(0.952), accuracy=0.95))
    assert same.verdict == REPRODUCED and same.evidence == "seed means (5 vs 5 seeds)"
    far = verdict_of(experiment("ours", seeds=seeds(0.90), accuracy=0.90),
                     experiment("theirs", seeds=seeds(0.95), accuracy=0.95))
    assert far.verdict == DIFFERS and far.high < -far.margin


def test_with_only_two_accuracies_the_binomial_interval_decides():
    verdict = verdict_of(experiment("ours", accuracy=0.80, images=500),
                         experiment("theirs", accuracy=0.95, images=500))
    # different labels lists would make the pairing impossible; here they pair
    assert verdict.verdict == DIFFERS
    ours, theirs = experiment("ours", accuracy=0.80), experiment("theirs", accuracy=0.95)
    ours.predictions[RUN] = (["1"] * 500, ["1"] * 400 + ["2"] * 100)
    theirs.predictions[RUN] = (["2"] * 500, ["2"] * 475 + ["1"] * 25)
    unpaired = verdict_of(ours, theirs)
    assert unpaired.evidence == "accuracies" and unpaired.verdict == DIFFERS
    assert "their test labels differ" in unpaired.reason


def test_nothing_to_compare_is_inconclusive_and_says_so():
    verdict = verdict_of(experiment("ours"), experiment("theirs", accuracy=0.9))
    assert verdict.verdict == INCONCLUSIVE and verdict.evidence == "none"
    assert verdict.reason.startswith("no result to compare")


def test_another_machine_is_named_in_the_reason_and_the_headline():
    correct = correct_vector(1000, 0.9, seed=4)
    ours = experiment("ours", correct, machine={"cpu": "Intel Xeon", "threads": 2})
    theirs = experiment("theirs", correct, machine={"cpu": "AMD EPYC", "threads": 2,
                                                    "device": "cpu", "bf16": True})
    [verdict] = compare(ours, theirs, [RUN], SETTINGS)
    assert "made differently: bf16, cpu, device" in verdict.reason
    line = headline([verdict], "commit abc1234", theirs)
    assert line.startswith("This run vs commit abc1234 (made on AMD EPYC, cpu, bf16 on")
    assert line.endswith("1 of 1 models reproduced within ±1 pt")


@pytest.mark.parametrize("level", [0.90, 0.95])
def test_the_paired_interval_covers_the_difference_and_narrows_with_more_images(level):
    small = correct_vector(400, 0.9, seed=5)
    large = correct_vector(40_000, 0.9, seed=5)
    low_s, high_s = paired_interval(flip(small, 4, 8), small, level)
    low_l, high_l = paired_interval(flip(large, 400, 800), large, level)
    assert low_s < -0.01 < high_s and low_l < -0.01 < high_l
    assert high_l - low_l < (high_s - low_s) / 5
