from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from pipeline.artifacts import read_json
from pipeline.datasets import CsvDataset
from pipeline.formats import materialise
from pipeline.ingest import DataError
from pipeline.params import DownloadParams, PrepareParams
from pipeline.preparation import prepare, split_dataset
from pipeline.splits import load_split
from tests.conftest import FASHION_CLASSES, FASHION_SAMPLE, ROOT, run_module


def fashion_dataset(**overrides) -> CsvDataset:
    fields = {"format": "csv", "train": {"path": str(FASHION_SAMPLE)}, "shape": (1, 28, 28),
              "classes": FASHION_CLASSES, "label_column": "label", **overrides}
    return CsvDataset(**fields)


@pytest.mark.parametrize("rows, weights, fraction, seed", [
    (1797, [1] * 10, 0.2, 42),            # digits-sized, balanced
    (1000, [1] * 10, 0.2, 42),            # the Fashion sample: shares with ties to break
    (503, [50, 20, 5, 3, 1, 1], 0.25, 0),  # imbalanced, down to a handful of rows
    (60, [1, 1, 1], 0.1, 7),
    (5000, [3, 1, 1, 1, 2], 0.33, 123),
])
def test_the_split_draws_the_rows_scikit_learn_s_train_test_split_draws(rows, weights,
                                                                        fraction, seed):
    """pipeline.splits.stratified_indices writes out train_test_split(stratify=...) (importing
    scikit-learn was 0.5 s of the prepare stage): the same rows on each side, in the same
    order, so the tutorials' 48,000/12,000 split stays theirs."""
    from sklearn.model_selection import train_test_split

    from pipeline.preparation import stratified_split

    rng = np.random.default_rng(seed)
    labels = rng.choice(len(weights), rows, p=np.array(weights) / sum(weights))
    labels[: 2 * len(weights)] = np.repeat(np.arange(len(weights)), 2)  # 2+ rows a class
    images = np.arange(rows)[:, None]  # each image is its row number
    theirs = train_test_split(images, labels, test_size=fraction, random_state=seed,
                              stratify=labels, shuffle=True)
    rest_x, rest_y, held_x, held_y = stratified_split(images, labels, fraction, seed, "valid")
    for ours, expected in zip((rest_x, held_x, rest_y, held_y), theirs, strict=True):
        np.testing.assert_array_equal(ours, expected)


def test_split_is_stratified_80_20_and_deterministic():
    labels = np.repeat(np.arange(10), 100)
    images = np.arange(1000, dtype=np.uint8).reshape(1000, 1)
    settings = PrepareParams(valid_fraction=0.2, seed=42)
    first = split_dataset(images, labels, (images[:10], labels[:10]), settings)
    second = split_dataset(images, labels, (images[:10], labels[:10]), settings)
    assert len(first["train"][1]) == 800 and len(first["valid"][1]) == 200
    assert np.bincount(first["valid"][1]).tolist() == [20] * 10
    for name in ("train", "valid"):
        np.testing.assert_array_equal(first[name][0], second[name][0])


def test_without_a_test_file_a_stratified_test_set_is_split_off():
    labels = np.repeat(np.arange(4), 50)
    images = np.arange(200, dtype=np.uint8).reshape(200, 1)
    splits = split_dataset(images, labels, None, PrepareParams(test_fraction=0.25,
                                                               valid_fraction=0.2))
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 120, "valid": 30, "test": 50}
    everything = np.concatenate([v[0][:, 0] for v in splits.values()])
    assert sorted(everything.tolist()) == list(range(200))


def test_a_class_too_small_to_stratify_is_explained():
    labels = np.array([0] * 20 + [1])
    with pytest.raises(DataError, match="train.csv: class 'cat' has 1 row; a stratified test"):
        split_dataset(np.zeros((21, 1), np.uint8), labels, None, PrepareParams(), "train.csv",
                      ["dog", "cat"])
    with pytest.raises(DataError, match="train.csv: a validation set of 20% of 6 rows would"):
        split_dataset(np.zeros((6, 1), np.uint8), np.array([0, 0, 1, 1, 2, 2]),
                      (np.zeros((1, 1), np.uint8), np.zeros(1, np.int64)), PrepareParams(),
                      "train.csv")


def test_prepare_writes_safe_pickles_and_a_quality_report(tmp_path):
    raw = tmp_path / "raw"
    materialise("f", fashion_dataset(), raw, tmp_path / "cache", DownloadParams())
    out = tmp_path / "prepared"
    quality = prepare(raw, out, fashion_dataset(), PrepareParams())
    assert quality["split_sizes"] == {"train": 640, "valid": 160, "test": 200}
    splits = {name: load_split(out / f"{name}.pkl") for name in ("train", "valid", "test")}
    assert splits["train"].images.shape == (640, 1, 28, 28)
    assert splits["train"].classes == FASHION_CLASSES
    assert sum(len(s.labels) for s in splits.values()) == 1000
    saved = read_json(out / "quality.json")
    assert saved["files"]["train"]["rows_read"] == 1000
    assert sum(saved["class_counts"]["test"]) == 200
    assert saved["duplicates_within"]["train"] >= 0


def test_prepare_is_byte_for_byte_reproducible(tmp_path):
    raw = tmp_path / "raw"
    materialise("f", fashion_dataset(), raw, tmp_path / "cache", DownloadParams())
    prepare(raw, tmp_path / "a", fashion_dataset(), PrepareParams())
    prepare(raw, tmp_path / "b", fashion_dataset(), PrepareParams())
    for name in ("train.pkl", "valid.pkl", "test.pkl", "quality.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_rows_in_drop_mode_are_counted_in_quality_json(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    text = FASHION_SAMPLE.read_text().splitlines()
    text[5] = text[5].replace(",0,", ",x,", 1)
    (raw / "train.csv").write_text("\n".join(text) + "\n")
    quality = prepare(raw, tmp_path / "out", fashion_dataset(),
                      PrepareParams(on_bad_row="drop", max_bad_fraction=0.01))
    assert quality["files"]["train"]["dropped_by_reason"] == {"non-numeric value": 1}
    assert sum(quality["split_sizes"].values()) == 999


def test_a_failed_prepare_leaves_no_output(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copyfile(FASHION_SAMPLE, raw / "train.csv")
    with open(raw / "train.csv", "a") as handle:
        handle.write("\n11" + ",0" * 784 + "\n")  # the sample has no final newline
    with pytest.raises(DataError, match="line 1002, column 1 \\('label'\\)"):
        prepare(raw, tmp_path / "out", fashion_dataset(), PrepareParams())
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_the_prepare_stage_runs_as_dvc_runs_it(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["fashion"] = fashion_dataset().model_dump(mode="json", exclude_none=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copyfile(FASHION_SAMPLE, raw / "train.csv")
    args = ["--params", str(tmp_path / "params.yaml"), "--dataset", "fashion",
            "--raw", str(raw), "--out", str(tmp_path / "prepared")]
    done = run_module("pipeline.stages.prepare", *args)
    assert done.returncode == 0, done.stderr
    assert "fashion: train 640, valid 160, test 200 rows" in done.stdout
    assert load_split(tmp_path / "prepared" / "test.pkl").images.shape == (200, 1, 28, 28)

    text = FASHION_SAMPLE.read_text().rstrip("\n")
    (raw / "train.csv").write_text(text + "\n3," + ",".join(["0"] * 783) + ",x\n")
    failed = run_module("pipeline.stages.prepare", *args[:-1], str(tmp_path / "again"))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith(f"error: {raw / 'train.csv'}, line 1002, column 785")
    assert not (tmp_path / "again").exists()


def test_test_images_also_in_train_are_counted_after_the_split(tmp_path):
    """A dataset without a test file: the train file's duplicates can land on both sides of
    the split, and the leakage count says how many test images the models also trained on."""
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = FASHION_SAMPLE.read_text().splitlines()
    header, rows = lines[0], lines[1:201]
    (raw / "train.csv").write_text("\n".join([header, *rows, *rows]) + "\n")  # every row twice
    quality = prepare(raw, tmp_path / "out", fashion_dataset(), PrepareParams())
    splits = {name: load_split(tmp_path / "out" / f"{name}.pkl")
              for name in ("train", "valid", "test")}
    seen = {image.tobytes() for name in ("train", "valid") for image in splits[name].images}
    expected = sum(image.tobytes() in seen for image in splits["test"].images)
    assert quality["test_images_also_in_train"] == expected > 0
    assert quality["duplicates_within"]["train"] == 200
