"""pipeline/cli.py: how every stage process is set up (its failures: tests/test_hostile.py)."""

from __future__ import annotations

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
