"""Sharing through a real DVC remote: an S3 server (rclone's `serve s3`, SigV4, from the
project's own environment) on 127.0.0.1, one bare git repository, and separate clones that push,
pull, share experiments and restore stages from the run cache."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_repository, dvc_status, free_port, run, sh

pytestmark = pytest.mark.e2e

BUCKET = "team-bucket"
OUTPUTS = ["data/prepared/digits/train.pkl", "models/digits/cnn.pt", "models/digits/linear.pt",
           "reports/evaluation/digits/cnn.pkl", "reports/index.html"]


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    root = tmp_path_factory.mktemp("s3")
    (root / "store" / BUCKET).mkdir(parents=True)
    (root / "rclone.conf").write_text("")
    port = free_port()
    # long keys: rclone answers short ones with 403
    access, secret = "AK" + secrets.token_hex(10).upper(), secrets.token_hex(20)
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "rclone"), "serve", "s3", "--config",
         str(root / "rclone.conf"), "--auth-key", f"{access},{secret}",
         "--addr", f"127.0.0.1:{port}", str(root / "store")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "rclone did not start"
            time.sleep(0.1)
    try:
        yield S3Server(f"http://127.0.0.1:{port}", access, secret, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def set_credentials(repo: Path, server: S3Server, secret: str | None = None) -> None:
    """As the README says: credentials go to .dvc/config.local, which git never sees."""
    sh(["dvc", "remote", "modify", "--local", "storage", "access_key_id", server.access_key], repo)
    sh(["dvc", "remote", "modify", "--local", "storage", "secret_access_key",
        secret or server.secret_key], repo)


def git_user(repo: Path) -> None:
    sh(["git", "config", "user.name", "team"], repo)
    sh(["git", "config", "user.email", "team@example.org"], repo)


def clone(origin: Path, target: Path, server: S3Server) -> Path:
    sh(["git", "clone", "-q", str(origin), str(target)], target.parent)
    git_user(target)
    set_credentials(target, server)
    return target


@pytest.fixture(scope="module")
def team(tmp_path_factory, s3) -> Iterator[tuple[Path, Path, S3Server]]:
    """Clone A runs the pipeline, commits, pushes to git and to the S3 remote."""
    base = tmp_path_factory.mktemp("team")
    origin = base / "origin.git"
    sh(["git", "init", "-q", "--bare", "--initial-branch=main", str(origin)], base)
    a = base / "a"
    a.mkdir()
    copy_repository(a)
    git_user(a)
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["run"]["models"] = ["linear", "cnn"]
    params["train"]["epochs"] = 3
    params["models"]["cnn"]["seeds"] = 1
    # the tests compare checkpoints byte for byte across runs: that needs the same thread
    # count, and `auto` follows the machine's load (a busy CI machine gave 1, then 2)
    params["execution"]["threads"] = 1
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the README's "Share with a team" set-up
    sh(["dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/cache"], a)
    sh(["dvc", "remote", "modify", "storage", "endpointurl", s3.endpoint], a)
    set_credentials(a, s3)
    sh(["dvc", "repro"], a)
    sh(["git", "add", "-A"], a)
    sh(["git", "commit", "-qm", "baseline"], a)
    sh(["git", "branch", "-M", "main"], a)
    sh(["git", "remote", "add", "origin", str(origin)], a)
    sh(["git", "push", "-q", "-u", "origin", "main"], a)
    sh(["dvc", "push", "--run-cache"], a)
    yield a, origin, s3


def test_credentials_stay_out_of_git(team):
    a, _, server = team
    assert ".dvc/config.local" not in sh(["git", "ls-files"], a)
    assert server.secret_key in (a / ".dvc/config.local").read_text()
    committed = run(["git", "grep", "-l", server.secret_key, "HEAD"], a)
    assert committed.returncode == 1 and committed.stdout == ""  # found nowhere


def test_a_colleague_pulls_everything_and_reruns_nothing(team, tmp_path):
    a, origin, server = team
    b = clone(origin, tmp_path / "b", server)
    assert not (b / "models").exists()
    sh(["dvc", "pull"], b)
    for output in OUTPUTS:
        assert (b / output).read_bytes() == (a / output).read_bytes(), output
    assert dvc_status(b) == {}
    assert "Data and pipelines are up to date" in sh(["dvc", "repro"], b)


def test_an_experiment_travels_through_the_remote(team, tmp_path):
    a, origin, server = team
    b = clone(origin, tmp_path / "b", server)
    sh(["dvc", "exp", "run", "-n", "slow-cnn", "-S", "models.cnn.train.lr=0.01"], a)
    trained = (a / "models/digits/cnn.pt").read_bytes()
    sh(["git", "checkout", "--", "."], a)  # the README's clean start; outputs follow the lock
    sh(["dvc", "checkout", "-q"], a)
    sh(["dvc", "exp", "push", "origin", "slow-cnn"], a)

    sh(["dvc", "exp", "pull", "origin", "slow-cnn"], b)
    assert "slow-cnn" in sh(["dvc", "exp", "list", "--name-only"], b)
    sh(["dvc", "exp", "apply", "slow-cnn"], b)
    sh(["dvc", "pull"], b)
    assert (b / "models/digits/cnn.pt").read_bytes() == trained
    assert yaml.safe_load((b / "params.yaml").read_text())["models"]["cnn"]["train"]["lr"] == 0.01
    assert dvc_status(b) == {}
    sh(["dvc", "repro", "-s", "-f", "report"], b)  # the README's refresh: lists the experiment
    run_js = (b / "reports/run.js").read_text()
    assert "slow-cnn" in run_js and "models.cnn.train.lr=0.01" in run_js


def test_stages_a_ran_are_restored_from_the_run_cache_not_rerun(team, tmp_path):
    a, origin, server = team
    b = clone(origin, tmp_path / "b", server)
    # the same inputs as A's committed run, nothing local: restored from the remote
    printed = sh(["dvc", "repro", "--pull"], b)
    assert "Running stage" not in printed, printed
    assert (b / "models/digits/cnn.pt").read_bytes() == (a / "models/digits/cnn.pt").read_bytes()
    # inputs A ran as an experiment but never committed: DVC's run cache knows that run
    sh(["dvc", "exp", "run", "-n", "lr-002", "-S", "+models.linear.train.lr=0.002"], a)
    trained = (a / "models/digits/linear.pt").read_bytes()
    sh(["dvc", "exp", "push", "origin", "lr-002"], a)  # its outputs go to the DVC remote
    sh(["git", "checkout", "--", "."], a)
    sh(["dvc", "checkout", "-q"], a)
    sh(["dvc", "push", "--run-cache"], a)  # and the record of which inputs gave them
    params = yaml.safe_load((b / "params.yaml").read_text())
    params["models"]["linear"].setdefault("train", {})["lr"] = 0.002
    (b / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "pull", "--run-cache"], b)
    printed = sh(["dvc", "repro", "--pull"], b)  # --pull: the outputs of a cached run
    # The train stage's dvclive files are git-tracked (cache: false), so DVC's run cache cannot
    # bring them from the remote and training runs again, to the same bytes on CPU; everything
    # after it is restored from A's run.
    assert (b / "models/digits/linear.pt").read_bytes() == trained
    assert "Stage 'evaluate@digits' is cached - skipping run" in printed, printed
    assert "Stage 'report' is cached - skipping run" in printed, printed
    assert "Running stage 'train@digits-cnn'" not in printed


def test_a_remote_that_refuses_or_is_down_fails_clearly_and_loses_nothing(team, tmp_path):
    a, origin, server = team
    b = clone(origin, tmp_path / "b", server)
    set_credentials(b, server, secret="wrong" + server.secret_key[5:])
    failed = run(["dvc", "pull"], b)
    assert failed.returncode != 0
    assert "failed to connect to s3" in failed.stderr and "Forbidden" in failed.stderr
    assert not (b / "models").exists()

    before = {p: (a / p).read_bytes() for p in OUTPUTS}
    local = a.parent / "a-remote-down"
    shutil.copytree(a, local, symlinks=True)
    sh(["dvc", "remote", "modify", "storage", "endpointurl", f"http://127.0.0.1:{free_port()}"],
       local)
    down = run(["dvc", "push"], local)
    assert down.returncode != 0 and "Could not connect to the endpoint URL" in down.stderr
    assert {p: (local / p).read_bytes() for p in OUTPUTS} == before
    assert dvc_status(local) == {}
