from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from pipeline.experiments import changed_params, flatten, list_experiments

RUNS = [("digits", "cnn")]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


def write_run(repo: Path, lr: float, accuracy: float, epochs: int) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": {"lr": lr, "epochs": epochs}}))
    metrics = repo / "reports/metrics/digits"
    history = repo / "reports/history/digits"
    metrics.mkdir(parents=True, exist_ok=True)
    history.mkdir(parents=True, exist_ok=True)
    (metrics / "cnn.json").write_text(json.dumps({"test_accuracy": accuracy}))
    rows = "".join(f"{e},1.0,0.5,1.0,{accuracy * e / epochs},0.1\n" for e in range(1, epochs + 1))
    (history / "cnn.csv").write_text(
        "epoch,train_loss,train_accuracy,valid_loss,valid_accuracy,seconds\n" + rows)


def test_experiments_are_read_from_their_git_refs(tmp_path):
    repo = tmp_path
    git(repo, "init", "-q")
    write_run(repo, lr=0.02, accuracy=0.9, epochs=3)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")
    baseline = git(repo, "rev-parse", "HEAD")
    write_run(repo, lr=0.05, accuracy=0.95, epochs=4)  # what `dvc exp run -S ...` commits
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "experiment")
    git(repo, "update-ref", f"refs/exps/{baseline[:2]}/{baseline[2:]}/bold-lr",
        git(repo, "rev-parse", "HEAD"))
    git(repo, "update-ref", "refs/exps/exec/EXEC_MERGE", "HEAD")  # DVC bookkeeping: ignored
    git(repo, "reset", "-q", "--hard", baseline)

    found = list_experiments(repo, RUNS, "reports/metrics", "reports/history")
    assert [e.name for e in found] == ["HEAD (committed)", "bold-lr"]
    head, bold = found
    assert head.accuracy == {("digits", "cnn"): 0.9}
    assert bold.accuracy == {("digits", "cnn"): 0.95}
    assert [row["epoch"] for row in bold.histories[("digits", "cnn")]] == [1, 2, 3, 4]
    assert changed_params(bold, head.params) == {"train.epochs": 4, "train.lr": 0.05}


def test_outside_a_git_repository_there_is_nothing_to_compare(tmp_path):
    assert list_experiments(tmp_path, RUNS, "reports/metrics", "reports/history") == []


def test_flatten_joins_nested_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": None}) == {"a.b": 1, "a.c.d": [2],
                                                                    "e": None}
