"""The DVC stage entry points, one module per stage, run as `python3 -m pipeline.stages.<name>`.

Each is a leaf: it parses its arguments, loads params.yaml once, calls the library and writes
its outputs. Nothing imports a stage module, so a stage's code is exactly its import closure,
which dvc.yaml lists as its deps (tests/test_dvc_graph.py keeps the two equal).
"""

import os
import signal
import sys

from pipeline.interpreter import run_with_dvcs_python


def _interrupted_while_starting(_number: int, _frame) -> None:
    sys.stderr.write("interrupted while starting; nothing was written\n")
    os._exit(128 + signal.SIGINT)


# Run as a stage (`python3 -m pipeline.stages.X`: argv[0] is "-m" while the package loads), a
# Ctrl-C during the stage's imports ends it with one line; `run_stage` then takes over.
if sys.argv[0] == "-m" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_starting)
run_with_dvcs_python()
