from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.artifacts import ArtifactError, save_arrays
from pipeline.checkpoint import load_checkpoint
from pipeline.stages import train
from pipeline.tracking import (
    CURVES,
    EpochRow,
    RunTracker,
    Summary,
    parse_curve,
    read_history,
    read_summary,
    read_timing,
)
from tests.conftest import ROOT, run_module, sh, toy_splits


def write_prepared(folder):
    folder.mkdir(parents=True)
    for name, split in toy_splits().items():
        save_arrays(folder / f"{name}.pkl", {"images": split.images, "labels": split.labels,
                                             "classes": split.classes, "split": name})
    return folder


def write_params(path, tensorboard: bool, seeds: int = 1):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"]["tiny"] = {"arch": "linear", "seeds": seeds}
    params["train"].update(epochs=3, batch_size=32, lr=0.05)
    params["execution"].update(tensorboard=tensorboard)
    path.write_text(yaml.safe_dump(params))
    return path


def train_args(tmp_path, tensorboard: bool, seeds: int = 1) -> list[str]:
    data = tmp_path / "prepared"
    if not data.exists():
        write_prepared(data)
    params = write_params(tmp_path / "params.yaml", tensorboard, seeds)
    return ["--params", str(params), "--dataset", "digits", "--model", "tiny",
            "--data", str(data), "--checkpoint", str(tmp_path / "tiny.pt"),
            "--live", str(tmp_path / "live"), "--tensorboard", str(tmp_path / "tb"),
            "--timing", str(tmp_path / "timing.json")]


def run_train(tmp_path, tensorboard: bool, seeds: int = 1):
    """The train stage as DVC runs it: `python -m pipeline.stages.train` in a fresh process."""
    done = run_module("pipeline.stages.train", *train_args(tmp_path, tensorboard, seeds),
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "live", tmp_path / "tb"


def test_the_train_stage_logs_through_dvclive_and_tensorboard(tmp_path):
    live, tb = run_train(tmp_path, tensorboard=True, seeds=2)

    summary = read_summary(live)
    raw = json.loads((live / "metrics.json").read_text())
    assert raw["step"] == 3 and summary.params == 34
    assert raw["parameter_count"] == 34 and "params" not in raw  # not DVC's params
    assert 0.9 <= summary.test_accuracy <= 1.0
    assert summary.seeds.count == 2
    history = read_history(live)
    assert [row.epoch for row in history] == [1, 2, 3]
    assert history[-1].valid_accuracy == pytest.approx(raw["valid"]["accuracy"])
    assert history[-1].train_loss < history[0].train_loss
    # timings live apart: not in the committed metrics, not in the checkpoint
    assert not {"train_seconds", "samples_per_second", "epoch_seconds"} & set(raw)
    assert not (live / "plots/metrics/epoch_seconds.tsv").exists()
    timing = read_timing(tmp_path / "timing.json")
    assert len(timing.epoch_seconds) == 3 and timing.samples_per_second > 0
    checkpoint = load_checkpoint(tmp_path / "tiny.pt")
    assert checkpoint.run["seeds"] == [0, 1] and "train_seconds" not in checkpoint.run
    confusion = json.loads((live / "plots/sklearn/confusion_matrix.json").read_text())
    assert len(confusion) == 64 and {"actual", "predicted"} == set(confusion[0])
    assert {row["actual"] for row in confusion} == {"left", "right"}

    # one TensorBoard run per seed copy; the first is the model dvclive logged
    assert sorted(p.name for p in tb.iterdir()) == ["README.txt", "seed0", "seed1"]
    curves = {}
    for seed in ("seed0", "seed1"):
        events = EventAccumulator(str(tb / seed), size_guidance={"histograms": 0})
        events.Reload()
        assert {"train/loss", "valid/accuracy", "lr"} <= set(events.Tags()["scalars"])
        assert "weights/fc.weight" in events.Tags()["histograms"]
        curves[seed] = [(e.step, e.value) for e in events.Scalars("train/loss")]
        assert [step for step, _ in curves[seed]] == [1, 2, 3]
    assert [v for _, v in curves["seed0"]] == pytest.approx(
        [row.train_loss for row in history], abs=1e-6)
    assert curves["seed0"] != curves["seed1"]  # two copies, two runs
    assert "None are written" not in (tb / "README.txt").read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def test_with_tensorboard_off_its_folder_only_says_so(tmp_path):
    _, tb = run_train(tmp_path, tensorboard=False)
    assert [p.name for p in tb.iterdir()] == ["README.txt"]
    assert "execution.tensorboard is false" in (tb / "README.txt").read_text()


def test_a_failed_run_leaves_no_half_written_logs(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(train, "fit", crash)
    with pytest.raises(RuntimeError):
        train.main(train_args(tmp_path, tensorboard=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "prepared"]


def test_a_train_stage_error_is_one_line_as_dvc_runs_it(tmp_path):
    args = train_args(tmp_path, tensorboard=False)
    args[args.index("--model") + 1] = "tinny"
    done = run_module("pipeline.stages.train", *args, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "'tinny' is not defined under `models:`" in done.stderr
    assert "did you mean 'tiny'?" in done.stderr


def test_logged_rows_read_back_as_the_history(tmp_path):
    tracker = RunTracker(tmp_path / "run")
    rows = [EpochRow(e, *(e / 10 + i for i in range(len(CURVES)))) for e in (1, 2)]
    for row in rows:
        tracker.log_epoch(row)
    summary = Summary(0.5, 1.0, 2, 0.75, 7)
    tracker.log_summary(summary)
    tracker.close()
    assert read_history(tmp_path / "run") == rows
    assert read_summary(tmp_path / "run") == summary


def test_damaged_files_are_named_with_the_line(tmp_path):
    with pytest.raises(ArtifactError, match="acc.tsv: not a dvclive metric file"):
        parse_curve("epoch\tvalue\n1\t0.5\n", "acc.tsv")
    with pytest.raises(ArtifactError, match=r"acc.tsv, line 3: expected a step and a number"):
        parse_curve("step\taccuracy\n1\t0.5\n2\tabc\n", "acc.tsv")
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5}}))
    with pytest.raises(ArtifactError, match="key 'test.loss' is missing"):
        read_summary(tmp_path)
    with pytest.raises(ArtifactError, match="train/loss.tsv: missing"):
        read_history(tmp_path)
    assert np.isfinite(parse_curve("step\tx\n1\t2\n", "x")[1])


def test_logging_works_in_a_git_repository_without_commits(tmp_path, monkeypatch):
    sh(["git", "init", "-q"], tmp_path)
    sh(["dvc", "init", "-q"], tmp_path)
    monkeypatch.chdir(tmp_path)  # dvclive finds the repository from the working directory
    tracker = RunTracker(tmp_path / "run")
    tracker.log_epoch(EpochRow(1, *(0.5 for _ in CURVES)))
    tracker.log_summary(Summary(0.5, 1.0, 1, 0.5, 7))
    tracker.close()
    assert len(read_history(tmp_path / "run")) == 1


def test_a_summary_written_before_the_rename_still_reads():
    older = {"test": {"accuracy": 0.9, "loss": 0.3}, "best": {"epoch": 2,
             "valid_accuracy": 0.8}, "params": 34}
    assert Summary.from_json(older, "old metrics.json").params == 34

