from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from pipeline.artifacts import (
    ArtifactError,
    atomic_write,
    fresh_directory,
    load_arrays,
    read_json,
    save_arrays,
)


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"half")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_write(target, "w") as handle:
        handle.write("new")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_fresh_directory_swaps_in_only_complete_folders(tmp_path):
    target = tmp_path / "prepared"
    with fresh_directory(target) as staging:
        (staging / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(ValueError), fresh_directory(target) as staging:
        (staging / "b.txt").write_text("2")
        raise ValueError("stage failed")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_arrays_round_trip(tmp_path):
    payload = {"images": np.arange(12, dtype=np.uint8).reshape(3, 1, 2, 2),
               "labels": np.array([0, 1, 2], dtype=np.int64), "classes": ["a", "b", "c"]}
    save_arrays(tmp_path / "x.pkl", payload)
    loaded = load_arrays(tmp_path / "x.pkl")
    np.testing.assert_array_equal(loaded["images"], payload["images"])
    assert loaded["classes"] == ["a", "b", "c"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_with_a_code_payload_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"images": _Exploit()}))
    with pytest.raises(ArtifactError, match=r"references (posix|os)\.system"):
        load_arrays(path)
    assert not (tmp_path / "pwned").exists()


def test_a_truncated_pickle_gives_a_clear_error(tmp_path):
    path = tmp_path / "cut.pkl"
    save_arrays(path, {"labels": np.arange(1000)})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        load_arrays(path)


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.pkl"
    # Object arrays pickle their items through builtins, which the loader refuses too.
    path.write_bytes(pickle.dumps({"labels": np.array([1, "a"], dtype=object)}))
    with pytest.raises(ArtifactError):
        load_arrays(path)


def test_read_json_names_the_broken_place(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ArtifactError, match="line 2, column"):
        read_json(path)


def test_sigkill_mid_stage_leaves_no_complete_looking_output_and_the_rerun_recovers(tmp_path):
    """Kill a prepare run while it writes; the output folder must not exist, and the next run
    cleans the leftovers and succeeds."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import FASHION_SAMPLE, ROOT

    raw = tmp_path / "raw"
    raw.mkdir()
    rows = FASHION_SAMPLE.read_text().rstrip("\n").split("\n")
    (raw / "train.csv").write_text("\n".join([rows[0]] + rows[1:] * 40) + "\n")  # 40,000 rows
    params = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text().replace("datasets: [digits]", "datasets: [fmnist]")
    text = text.replace("datasets:\n  digits:", """datasets:
  fmnist:
    format: csv
    train: {path: unused.csv}
    label_column: label
    shape: [1, 28, 28]
    classes: [a, b, c, d, e, f, g, h, i, j]
  digits:""", 1)
    params.write_text(text)
    out = tmp_path / "prepared" / "fmnist"
    command = [sys.executable, "-m", "pipeline.stages.prepare", "--params", str(params),
               "--dataset", "fmnist", "--raw", str(raw), "--out", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if any(out.parent.glob(".fmnist.*.tmp/*")):  # staging has started to fill
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists(), "a killed run must not leave the final output folder"

    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == ["quality.json", "test.pkl", "train.pkl",
                                                      "valid.pkl"]
    assert [p.name for p in out.parent.iterdir()] == ["fmnist"]
