"""pipeline/cli.py: how every stage process is set up (its failures: tests/test_hostile.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from tests.conftest import ROOT, tool_env


def test_a_stage_process_leaves_its_imports_and_what_it_built_to_the_end(tmp_path):
    """Frozen objects are not walked by the collector, at exit above all (0.5-0.9 s of each
    stage process with torch imported, 0.14 s frozen)."""
    script = textwrap.dedent("""
        import gc
        from pipeline.cli import run_stage
        counts = []
        def main():
            counts.append(gc.get_freeze_count())
            global built
            built = [[i] for i in range(1000)]
        run_stage(main)
        print(counts[0] > 0, gc.get_freeze_count() >= counts[0] + 1000)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, env={**tool_env(), "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


def test_every_stage_imports_without_the_collector_and_runs_with_it(tmp_path):
    """Run as DVC runs it, each stage module turns the collector off before its imports
    (0.18 s of torch's import alone); run_stage turns it back on, less eager, for the stage's
    work."""
    from pipeline.cli import COLLECT_EVERY

    stages = sorted(path.stem for path in (ROOT / "pipeline" / "stages").glob("*.py")
                    if path.stem != "__init__")
    assert {"download", "prepare", "train", "evaluate", "report"} <= set(stages)
    script = textwrap.dedent("""
        import gc, runpy, sys
        import pipeline.cli
        run_stage = pipeline.cli.run_stage
        after_imports = []  # what the stage's own run_stage call sees, its imports done
        pipeline.cli.run_stage = lambda main, **_: after_imports.append(gc.isenabled())
        runpy.run_module(f"pipeline.stages.{sys.argv[1]}", run_name="__main__")
        during_work = []
        run_stage(lambda: during_work.append((gc.isenabled(), gc.get_threshold()[0])))
        print(*after_imports, *during_work[0])
    """)
    for stage in stages:
        done = subprocess.run([sys.executable, "-c", script, stage], cwd=tmp_path,
                              capture_output=True, text=True,
                              env={**tool_env(), "PYTHONPATH": str(ROOT)}, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["False", "True", str(COLLECT_EVERY)], (stage, done.stdout)


def test_ctrl_c_while_a_stage_imports_says_so_in_one_line(tmp_path):
    """-X importtime reports each import as it ends: once the stage package is in, the stage's
    own imports (torch) are still to come, and SIGINT lands among them."""
    stage = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "pipeline.stages.train", "--params", "none"],
        cwd=tmp_path, env={**tool_env(), "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE,
        text=True)
    assert stage.stderr is not None
    lines = []
    for line in stage.stderr:
        lines.append(line)
        if line.rstrip().endswith("| pipeline.stages"):
            stage.send_signal(signal.SIGINT)
            break
    lines += stage.stderr.readlines()
    assert stage.wait(timeout=60) == 130
    told = [line for line in lines if not line.startswith("import time:")]
    assert told == ["interrupted while starting; nothing was written\n"]
