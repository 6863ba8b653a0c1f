"""The benchmark's parts: the synthetic data, the tutorial loop copy, and a tiny end-to-end run."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import run, tutorial
from benchmarks.peers import PEER_SETTINGS
from benchmarks.synthetic import csv_bytes, make_images, write_csv
from pipeline.datasets import CsvLayout
from pipeline.ingest import read_image_csv


def test_synthetic_images_are_deterministic_balanced_and_half_zero():
    labels, pixels = make_images(2000, seed=5)
    again_labels, again_pixels = make_images(2000, seed=5)
    np.testing.assert_array_equal(labels, again_labels)
    np.testing.assert_array_equal(pixels, again_pixels)
    assert pixels.shape == (2000, 784) and pixels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [200] * 10
    assert 0.4 < (pixels == 0).mean() < 0.6
    assert pixels.max() == 255


def test_synthetic_csv_reads_back_the_same_with_pandas_and_the_pipeline(tmp_path):
    labels, pixels = make_images(300, seed=1)
    data = csv_bytes(labels, pixels)
    frame = pd.read_csv(io.BytesIO(data))
    assert list(frame.columns[:3]) == ["label", "pixel1", "pixel2"]
    np.testing.assert_array_equal(frame["label"], labels)
    np.testing.assert_array_equal(frame.drop(columns="label"), pixels)
    table = read_image_csv(write_csv(tmp_path / "s.csv", 300, seed=1),
                           CsvLayout(784, 10, True, "label"))
    np.testing.assert_array_equal(table.images, pixels)


def test_the_tutorial_dataset_scales_reshapes_and_one_hot_encodes():
    pixels = np.array([[0, 255, 51, 102]], dtype=np.uint8)
    image, target = tutorial.TutorialDataset(pixels, np.array([2]), (1, 2, 2), 3)[0]
    assert image.dtype == torch.float32 and image.shape == (1, 2, 2)
    torch.testing.assert_close(image.flatten(), torch.tensor([0.0, 1.0, 0.2, 0.4]))
    assert target.tolist() == [0.0, 0.0, 1.0]


@pytest.mark.slow
def test_a_tiny_benchmark_run_writes_json_and_markdown(tmp_path, monkeypatch):
    # torch.compile takes a minute on 2 cores; the full benchmark measures it, not this test
    monkeypatch.setitem(PEER_SETTINGS, "jit_compile", False)
    code = run.main(["--rows", "500", "--epochs", "2", "--repeats", "1", "--scaling", "300",
                     "--skip-dvc", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "cpu.json").read_text())
    assert code in (0, 1)  # goals need full-size data; at 500 rows they may well fail
    assert results["ingest"]["rows"] == 500
    assert results["ingest"]["pipeline"]["seconds"]["median"] > 0
    training = results["training"]
    assert training["peaks"]["matmul_fp32"] > 0
    for model in ("cnn", "linearnet"):
        entry = training[model]
        assert entry["train_rows"] == 400 and entry["epochs"] == 2
        assert entry["train_flops_per_image"] > 0
        for loop in ("pipeline", "tutorial", "lightning", "keras"):
            assert len(entry[loop]["epoch_seconds"]["runs"]) == 2
            assert 0 <= entry[loop]["accuracy"] <= 1
            assert entry[loop]["gflops"] > 0
        assert set(entry["speedup"]) == {"tutorial", "lightning", "keras"}
    assert training["cnn"]["conv_peak_gflops"] > 0
    assert training["linearnet"]["conv_peak_gflops"] is None
    assert [row["rows"] for row in results["scaling"]] == [300]
    augmentation = results["augmentation"]
    assert len(augmentation["plain"]["runs"]) == len(augmentation["augmented"]["runs"]) == 2
    assert augmentation["overhead"] > -1 and "augmentation overhead" in results["goals"]
    assert {"ingest speed", "ingest memory", "cnn vs lightning speed", "cnn vs keras accuracy",
            "linearnet vs tutorial speed"} <= set(results["goals"])
    table = (tmp_path / "cpu.md").read_text()
    for text in ("`cnn` epoch vs Lightning", "`linearnet` epoch vs Keras", "pandas.read_csv",
                 "Augmentation (translate 0.1, rotate 10",
                 "GFLOP/s bf16 matmul" if training["bf16"] else "GFLOP/s fp32 matmul"):
        assert text in table


def test_stage_breakdown_sums_each_kind_of_stage():
    records = [
        {"stage": "train", "started": 0.0, "imported": 1.5, "finished": 4.0, "phases": {}},
        {"stage": "train", "started": 5.0, "imported": 6.0, "finished": 6.5, "phases": {}},
        {"stage": "report", "started": 7.0, "imported": 7.5, "finished": 10.0,
         "phases": {"figures": 2.0}},
    ]
    kinds = run.stage_breakdown(records)
    assert kinds["train"] == {"processes": 2, "seconds": 5.5, "imports": 2.5, "work": 3.0,
                              "figures": 0.0}
    assert kinds["report"] == {"processes": 1, "seconds": 3.0, "imports": 0.5, "work": 0.5,
                               "figures": 2.0}
