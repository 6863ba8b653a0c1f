"""A user's own CSV, pinned by sha256, through `dvc repro`: an edit shows in `dvc status`, the
refusal says how to re-pin and keeps the last good data, and the file is not stored thrice."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from tests.conftest import FASHION_CLASSES, FASHION_SAMPLE, copy_repository, dvc_status, run, sh

pytestmark = pytest.mark.e2e


def test_editing_a_pinned_local_csv_shows_in_dvc_status_and_keeps_the_last_good_data(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repository(repo)
    local = tmp_path / "mine.csv"  # the user's file, outside the repository
    local.write_bytes(FASHION_SAMPLE.read_bytes())
    pin = hashlib.sha256(local.read_bytes()).hexdigest()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["run"].update(datasets=["mine"], models=["linear"])
    params["datasets"]["mine"] = {
        "format": "csv", "train": {"path": str(local), "sha256": pin}, "header": True,
        "label_column": "label", "shape": [1, 28, 28], "classes": FASHION_CLASSES}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "repro", "prepare@mine"], repo)
    raw = sorted(p for p in (repo / "data/raw/mine").rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in raw}
    prepared = {p: p.read_bytes() for p in (repo / "data/prepared/mine").rglob("*.pkl")}
    # the raw copy and DVC's cache share one file (cache.type hardlink): stored twice at most
    assert raw and all(p.stat().st_nlink >= 2 for p in raw)
    assert dvc_status(repo).keys() <= {"train@mine-linear", "evaluate@mine", "report"}

    # the user fixes one label, as the report's label-error gallery invites
    text = local.read_text()
    first = text.index("\n") + 1
    fixed = text[:first] + ("1" if text[first] != "1" else "2") + text[first + 1:]
    local.write_text(fixed)
    new_pin = hashlib.sha256(fixed.encode()).hexdigest()
    assert "download@mine" in dvc_status(repo)

    done = run(["dvc", "repro", "prepare@mine"], repo)
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "the file changed since you pinned it" in said
    assert f"re-pin with sha256 {new_pin}" in said and "Traceback" not in said
    # the refused run left the last good outputs in place
    assert {p: p.read_bytes() for p in raw} == before
    assert {p: p.read_bytes() for p in prepared} == prepared
    assert (repo / "data/sources/mine/train.csv").is_symlink()

    # re-pinned, as the message says: the new data flows through
    params["datasets"]["mine"]["train"]["sha256"] = new_pin
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "repro", "prepare@mine"], repo)
    assert {p: p.read_bytes() for p in raw} != before
    assert "download@mine" not in dvc_status(repo)
