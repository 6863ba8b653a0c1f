"""The DVC stage entry points, one module per stage, run as `python3 -m pipeline.stages.<name>`.

Each is a leaf: it parses its arguments, loads params.yaml once, calls the library and writes
its outputs. Nothing imports a stage module, so a stage's code is exactly its import closure,
which dvc.yaml lists as its deps (tests/test_dvc_graph.py keeps the two equal).
"""

from pipeline.interpreter import run_with_dvcs_python

run_with_dvcs_python()
