"""`.venv/bin/dvc repro` without activating `.venv`: the stages run with DVC's own Python."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import interpreter
from tests.conftest import ROOT, copy_repository, tool_env

pytestmark = pytest.mark.e2e


def another_python(folder: Path) -> Path:
    """A `python` that is not the project's: the base interpreter without site-packages (so
    without torch), as a user's system Python would be."""
    folder.mkdir()
    for name in ("python", "python3"):
        python = folder / name
        python.write_text(f'#!/bin/sh\nexec "{sys._base_executable}" -S "$@"\n')
        python.chmod(0o755)
    return python


def test_dvc_repro_runs_the_stages_with_dvcs_python_whatever_python_is_on_path(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repository(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["run"]["models"] = ["linear"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fake = another_python(tmp_path / "bin")
    # what a user's shell has after `make`: .venv not activated, another python first on PATH
    env = {**tool_env(), "PATH": f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", "prepare@digits"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "note: running pipeline.stages.download with" in done.stderr
    assert "(`python3` here is" in done.stderr
    assert (repo / "data/prepared/digits/train.pkl").is_file()


def test_a_stage_outside_dvc_with_another_python_says_in_one_line_what_to_do(tmp_path):
    fake = another_python(tmp_path / "bin")
    env = {"PATH": f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin", "DVC_STAGE": "x",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(fake), "-m", "pipeline.stages.train", "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert "is not the project's Python (it has no torch)" in line
    assert "source .venv/bin/activate" in line


class Reexecuted(Exception):
    pass


@pytest.mark.parametrize("dvcs_has_torch", [True, False])
def test_the_stage_re_executes_only_into_a_python_that_has_torch(monkeypatch, dvcs_has_torch):
    """DVC installed with pipx or system-wide has no torch: then an activated .venv runs the
    stage; a DVC whose Python has torch gets the stage re-executed with it."""
    other = str(Path(sys._base_executable))
    monkeypatch.setenv("DVC_STAGE", "train@digits-cnn")
    monkeypatch.delenv(interpreter.REEXEC_ENV, raising=False)
    monkeypatch.setattr(interpreter, "dvc_python", lambda: other)
    monkeypatch.setattr(interpreter, "_cmdline",
                        lambda pid: [other, "-m", "pipeline.stages.train", "--help"])
    monkeypatch.setattr(interpreter, "has_pipeline_packages", lambda python: dvcs_has_torch)

    def execv(path, args):
        raise Reexecuted(path)

    monkeypatch.setattr(os, "execv", execv)
    if dvcs_has_torch:
        with pytest.raises(Reexecuted, match=other):
            interpreter.run_with_dvcs_python()
    else:
        interpreter.run_with_dvcs_python()  # returns: this Python, with torch, runs the stage


def test_a_python_without_torch_is_told_apart(tmp_path):
    assert interpreter.has_pipeline_packages(sys.executable)
    assert not interpreter.has_pipeline_packages(str(another_python(tmp_path / "bin")))
