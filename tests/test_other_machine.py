"""A clone on another machine: the committed dvc.lock names outputs its cache lacks, and its own
training gives other results. Everything still runs and says what it could not compare.

The origin repository commits results made with `train.seed: 1` under params and a dvc.lock
that say `train.seed: 0`; a `git clone` (no DVC cache) re-runs it with seed 0, which moves the
results the way another CPU's kernels would.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.reproduction import VERDICTS
from tests.conftest import copy_repository, dvc_status, run, run_slots, sh

pytestmark = pytest.mark.e2e

MODELS = ["linear", "cnn"]


def write_params(repo: Path, change) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def small_run(params: dict) -> None:
    params["run"]["models"] = MODELS
    params["train"]["epochs"] = 20
    params["train"]["seed"] = 1
    params["models"]["cnn"]["seeds"] = 2
    params["execution"]["threads"] = 1


def commit_as_seed_zero(repo: Path) -> None:
    """Say in params.yaml and dvc.lock that the seed-1 results were made with seed 0."""
    write_params(repo, lambda p: p["train"].update(seed=0))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for values in stage.get("params", {}).values():
            if "train" in values:
                values["train"]["seed"] = 0
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    sh(["git", "config", "user.email", "origin@example.org"], repo)
    sh(["git", "config", "user.name", "origin"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "results from another machine"], repo)


@pytest.fixture(scope="module")
def machines(tmp_path_factory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("other-machine")
    origin = base / "origin"
    origin.mkdir()
    copy_repository(origin)
    write_params(origin, small_run)
    sh(["dvc", "repro"], origin)
    commit_as_seed_zero(origin)
    assert dvc_status(origin) == {}  # to DVC, the commit is consistent
    clone = base / "clone"
    sh(["git", "clone", "-q", str(origin), str(clone)], base)
    sh(["git", "config", "user.email", "clone@example.org"], clone)
    sh(["git", "config", "user.name", "clone"], clone)
    assert not (clone / ".dvc" / "cache").exists()
    # TensorBoard on in the clone: an execution setting, so it is not part of any stage's hash
    write_params(clone, lambda p: p["execution"].update(tensorboard=True))
    printed = sh(["dvc", "repro"], clone)
    return origin, clone, {"repro": printed}


def test_the_clone_builds_its_report_and_says_what_it_could_not_compare(machines):
    _, clone, printed = machines
    assert "Traceback" not in printed["repro"]
    assert (clone / "reports/index.html").is_file()
    slots = run_slots(clone)
    committed = json.loads(sh(["git", "show", "HEAD:reports/live/digits/cnn/metrics.json"],
                              clone))
    here = json.loads((clone / "reports/live/digits/cnn/metrics.json").read_text())
    assert here != committed  # another seed: the results moved
    # the first screen: this run against the commit, with a verdict per model
    line = re.sub(r"<[^>]+>", "", slots["reproduction"])
    commit = sh(["git", "rev-parse", "--short", "HEAD"], clone).strip()
    assert f"This run vs commit {commit}" in line or f"This run vs {commit}" in line, line
    assert re.search(r"\d of 2 models reproduced", line), line
    assert "dvclive predictions" in line  # the committed evaluation records are not here
    # and which per-image comparisons are missing, and how to get them
    experiments = html.unescape(slots["experiments"])
    assert "evaluation records of digits/linear, digits/cnn not in this clone's DVC cache" \
        in experiments
    assert "dvc fetch" in experiments


def test_execution_settings_retrain_nothing(machines):
    _, clone, _ = machines
    assert dvc_status(clone) == {}
    for change in ({"tensorboard": False}, {"threads": 2}, {"processes": 2}):
        write_params(clone, lambda p, c=change: p["execution"].update(c))
        assert dvc_status(clone) == {}, change
    write_params(clone, lambda p: p["execution"].update(tensorboard=True, threads=1,
                                                        processes=1))


def test_pipeline_compare_and_tensorboard_say_what_they_could_not_read(machines):
    _, clone, _ = machines
    compared = sh(["pipeline-compare"], clone)
    assert "Evaluation records missing" in compared
    # the McNemar marks against the commit come from dvclive's predictions in git
    workspace = next(line for line in compared.splitlines() if line.startswith("workspace"))
    assert len(re.findall(r"\d+\.\d\d% [+=-]", workspace)) == len(MODELS), workspace
    assert "evaluation records of digits/linear, digits/cnn not in this clone's DVC cache" \
        in compared
    gathered = sh(["pipeline-tensorboard"], clone)
    assert re.search(r"^workspace: [1-9]\d* event files$", gathered, re.M), gathered
    assert re.search(r"^\S+: not readable: .*not in this clone's DVC cache", gathered, re.M), \
        gathered


def test_pipeline_verify_gives_every_model_a_verdict_and_its_evidence(machines):
    _, clone, _ = machines
    done = run(["pipeline-verify"], clone)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    for model in MODELS:
        row = re.search(rf"^digits/{model}\s+(\w+)\s+.*dvclive predictions$", done.stdout, re.M)
        assert row and row.group(1) in VERDICTS, done.stdout
    assert "not in this clone's DVC cache" in done.stdout
    report = json.loads(run(["pipeline-verify", "--json"], clone).stdout)
    assert [v["model"] for v in report["verdicts"]] == MODELS
    assert all(v["evidence"] == "dvclive predictions" for v in report["verdicts"])
    assert done.returncode == int(any(v["verdict"] == "differs" for v in report["verdicts"]))


def test_a_model_trained_far_too_briefly_differs_and_verify_exits_1(machines):
    _, clone, _ = machines
    done = run(["dvc", "exp", "run", "-S", "models.cnn.train.epochs=1",
                "-S", "models.cnn.train.lr=0.0001"], clone)
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        verify = run(["pipeline-verify"], clone)
        assert verify.returncode == 1, verify.stdout + verify.stderr
        line = next(line for line in verify.stdout.splitlines()
                    if line.startswith("digits/cnn: differs: "))
        assert re.search(r"-\d+\.\d\d pts \[-\d+\.\d\d, -\d+\.\d\d\] \(95%\)", line), line
        assert re.search(r"params differ: .*models\.cnn\.train\.epochs \S+ → 1", line), line
        # an experiment's name is a revision too
        [name] = sh(["dvc", "exp", "list", "--name-only"], clone).split()
        by_name = run(["pipeline-verify", "--rev", name], clone)
        assert by_name.returncode == 0, by_name.stdout + by_name.stderr
        assert "digits/cnn: reproduced: +0.00 pts" in by_name.stdout
    finally:
        sh(["git", "checkout", "--", "params.yaml", "dvc.lock"], clone)


def test_verify_refuses_stale_results_and_unknown_revisions_with_exit_2(machines):
    _, clone, _ = machines
    write_params(clone, lambda p: p["models"]["cnn"]["train"].update(epochs=3))
    try:  # params edited, nothing re-run: the workspace's results are not its params'
        stale = run(["pipeline-verify"], clone)
        assert stale.returncode == 2, stale.stdout + stale.stderr
        [line] = stale.stderr.splitlines()
        assert "train@digits-cnn" in line and "run `dvc repro`" in line
    finally:
        sh(["git", "checkout", "--", "params.yaml"], clone)
    unknown = run(["pipeline-verify", "--rev", "no-such-revision"], clone)
    assert unknown.returncode == 2
    assert "not a commit, branch, tag or experiment" in unknown.stderr


def test_a_damaged_evaluation_record_of_a_revision_is_named_not_raised(machines):
    origin, _, _ = machines
    damaged = origin.parent / "damaged"
    shutil.copytree(origin, damaged, symlinks=True)
    record = damaged / "reports/evaluation/digits/cnn.pkl"
    good = record.read_bytes()

    def replace(data: bytes) -> None:
        record.unlink()  # DVC's hard link to its cache, read-only
        record.write_bytes(data)

    # a commit whose evaluation record (in the cache, hash intact) is not an evaluation
    replace(b"\x80\x04not a pickle at all")
    sh(["dvc", "commit", "--force", "evaluate@digits"], damaged)
    sh(["git", "commit", "-qam", "a damaged evaluation record"], damaged)
    replace(good)
    sh(["dvc", "commit", "--force", "evaluate@digits"], damaged)
    done = run(["pipeline-verify"], damaged)
    assert "Traceback" not in done.stderr and done.returncode in (0, 1), done.stderr
    assert re.search(r"^  \S+ \(\w+\): evaluation records of digits/cnn damaged \(", done.stdout,
                     re.M), done.stdout
    compared = run(["pipeline-compare"], damaged)
    assert compared.returncode == 0 and "digits/cnn damaged (" in compared.stdout, compared.stderr
