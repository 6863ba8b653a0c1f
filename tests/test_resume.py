"""A killed train stage resumes: `dvc repro` killed (SIGKILL, the whole process group, as a
power loss or a CI timeout does) at random moments of training, then run again, ends with the
same checkpoint and dvclive bytes as an uninterrupted run on this machine; so does a run killed
while it was writing its state."""

from __future__ import annotations

import filecmp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_repository, sh, tool_env
from tests.test_tracking import write_prepared

pytestmark = pytest.mark.slow

MODEL = "keras_cnn"  # convolutions and dropout: the random generators matter
STATE = Path("data/resume/digits") / MODEL


def project(folder: Path) -> Path:
    """The project with one model of two seed copies, trained long enough to be killed."""
    folder.mkdir()
    copy_repository(folder)
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["run"]["models"] = [MODEL]
    params["models"][MODEL]["seeds"] = 2
    params["train"].update(epochs=40, batch_size=32,  # its generator is part of the state
                           augment={"translate": 0.1, "rotate": 10, "erase": 0.25})
    params["execution"].update(threads=2, save_state_every_s=0)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "repro", "prepare@digits"], folder)
    return folder


def outputs(folder: Path) -> list[Path]:
    live = folder / "reports/live/digits" / MODEL
    return [folder / "models/digits" / f"{MODEL}.pt",
            *sorted(p for p in live.rglob("*") if p.is_file() and p.name != "machine.json")]


def wait_for(condition, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_dvc_repro_killed_at_random_moments_resumes_to_the_same_bytes(tmp_path):
    whole = project(tmp_path / "whole")
    sh(["dvc", "repro"], whole)
    killed = project(tmp_path / "killed")
    rng = random.Random()
    for _ in range(3):
        run = subprocess.Popen(["dvc", "repro"], cwd=killed, env=tool_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        try:
            wait_for(lambda run=run: (killed / STATE / "rank0.pt").exists()
                     or run.poll() is not None)
            time.sleep(rng.uniform(0, 1.5))
        finally:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    finished = sh(["dvc", "repro"], killed)
    assert f"resuming digits/{MODEL} seed " in finished
    for mine, theirs in zip(outputs(killed), outputs(whole), strict=True):
        assert filecmp.cmp(mine, theirs, shallow=False), mine
    assert not (killed / STATE).exists()  # the state goes once the outputs are written
    assert "Data and pipelines are up to date" in sh(["dvc", "repro"], killed)


def stage(folder: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.stages.train", "--params",
            str(folder / "params.yaml"), "--dataset", "digits", "--model", "tiny",
            "--data", str(folder / "prepared"), "--checkpoint", str(folder / out / "tiny.pt"),
            "--live", str(folder / out / "live"), "--tensorboard", str(folder / out / "tb"),
            "--timing", str(folder / out / "timing.json"), "--state", str(folder / out / "state")]


ENVIRON = {**os.environ, "PYTHONPATH": str(ROOT)}


def tiny_run_and_whole(folder: Path, hidden: list[int], epochs: int, batch_size: int) -> dict:
    """Prepared toy data, params for a one-thread `tiny` linearnet saving every epoch, and an
    uninterrupted run of it into folder/whole; returns the params written."""
    write_prepared(folder / "prepared")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"]["tiny"] = {"arch": "linearnet", "hidden": hidden}
    params["train"].update(epochs=epochs, batch_size=batch_size)
    params["execution"].update(threads=1, save_state_every_s=0)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    whole = subprocess.run(stage(folder, "whole"), env=ENVIRON, capture_output=True,
                           text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    return params


def test_a_run_killed_while_saving_its_state_resumes_from_the_previous_one(tmp_path):
    """The state is written to a temporary name and renamed: a kill that leaves the
    temporary behind (the evidence it landed mid-save) leaves the previous state usable."""
    tiny_run_and_whole(tmp_path, [512, 512], epochs=300, batch_size=64)
    state = tmp_path / "killed" / "state"
    mid_save = False
    for _ in range(30):
        run = subprocess.Popen(stage(tmp_path, "killed"), env=ENVIRON,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda run=run: run.poll() is not None or (state / "rank0.pt").exists())
            wait_for(lambda run=run: run.poll() is not None
                     or any(p.name.endswith(".tmp") for p in state.iterdir()))
        finally:
            run.kill()
            run.wait()
        assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        if any(p.name.endswith(".tmp") for p in state.iterdir()):
            mid_save = True
            break
    assert mid_save, "no kill landed while the state was being written"
    finished = subprocess.run(stage(tmp_path, "killed"), env=ENVIRON, capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "resuming digits/tiny at epoch " in finished.stdout
    assert (tmp_path / "killed/tiny.pt").read_bytes() == (tmp_path / "whole/tiny.pt").read_bytes()
    assert not state.exists()  # the state and the killed save's temporary are gone


def test_a_resume_under_threads_auto_takes_the_saved_runs_thread_count(tmp_path):
    """The thread count orders the float sums: a run saved with 1 thread and resumed under
    `auto` goes on with 1, and ends with the bytes of a whole 1-thread run."""
    params = tiny_run_and_whole(tmp_path, [256], epochs=200, batch_size=32)
    state = tmp_path / "killed" / "state"
    run = subprocess.Popen(stage(tmp_path, "killed"), env=ENVIRON, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: run.poll() is not None or (state / "rank0.pt").exists())
    finally:
        run.kill()
        run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    params["execution"]["threads"] = "auto"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    finished = subprocess.run(stage(tmp_path, "killed"), env=ENVIRON, capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "note: resuming with the saved run's 1 threads" in finished.stdout \
        or "1 threads" in finished.stdout.splitlines()[0]  # `auto` found 1 free core itself
    assert "resuming digits/tiny at epoch " in finished.stdout
    assert (tmp_path / "killed/tiny.pt").read_bytes() == (tmp_path / "whole/tiny.pt").read_bytes()
