"""The report's click-through error analysis: which test images the page carries, and the
sprite sheet they are drawn from (pipeline/error_browser.py); the page itself is clicked in
Chromium by tests/test_e2e.py."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from pipeline.analysis import softmax
from pipeline.error_browser import SPRITE_COLUMNS, View, browser_data, chosen_images, views


def test_every_model_seed_ensemble_and_the_all_model_ensemble_is_a_view():
    a, b = np.zeros((5, 3)), np.ones((5, 3))
    found = views({"a": a, "b": b}, {"a": np.stack([a, a + 2]), "b": b[None]})
    assert [v.name for v in found] == ["a", "b", "a (seed ensemble)", "all-model ensemble"]
    np.testing.assert_allclose(found[2].logits, a + 1)
    np.testing.assert_allclose(found[3].logits, (a + b) / 2)


def test_each_cell_carries_its_most_confident_images_and_each_class_its_least_sure():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    logits = rng.normal(size=(500, 4)) * 3
    chosen = chosen_images([View("m", logits)], labels, per_list=5)
    probabilities = softmax(logits)
    predicted, confidence = probabilities.argmax(1), probabilities.max(1)
    for given in range(4):
        members = np.flatnonzero(labels == given)
        least_sure = members[np.argsort(probabilities[members, given])[:5]]
        assert set(least_sure) <= set(chosen)
        for guess in range(4):
            cell = np.flatnonzero((labels == given) & (predicted == guess))
            if guess == given or not len(cell):
                continue
            carried = [i for i in cell if i in set(chosen)]
            top = cell[np.argsort(-confidence[cell])[:5]]
            assert set(top) <= set(carried)
    assert len(chosen) < 500 and np.all(np.diff(chosen) > 0)


def test_a_colour_sprite_keeps_the_colours():
    images = np.random.default_rng(2).integers(0, 256, (3, 3, 4, 4), dtype=np.uint8)
    data, uri = browser_data([View("m", np.zeros((3, 2)))], np.array([0, 1, 0]), images,
                             np.ones(3), per_list=3)
    sheet = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert sheet.shape == (4, 12, 3)
    assert data["sprite"] == {"rows": 1, "columns": 3, "tile": [4, 4]}  # as the page lays it out
    for k, index in enumerate(data["index"]):
        assert np.array_equal(sheet[:, 4 * k : 4 * k + 4], images[index].transpose(1, 2, 0))


def test_the_sprite_holds_each_carried_image_at_its_index_dark_ink_on_light():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (SPRITE_COLUMNS + 7, 1, 6, 5), dtype=np.uint8)
    labels = np.arange(len(images)) % 2
    logits = np.zeros((len(images), 2))
    logits[:, 1] = 5.0  # every image predicted 1: the label-0 ones are all errors
    data, uri = browser_data([View("m", logits)], labels, images, np.ones(len(images)),
                             per_list=len(images))
    sheet = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert sheet.shape == (2 * 6, SPRITE_COLUMNS * 5)  # grey: one channel
    assert data["sprite"] == {"rows": 2, "columns": SPRITE_COLUMNS, "tile": [6, 5]}
    for k, index in enumerate(data["index"]):
        row, column = divmod(k, SPRITE_COLUMNS)
        tile = sheet[row * 6 : row * 6 + 6, column * 5 : column * 5 + 5]
        assert np.array_equal(tile, 255 - images[index, 0]), index
    view = data["views"][0]
    assert view["confusion"] == [[0, int((labels == 0).sum())], [0, int((labels == 1).sum())]]
    assert view["predicted"] == [1] * len(data["index"])
    assert view["top"][0] == [1, 0] and sum(view["top_p"][0]) == 1000
