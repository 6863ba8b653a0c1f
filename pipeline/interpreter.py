"""Stages run with the Python that DVC runs with, whatever `python3` is first on PATH.

dvc.yaml's commands say `python3 -m pipeline.stages.X`, and DVC runs them through the shell, so
`.venv/bin/dvc repro` typed without activating `.venv` would run the stages with another
interpreter (one without torch, or with other versions of everything). The stage package calls
`run_with_dvcs_python()` before anything else: run by DVC (`DVC_STAGE` is set) under another
environment than DVC's own, it replaces the process with DVC's interpreter running the same
command, if that one has the pipeline's packages (DVC installed with pipx or system-wide has
not: then an activated `.venv` runs the stage). Where neither has them, it stops with one line
saying what to do. Standard library only: it runs before any dependency is imported.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REEXEC_ENV = "PIPELINE_STAGE_PYTHON"  # set on the re-executed process: never re-exec twice
ANCESTORS = 8  # DVC -> (shell) -> stage; a queue worker adds a level or two


def _cmdline(pid: int | str) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


def _runs_dvc(args: list[str]) -> bool:
    return len(args) > 1 and (Path(args[1]).name == "dvc" or args[1:3] == ["-m", "dvc"])


def dvc_python() -> str | None:
    """The interpreter of the DVC process that started this one, as DVC was started with it (a
    venv's bin/python, not the interpreter that links to); None where it cannot be told."""
    try:
        pid = os.getppid()
        for _ in range(ANCESTORS):
            args = _cmdline(pid)
            if _runs_dvc(args):
                python = Path(os.readlink(f"/proc/{pid}/cwd"), args[0])
                return str(python) if python.name.startswith("python") and \
                    os.access(python, os.X_OK) else None
            pid = _parent(pid)
            if pid <= 1:
                return None
    except (OSError, ValueError, IndexError):
        return None
    return None


def environment_root(python: str) -> Path:
    """Where an interpreter's packages come from: its venv folder, else its install prefix."""
    path = Path(python)
    if (path.parent.parent / "pyvenv.cfg").is_file():
        return path.parent.parent.resolve()
    return Path(os.path.realpath(path)).parent.parent


def has_pipeline_packages(python: str) -> bool:
    """Whether an interpreter can import what the stages need (torch stands for them all)."""
    try:
        done = subprocess.run(
            [python, "-c", "import importlib.util, sys; "
             "sys.exit(importlib.util.find_spec('torch') is None)"],
            capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def run_with_dvcs_python() -> None:
    if "DVC_STAGE" not in os.environ or os.environ.get(REEXEC_ENV):
        return
    here_ok = importlib.util.find_spec("torch") is not None
    python = dvc_python()
    if python is not None and environment_root(python) != Path(sys.prefix).resolve() \
            and has_pipeline_packages(python):
        try:
            own = _cmdline("self")
            command = own[own.index("-m"):]  # `-m pipeline.stages.X ...`, without this
        except (OSError, ValueError):       # interpreter's own options
            command = None
        if command:
            print(f"note: running {command[1]} with {python}, the Python DVC runs with "
                  f"(`python3` here is {sys.executable})", file=sys.stderr)
            os.environ[REEXEC_ENV] = python
            os.execv(python, [python, *command])
    if not here_ok:  # DVC's own Python (a pipx or system install) may lack torch: then this one
        print(f"error: {sys.executable} is not the project's Python (it has no torch), and "
              "neither is the one DVC runs with; activate the environment first "
              "(`source .venv/bin/activate`) or run `make repro`", file=sys.stderr)
        sys.exit(1)
