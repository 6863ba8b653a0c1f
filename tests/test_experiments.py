from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.experiments import (
    Experiment,
    changed_params,
    drift,
    flatten,
    list_experiments,
    read_revision,
    same_test_split,
)
from pipeline.params import ParamsError
from pipeline.tracking import CONFUSION_PATH, EpochRow, RunTracker, Summary
from tests.conftest import ROOT, copy_repository, run_module, sh

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


def save_experiment(repo: Path, name: str) -> None:
    """The workspace saved as experiment `name` of HEAD, as `dvc exp save` stores one (a commit
    on HEAD under refs/exps/<HEAD split 2/38>/<name>), without needing the stages' outputs
    here; then the workspace is back at HEAD."""
    base = sh(["git", "rev-parse", "HEAD"], repo).strip()
    sh(["git", "add", "-A"], repo)
    tree = sh(["git", "write-tree"], repo).strip()
    commit = sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit-tree", tree, "-p",
                 base, "-m", name], repo).strip()
    sh(["git", "update-ref", f"refs/exps/{base[:2]}/{base[2:]}/{name}", commit], repo)
    sh(["git", "reset", "-q", "--hard"], repo)
    sh(["git", "clean", "-qfd", "reports"], repo)


def test_pipeline_compare_shows_what_each_run_trained_and_the_images_it_flipped(tmp_path):
    """An experiment that trained only `linear` and a model it added (`tiny`) while the cnn's
    dvclive folder from the commit stays in its tree: its row shows linear and tiny, blank for
    the rest, and tiny gets a column. --flips names the test images it fixed and broke with
    their labels and both predictions; a workspace whose params changed since its results were
    made is marked stale; experiments of an older commit are counted, not dropped silently."""
    copy_repository(tmp_path, keep_lock=True)
    sh(["git", "add", "-A"], tmp_path)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "base"], tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["run"]["models"] = ["linear", "tiny"]
    params["models"]["tiny"] = copy.deepcopy(params["models"]["linear"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    live = tmp_path / "reports/live/digits"
    shutil.copytree(live / "linear", live / "tiny")
    confusion = live / "linear" / CONFUSION_PATH
    rows = json.loads(confusion.read_text())
    wrong = [i for i, r in enumerate(rows) if r["actual"] != r["predicted"]][:2]
    right = next(i for i, r in enumerate(rows) if r["actual"] == r["predicted"])
    was = {i: rows[i]["predicted"] for i in [*wrong, right]}
    for i in wrong:
        rows[i]["predicted"] = rows[i]["actual"]
    rows[right]["predicted"] = "0" if rows[right]["actual"] != "0" else "1"
    confusion.write_text(json.dumps(rows))
    save_experiment(tmp_path, "small-run")

    done = run_module("pipeline.compare", "--flips", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("\n\n")[0].splitlines()
    columns = table[0].split()[5:]  # after "run  changed from the commit"
    assert columns == [f"digits/{m}" for m in
                       ["linear", "linearnet", "cnn", "keras_cnn", "cnn3", "tiny"]], table[0]
    cells = next(line for line in table if line.startswith("small-run")).split()[-7:]
    assert cells[0:2] == ["94.44%", "="] and cells[2:6] == ["-"] * 4 and cells[6] == "94.44%"
    committed_row = next(line for line in table if "(committed)" in line)
    assert committed_row.rstrip().endswith("-")  # the commit did not train tiny
    assert "stale" not in done.stdout

    flips = done.stdout[done.stdout.index("small-run vs"):done.stdout.index("workspace vs")]
    assert "digits/linear: 2 fixed, 1 broken" in flips
    fixed = ", ".join(f"#{i} ({rows[i]['actual']}: was {was[i]}, now {rows[i]['actual']})"
                      for i in wrong)
    assert f"fixed: {fixed}" in flips
    assert f"broke: #{right} ({rows[right]['actual']}: was {was[right]}, now " \
           f"{rows[right]['predicted']})" in flips
    assert "digits/tiny: the commit did not train it" in flips
    assert "counting from 0" in done.stdout

    text = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("\n  epochs: 60 ", "\n  epochs: 7 ", 1))
    stale = run_module("pipeline.compare", cwd=tmp_path)
    assert re.search(r"^workspace \(stale\*\)\s+train\.epochs=7", stale.stdout, re.M), stale.stdout
    assert "* stale: the workspace's results were not made from its params.yaml" in stale.stdout
    assert "train@digits-cnn" in stale.stdout and "`dvc checkout`" in stale.stdout
    (tmp_path / "params.yaml").write_text(text)
    # an output replaced (what `git checkout -- .` without `dvc checkout` leaves): stale too
    (live / "cnn" / "metrics.json").write_text(
        (live / "cnn" / "metrics.json").read_text().replace('"step"', '"step" ', 1))
    replaced = run_module("pipeline.compare", cwd=tmp_path)
    assert "workspace (stale*)" in replaced.stdout and "train@digits-cnn" in replaced.stdout
    sh(["git", "checkout", "-q", "--", "reports"], tmp_path)

    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty",
        "-m", "next"], tmp_path)
    later = run_module("pipeline.compare", cwd=tmp_path)
    assert "small-run" not in later.stdout.split("\n\n")[0]
    assert "1 experiment of other commits not shown (`dvc exp show -A`" in later.stdout


def test_pipeline_compare_help_is_whole_sentences():
    done = run_module("pipeline.compare", "--help", cwd=ROOT)
    assert done.returncode == 0
    description = done.stdout.split("\n\n", 1)[1].split("\noptions:")[0]
    assert description.rstrip().endswith("gets a column."), description
    assert "--flips" in description


def test_two_runs_share_a_test_split_only_when_their_data_or_labels_say_so():
    a = Experiment("a", {}, prepared={"digits": "h1"})
    assert same_test_split(a, Experiment("b", {}, prepared={"digits": "h1"}), "digits")
    assert not same_test_split(a, Experiment("c", {}, prepared={"digits": "h2"}), "digits")
    labelled = Experiment("d", {}, labels={"digits": np.array([1, 2])})
    assert same_test_split(labelled, Experiment("e", {}, labels={"digits": np.array([1, 2])}),
                           "digits")
    predicted = {("digits", "cnn"): (["1", "2"], ["1", "1"])}
    assert same_test_split(Experiment("f", {}, predictions=predicted),
                           Experiment("g", {}, predictions={("digits", "linear"):
                                                            (["1", "2"], ["2", "2"])}), "digits")
    assert not same_test_split(Experiment("h", {}), labelled, "digits")  # nothing to tell by
