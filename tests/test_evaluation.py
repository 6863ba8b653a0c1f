"""The evaluate stage's record: computed once from a checkpoint, read back by the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from pipeline.architectures import Cnn
from pipeline.artifacts import ArtifactError, load_arrays, save_arrays
from pipeline.checkpoint import Checkpoint
from pipeline.cli import PROFILE_ENV
from pipeline.engine import fit
from pipeline.evaluation import load_evaluation, save_evaluation
from pipeline.inference import evaluate
from pipeline.params import TrainSettings
from tests.conftest import CPU, ROOT, run_module, toy_splits


def toy_checkpoint(seeds=(0, 1)) -> tuple[Checkpoint, list]:
    architecture = Cnn(channels=[4, 8], head_hidden=8)
    splits = toy_splits()
    results = [fit(architecture, TrainSettings(epochs=4, batch_size=32, lr=0.01), splits, CPU,
                   seed=seed, amp=False, log=lambda _: None) for seed in seeds]
    return Checkpoint(architecture, (1, 4, 4), ["left", "right"],
                      [r.state_dict for r in results], results[0].initial_state_dict, "toy",
                      "cnn", {"seeds": list(seeds), "bf16": False, "channels_last": True}), results


def test_evaluation_holds_what_training_measured_for_every_seed_copy():
    checkpoint, results = toy_checkpoint()
    test = toy_splits()["test"]
    evaluation = evaluate(checkpoint, test, threads=1)
    assert evaluation.logits.shape == (2, 64, 2) and evaluation.seeds == [0, 1]
    # where it ran is recorded, on the CPU at the checkpoint's precision
    evaluated = evaluation.made_on["evaluated"]
    assert evaluated["device"] == "cpu" and evaluated["bf16"] is False
    assert evaluated["torch"] == torch.__version__ and evaluated["threads"] == 1
    for logits, result in zip(evaluation.logits, results, strict=True):
        np.testing.assert_allclose(logits, result.test_logits, rtol=1e-5, atol=1e-6)
    predicted = evaluation.logits[0].argmax(1)
    assert evaluation.confusion.sum() == 64
    assert np.trace(evaluation.confusion) == (predicted == test.labels).sum()
    assert [s.name for s in evaluation.scores] == ["left", "right"]
    assert evaluation.params == sum(r.params for r in evaluation.layers)
    assert evaluation.filters.shape == (4, 3, 3) and evaluation.feature_maps.shape == (4, 4, 4)
    histogram = evaluation.weight_histograms["conv1.weight"]
    assert histogram.initial.sum() == histogram.trained.sum() == histogram.size == 36
    initial = checkpoint.initial_state_dict["conv1.weight"].numpy()
    assert histogram.edges[0] <= initial.min() and histogram.edges[-1] >= initial.max()
    assert evaluation.interval.low <= evaluation.interval.estimate <= evaluation.interval.high
    assert evaluation.seed_interval is not None  # two seed copies
    assert sum(evaluation.calibration.bin_count) == 64
    assert "conv1.bias" not in evaluation.weight_histograms


def test_an_evaluation_round_trips_and_a_foreign_file_is_refused(tmp_path):
    checkpoint, _ = toy_checkpoint(seeds=(0,))
    evaluation = evaluate(checkpoint, toy_splits()["test"], threads=1)
    save_evaluation(tmp_path / "e.pkl", evaluation)
    loaded = load_evaluation(tmp_path / "e.pkl")
    np.testing.assert_array_equal(loaded.logits, evaluation.logits)
    assert loaded.layers == evaluation.layers and loaded.scores == evaluation.scores
    assert loaded.confused == evaluation.confused and loaded.interval == evaluation.interval
    assert loaded.calibration == evaluation.calibration and loaded.seed_interval is None
    assert isinstance(loaded.layers[0].output_shape, tuple)
    for name, histogram in evaluation.weight_histograms.items():
        np.testing.assert_array_equal(loaded.weight_histograms[name].trained, histogram.trained)
    np.testing.assert_array_equal(loaded.class_curves.roc_tpr, evaluation.class_curves.roc_tpr)
    # stored as plain values (the safe unpickler admits no classes), in the layout of every
    # earlier record, so other revisions' records still load
    stored = load_arrays(tmp_path / "e.pkl")
    assert stored["interval"] == {"estimate": evaluation.interval.estimate,
                                  "low": evaluation.interval.low,
                                  "high": evaluation.interval.high}
    assert all(isinstance(pair, list) for pair in stored["confused"])
    save_arrays(tmp_path / "other.pkl", {"images": np.zeros(3)})
    with pytest.raises(ArtifactError, match="not an evaluation written by the evaluate stage"):
        load_evaluation(tmp_path / "other.pkl")
    stored["calibration"] = {"ece": 0.1}
    save_arrays(tmp_path / "broken.pkl", stored)
    with pytest.raises(ArtifactError, match=r"broken\.pkl: not an evaluation .*TypeError"):
        load_evaluation(tmp_path / "broken.pkl")


def test_the_evaluate_stage_runs_as_dvc_runs_it(tmp_path):
    """One process evaluates every model of the run; a bad checkpoint leaves no output."""
    checkpoint, _ = toy_checkpoint(seeds=(0,))
    (tmp_path / "models").mkdir()
    checkpoint.save(tmp_path / "models" / "cnn.pt")
    checkpoint.save(tmp_path / "models" / "linear.pt")
    test = toy_splits()["test"]
    save_arrays(tmp_path / "test.pkl", {"images": test.images, "labels": test.labels,
                                        "classes": test.classes})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["run"]["models"] = ["cnn", "linear"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "eval"
    profile = tmp_path / "profile.jsonl"
    done = run_module("pipeline.stages.evaluate", "--params", str(tmp_path / "params.yaml"),
                      "--checkpoints", str(tmp_path / "models"), "--test",
                      str(tmp_path / "test.pkl"), "--out", str(out),
                      env={PROFILE_ENV: str(profile)})
    assert done.returncode == 0, done.stderr
    # PIPELINE_PROFILE: one line, the stage's process from start through imports to its end
    (record,) = [json.loads(line) for line in profile.read_text().splitlines()]
    assert record["stage"] == "evaluate" and "--checkpoints" in record["argv"]
    assert record["started"] <= record["imported"] <= record["finished"]
    assert record["phases"] == {}
    assert done.stdout.count("toy/cnn: test accuracy") == 2
    assert sorted(path.name for path in out.iterdir()) == ["cnn.pkl", "linear.pkl"]
    assert load_evaluation(out / "cnn.pkl").logits.shape == (1, 64, 2)

    torch.save({"not": "a checkpoint"}, tmp_path / "models" / "linear.pt")
    failed = run_module("pipeline.stages.evaluate", "--params", str(tmp_path / "params.yaml"),
                        "--checkpoints", str(tmp_path / "models"), "--test",
                        str(tmp_path / "test.pkl"), "--out", str(tmp_path / "x"))
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr
    assert "linear.pt: not a checkpoint written by this pipeline" in failed.stderr
    assert not (tmp_path / "x").exists()

    (tmp_path / "models" / "linear.pt").unlink()  # a model of run.models was never trained
    missing = run_module("pipeline.stages.evaluate", "--params", str(tmp_path / "params.yaml"),
                         "--checkpoints", str(tmp_path / "models"), "--test",
                         str(tmp_path / "test.pkl"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 1
    assert "linear.pt: missing; run the train stage" in missing.stderr
    assert not (tmp_path / "x").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_a_checkpoint_trained_in_bf16_is_evaluated_in_bf16_whatever_the_cpu():
    checkpoint, _ = toy_checkpoint(seeds=(0,))
    test = toy_splits()["test"]
    fp32 = evaluate(checkpoint, test, threads=1)
    checkpoint.run["bf16"] = True  # as if trained with train.amp on a bf16 machine
    bf16 = evaluate(checkpoint, test, threads=1)
    assert bf16.made_on["evaluated"]["bf16"] is True
    assert not np.array_equal(bf16.logits, fp32.logits)  # bf16 rounding, emulated if need be
    assert (bf16.logits.argmax(-1) == fp32.logits.argmax(-1)).mean() > 0.9
