"""The embedding map's data (pipeline/embedding.py): which test images are placed, what
features the map is made of, and the projections the evaluate stage stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.artifacts import ArtifactError, load_arrays, save_arrays
from pipeline.embedding import penultimate_features, project, shown_points
from pipeline.evaluation import load_evaluation, save_evaluation
from pipeline.inference import evaluate
from tests.conftest import toy_splits
from tests.test_evaluation import toy_checkpoint


def test_every_test_image_is_placed_up_to_the_cap_then_the_same_share_of_each_class():
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    assert np.array_equal(shown_points(labels, limit=1000), np.arange(1000))
    chosen = shown_points(labels, limit=100)
    assert len(chosen) == 100 and np.all(np.diff(chosen) > 0)
    assert np.bincount(labels[chosen]).tolist() == [60, 30, 10]
    assert np.array_equal(chosen, shown_points(labels, limit=100))  # the same for every model
    odd = shown_points(np.repeat([0, 1, 2], [1, 1, 998]), limit=10)  # shares 0.01, 0.01, 9.98
    assert len(odd) == 10 and np.bincount(np.repeat([0, 1, 2], [1, 1, 998])[odd]).tolist() \
        == [0, 0, 10]


def test_the_features_are_what_the_last_linear_layer_receives():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(5, 3))
    images = torch.randint(0, 256, (7, 1, 4, 4), dtype=torch.uint8)
    features = penultimate_features(model, images, bf16=False, channels_last=False)
    with torch.no_grad():
        expected = torch.relu(model[1](images.float().div(255).flatten(1)))
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-6)  # dropout off: eval mode
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))  # softmax regression: the pixels
    np.testing.assert_allclose(penultimate_features(linear, images, False, False),
                               images.float().div(255).flatten(1).numpy())


def test_pca_and_tsne_keep_separate_clusters_apart_in_a_unit_box(monkeypatch):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 20)) * 10
    features = np.concatenate([c + rng.normal(size=(40, 20)) for c in centres])
    maps = project(features)
    for points in (maps["pca"], maps["tsne"]):
        assert points.shape == (120, 2) and points.min() >= 0 and points.max() <= 1
        groups = points.reshape(3, 40, 2)
        spread = max(np.linalg.norm(g - g.mean(0), axis=1).max() for g in groups)
        gaps = [np.linalg.norm(a.mean(0) - b.mean(0)) for i, a in enumerate(groups)
                for b in groups[i + 1:]]
        assert min(gaps) > spread
    monkeypatch.setattr("pipeline.embedding.TSNE_MAX_POINTS", 100)
    assert project(features)["tsne"] is None  # too many points for t-SNE: PCA only


def test_the_evaluation_record_holds_the_map_and_older_records_still_load(tmp_path):
    checkpoint, _ = toy_checkpoint(seeds=(0,))
    test = toy_splits()["test"]
    evaluation = evaluate(checkpoint, test, threads=1)
    found = evaluation.embedding
    assert found is not None and np.array_equal(found["index"], np.arange(len(test.labels)))
    assert found["features"] == 8 and found["pca"].shape == found["tsne"].shape == (64, 2)
    save_evaluation(tmp_path / "e.pkl", evaluation)
    np.testing.assert_array_equal(load_evaluation(tmp_path / "e.pkl").embedding["tsne"],
                                  found["tsne"])

    stored = load_arrays(tmp_path / "e.pkl")
    del stored["embedding"]  # a record from before the map
    save_arrays(tmp_path / "old.pkl", stored)
    assert load_evaluation(tmp_path / "old.pkl").embedding is None
    stored["embedding"] = {**found, "pca": np.zeros((3, 2))}  # not one point per index
    save_arrays(tmp_path / "bad.pkl", stored)
    with pytest.raises(ArtifactError, match=r"bad\.pkl: its embedding map is not one"):
        load_evaluation(tmp_path / "bad.pkl")
