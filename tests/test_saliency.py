"""Where a model looks (pipeline/saliency.py): the occlusion windows the page's JavaScript
repeats, what occlusion and input gradient x input find on models whose answer is known, the
galleries' choice of images, and the maps in the evaluation record."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.artifacts import ArtifactError, load_arrays, save_arrays
from pipeline.evaluation import load_evaluation, save_evaluation
from pipeline.inference import evaluate
from pipeline.saliency import (
    GALLERY_IMAGES,
    SELFTEST_IMAGES,
    gallery,
    gradient_x_input,
    occlusion,
    occlusion_windows,
)
from tests.conftest import toy_splits
from tests.test_evaluation import toy_checkpoint


def test_the_occluding_square_covers_every_pixel_at_half_its_side_apart():
    assert occlusion_windows(8, 8) == (2, list(range(7)), list(range(7)))
    assert occlusion_windows(28, 28) == (4, list(range(0, 25, 2)), list(range(0, 25, 2)))
    side, tops, lefts = occlusion_windows(32, 20)
    assert side == 3 and tops[-1] == 29 and lefts[-1] == 17  # the last flush with the edge
    assert tops[:3] == [0, 1, 2]


def quadrant_model() -> nn.Module:
    """Class 0's logit is 10 x the ink in the top-left 4x4 quadrant of an 8x8 image; class 1's
    is a constant 2: it says 0 when that quadrant has ink."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 2.0]))
        mask = torch.zeros(8, 8)
        mask[:4, :4] = 10.0
        model[1].weight[0] = mask.flatten()
    return model


def test_occlusion_finds_the_ink_the_answer_depends_on():
    image = np.zeros((1, 8, 8), np.uint8)
    image[0, 1:3, 1:3] = 255  # ink in the quadrant: class 0
    image[0, 6, 6] = 255      # ink the model ignores
    saliency = occlusion(quadrant_model(), image)
    assert saliency.shape == (8, 8)
    assert saliency[1:3, 1:3].min() > 0.1  # hiding it loses class 0
    assert saliency[5:, 5:].max() == 0 and saliency[0:4, 5:].max() == 0


def test_input_gradient_times_input_of_a_linear_model_is_its_weights_times_the_pixels():
    image = np.random.default_rng(0).integers(0, 256, (1, 8, 8), dtype=np.uint8)
    image[0, :4, :4] = 255
    model = quadrant_model()
    expected = model[1].weight[0].detach().numpy().reshape(8, 8) * image[0] / 255
    np.testing.assert_allclose(gradient_x_input(model, image), expected, rtol=1e-6)


def test_the_gallery_shows_the_most_confidently_wrong_and_the_least_sure_right():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 2, 40)
    logits = rng.normal(size=(40, 2)) * 2
    found = gallery(quadrant_model(), False, images, logits, labels)
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    predicted, confidence = probabilities.argmax(1), probabilities.max(1)
    wrong = [i for i in np.argsort(-confidence) if predicted[i] != labels[i]][:GALLERY_IMAGES]
    unsure = [i for i in np.argsort(confidence) if predicted[i] == labels[i]][:GALLERY_IMAGES]
    assert found["wrong"].tolist() == wrong and found["unsure"].tolist() == unsure
    assert found["method"] == "gradient_x_input" and found["maps"].shape == (12, 8, 8)
    # the map explains the class the caption names (from the given logits), not a refit
    np.testing.assert_allclose(found["maps"][0], gradient_x_input(
        quadrant_model(), images[wrong[0]], int(predicted[wrong[0]])))


def test_the_evaluation_record_holds_the_gallery_and_the_selftest_maps(tmp_path):
    checkpoint, _ = toy_checkpoint(seeds=(0,))
    test = toy_splits()["test"]
    evaluation = evaluate(checkpoint, test, threads=1)
    found = evaluation.saliency
    assert found is not None and found["method"] == "occlusion"  # a convolutional model
    assert len(found["maps"]) == len(found["wrong"]) + len(found["unsure"]) > 0
    assert evaluation.selftest_saliency.shape == (SELFTEST_IMAGES, 4, 4)
    np.testing.assert_allclose(evaluation.selftest_saliency[0],
                               occlusion(checkpoint.build(), test.images[0]), atol=1e-7)
    save_evaluation(tmp_path / "e.pkl", evaluation)
    np.testing.assert_array_equal(load_evaluation(tmp_path / "e.pkl").saliency["maps"],
                                  found["maps"])
    stored = load_arrays(tmp_path / "e.pkl")
    stored["saliency"] = {**found, "maps": found["maps"][:1]}  # a map short
    save_arrays(tmp_path / "bad.pkl", stored)
    with pytest.raises(ArtifactError, match=r"bad\.pkl: its saliency gallery is not one"):
        load_evaluation(tmp_path / "bad.pkl")
