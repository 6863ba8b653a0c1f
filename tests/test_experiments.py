from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.experiments import (
    Experiment,
    changed_params,
    drift,
    flatten,
    list_experiments,
    read_revision,
)
from pipeline.params import ParamsError
from pipeline.tracking import EpochRow, RunTracker, Summary
from tests.conftest import ROOT, run_module, sh

RUNS = [("digits", "cnn")]


def write_run(repo: Path, lr: float, accuracy: float, epochs: int) -> None:
    """What the train stage leaves for one dataset/model: params.yaml and a dvclive folder."""
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": {"lr": lr, "epochs": epochs}}))
    tracker = RunTracker(repo / "reports/live/digits/cnn")
    for epoch in range(1, epochs + 1):
        tracker.log_epoch(EpochRow(epoch, train_loss=1.0, train_accuracy=0.5, valid_loss=1.0,
                                   valid_accuracy=accuracy * epoch / epochs, lr=lr))
    tracker.log_summary(Summary(test_accuracy=accuracy, test_loss=0.3, best_epoch=epochs,
                                best_valid_accuracy=accuracy, params=10))
    tracker.close()


def dvc_repository_with_a_run(repo: Path) -> Path:
    """A git + DVC repository at `repo` holding one run's params and dvclive files."""
    sh(["git", "init", "-q"], repo)
    sh(["git", "config", "user.name", "t"], repo)
    sh(["git", "config", "user.email", "t@example.org"], repo)
    sh(["dvc", "init", "-q"], repo)
    write_run(repo, lr=0.02, accuracy=0.9, epochs=3)
    return repo


def test_experiments_are_listed_by_dvc_and_read_at_their_revision(tmp_path):
    repo = dvc_repository_with_a_run(tmp_path)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline"], repo)
    write_run(repo, lr=0.05, accuracy=0.95, epochs=4)  # what `dvc exp run -S ...` leaves
    sh(["dvc", "exp", "save", "-n", "bold-lr"], repo)
    sh(["git", "checkout", "-q", "--", "."], repo)  # back to the baseline in the workspace

    found = list_experiments(repo, RUNS, "reports/live")
    assert [e.name for e in found] == [f"{sh(['git', 'branch', '--show-current'], repo).strip()} "
                                       "(committed)", "bold-lr"]
    head, bold = found
    assert head.accuracy == {("digits", "cnn"): 0.9}
    assert bold.accuracy == {("digits", "cnn"): 0.95}
    assert [row.epoch for row in bold.histories[("digits", "cnn")]] == [1, 2, 3, 4]
    assert bold.histories[("digits", "cnn")][-1].valid_accuracy == 0.95
    assert changed_params(bold, head.params) == {"train.epochs": 4, "train.lr": 0.05}
    assert len(list_experiments(repo, RUNS, "reports/live", limit=0)) == 1


def test_a_model_defined_on_one_side_only_is_one_entry():
    experiment = Experiment("exp", {"train.lr": 0.1, "models.big.arch": "cnn",
                                    "models.big.seeds": 1})
    reference = {"train.lr": 0.2, "models.small.arch": "linear", "run.models": ["small"]}
    assert changed_params(experiment, reference) == {
        "models.big": "defined", "models.small": "not defined", "run.models": "not defined",
        "train.lr": 0.1}


def test_outside_a_dvc_repository_there_is_nothing_to_compare(tmp_path):
    assert list_experiments(tmp_path, RUNS, "reports/live") == []


def test_flatten_joins_nested_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": None}) == {"a.b": 1, "a.c.d": [2],
                                                                    "e": None}


def test_the_workspace_drift_names_each_changed_value_with_the_committed_one():
    committed = Experiment("main (committed)", {"train.epochs": 10, "train.tensorboard": False,
                                                "models.old.arch": "cnn"})
    workspace = Experiment("workspace", {"train.epochs": 3, "train.tensorboard": False,
                                         "models.new.arch": "linear"})
    assert drift(workspace, committed) == {
        "train.epochs": (10, 3), "models.new": ("not defined", "defined"),
        "models.old": ("defined", "not defined")}
    assert drift(committed, committed) == {}


def test_pipeline_tensorboard_gathers_the_workspace_logs_or_says_how_to_get_some(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"vars": [{
        "tensorboard": "tb", "tensorboard_runs": "tb-runs"}], "stages": {}}))
    (tmp_path / "tb/digits/cnn").mkdir(parents=True)
    (tmp_path / "tb/digits/cnn/README.txt").write_text("a note, not a log")
    done = run_module("pipeline.tensorboard_runs", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "execution.tensorboard=true" in done.stderr

    (tmp_path / "tb/digits/cnn/seed0").mkdir()
    (tmp_path / "tb/digits/cnn/seed0/events.out.tfevents.1").write_bytes(b"events")
    (tmp_path / "tb-runs/stale").mkdir(parents=True)  # from an earlier call: rebuilt whole
    done = run_module("pipeline.tensorboard_runs", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "workspace: 1 event files" in done.stdout
    assert "tensorboard --logdir tb-runs" in done.stdout
    gathered = sorted(p.relative_to(tmp_path / "tb-runs").as_posix()
                      for p in (tmp_path / "tb-runs").rglob("*") if p.is_file())
    assert gathered == ["workspace/digits/cnn/seed0/events.out.tfevents.1"]


def test_pipeline_compare_outside_the_project_says_where_to_run_it(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    done = run_module("pipeline.compare", "--params", str(tmp_path / "params.yaml"), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'dvc.yaml'}: cannot be read" in done.stderr
    assert "run this from the project root" in done.stderr


def test_a_revision_whose_params_are_a_yaml_bomb_is_skipped_not_expanded(tmp_path):
    """Another revision's params.yaml is input too: read with params.yaml's own strict loader
    (no aliases), a billion-laughs file is refused at once instead of eating the memory."""
    repo = dvc_repository_with_a_run(tmp_path)
    names = "abcdefghij"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{new}: &{new} [{', '.join([f'*{old}'] * 10)}]\n"
        for old, new in zip(names, names[1:], strict=False))  # 10**10 leaves
    (repo / "params.yaml").write_text(bomb)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "hostile params"], repo)
    assert read_revision(repo, "HEAD", "hostile", RUNS, "reports/live") is None
    with pytest.raises(ParamsError, match="does not allow anchors and aliases"):  # verify's way
        read_revision(repo, "HEAD", "hostile", RUNS, "reports/live", strict=True)
