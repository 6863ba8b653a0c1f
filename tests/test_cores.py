"""How many threads `execution.threads: auto` runs: the usable cores other work leaves free."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pipeline import cores
from pipeline.cores import free_cores, threads_for, usable_cores


def test_a_cgroup_quota_caps_the_usable_cores(tmp_path, monkeypatch):
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(cores, "CGROUP_CPU_MAX", quota)
    affinity = len(os.sched_getaffinity(0))
    quota.write_text("50000 100000\n")  # docker run --cpus 0.5: one core
    assert usable_cores() == 1
    quota.write_text("max 100000\n")   # no quota
    assert usable_cores() == affinity
    quota.write_text("garbage")
    assert usable_cores() == affinity


def test_the_affinity_a_process_is_given_is_what_it_may_use():
    first = min(os.sched_getaffinity(0))
    done = subprocess.run(
        [sys.executable, "-c", "from pipeline.cores import usable_cores; print(usable_cores())"],
        preexec_fn=lambda: os.sched_setaffinity(0, {first}), capture_output=True, text=True,
        check=True)
    assert done.stdout.strip() == "1"


def test_a_core_kept_busy_by_other_work_is_left_to_it():
    usable = usable_cores()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = free_cores(window_s=0.5)
    finally:
        hog.kill()
        hog.wait()
    assert 1 <= busy <= max(1, usable - 1)


@pytest.mark.parametrize("setting", [1, 3, 64])
def test_a_number_is_taken_as_given(setting):
    assert threads_for(setting) == setting


def test_auto_is_between_one_and_the_usable_cores():
    assert 1 <= threads_for("auto") <= usable_cores()
