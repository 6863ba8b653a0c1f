"""The whole pipeline through `dvc repro`, in a copy of the repository (one run, small epochs)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.experiments import changed_params, list_experiments
from tests.browser import check_page
from tests.conftest import FASHION_CLASSES, FASHION_SAMPLE, ROOT, LocalServer, serve_bytes, sh

pytestmark = pytest.mark.e2e


def copy_repository(target: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        source = ROOT / name
        if source.is_file() and not name.startswith("tests/"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / "dvc.lock").unlink(missing_ok=True)
    sh(["git", "init", "-q"], target)


def lock_hashes(repo: Path, stage_prefix: str) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {f"{name}:{out['path']}": out["md5"] for name, stage in lock.items()
            if name.startswith(stage_prefix) for out in stage.get("outs", [])}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Iterator[tuple[Path, dict]]:
    """One `dvc repro` of a copy of the repository, shared by the tests below."""
    repo = tmp_path_factory.mktemp("e2e") / "repo"
    repo.mkdir()
    copy_repository(repo)
    server = LocalServer()
    server.thread.start()
    try:
        url = server.add("/kaggle/fashion-mnist_test.csv",
                         serve_bytes(FASHION_SAMPLE.read_bytes()))
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["run"]["datasets"] = ["digits", "fashion_sample"]
        params["datasets"]["fashion_sample"] = {   # a user CSV, added through params only
            "format": "csv", "train": {"url": url}, "header": True, "label_column": "label",
            "shape": [1, 28, 28], "classes": FASHION_CLASSES}
        params["train"]["epochs"] = 2
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        sh(["dvc", "repro"], repo)
        yield repo, params
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def test_the_report_renders_in_a_real_browser(built, tmp_path):
    repo, _ = built
    report = repo / "reports" / "index.html"
    check = check_page(report, tmp_path)
    assert check.images == report.read_text().count("<img ") > 20
    assert check.broken == [] and check.errors == [] and check.console_errors == []
    assert check.screenshot.stat().st_size > 20_000


def test_dvc_repro_end_to_end(built, tmp_path):
    repo, params = built

    html = (repo / "reports" / "index.html").read_text()
    for dataset in ("digits", "fashion_sample"):
        for model in params["run"]["models"]:
            for section in ("curves", "confusion", "classes", "errors", "probabilities",
                            "weights", "layers"):
                assert f'id="{dataset}-{model}-{section}"' in html, (dataset, model, section)
            has_filters = f'id="{dataset}-{model}-filters"' in html
            assert has_filters == (params["models"][model]["arch"] in ("cnn", "convnet"))
        for section in ("data", "models", "tradeoff", "ensemble", "curves", "params"):
            assert f'id="{dataset}-{section}"' in html, (dataset, section)
    images = re.findall(r'<img src="([^"]+)"', html)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert "T-shirt/top" in html

    metrics = json.loads(sh(["dvc", "metrics", "show", "--json"], repo))
    shown = json.dumps(metrics)
    for dataset in ("digits", "fashion_sample"):
        for model in params["run"]["models"]:
            assert f"reports/live/{dataset}/{model}/metrics.json" in shown
    cnn = json.loads((repo / "reports/live/fashion_sample/cnn/metrics.json").read_text())
    assert cnn["params"] == 26_194 and cnn["step"] == 2  # step: epochs logged by dvclive
    assert cnn["seeds"]["count"] == params["models"]["cnn"]["seeds"] == 3
    assert 'id="fashion_sample-ensemble"' in html and "Seed ensembles" in html
    tensorboard = repo / "reports/tensorboard/fashion_sample/cnn"
    assert [p.name for p in tensorboard.iterdir()] == ["README.txt"]  # train.tensorboard: false

    assert "Data and pipelines are up to date" in sh(["dvc", "repro"], repo)
    sh(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
    assert (tmp_path / "plots" / "index.html").stat().st_size > 1000

    # Deterministic on CPU: rebuild from nothing, same prepared data and the same accuracies.
    prepared = lock_hashes(repo, "prepare")
    accuracies = {p: json.loads(p.read_text())["test"]["accuracy"]
                  for p in sorted((repo / "reports/live").rglob("metrics.json"))}
    shutil.rmtree(repo / "data" / "raw")
    shutil.rmtree(repo / "data" / "prepared")
    sh(["dvc", "repro", "--force"], repo)
    assert lock_hashes(repo, "prepare") == prepared
    assert {p: json.loads(p.read_text())["test"]["accuracy"] for p in accuracies} == accuracies


def test_an_experiment_is_logged_by_dvclive_and_compared_in_the_report(built):
    """`dvc exp run` commits the dvclive files; the report stage reads DVC's experiment list
    while `dvc exp run` is running it; `dvc exp show` and the experiments module see both."""
    repo, params = built
    sh(["git", "config", "user.name", "e2e"], repo)
    sh(["git", "config", "user.email", "e2e@example.org"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline"], repo)
    sh(["dvc", "exp", "run", "-n", "narrow", "-S", "models.linearnet.hidden=[128,32]"], repo)

    html = (repo / "reports" / "index.html").read_text()
    experiments = html[html.index('id="experiments"'):html.index('id="digits"')]
    # the committed baseline's row shows where it differs from this run
    assert "(committed)" in experiments and "models.linearnet.hidden=[256, 64]" in experiments
    assert "<img " in experiments  # the overlaid validation curves

    assert "narrow" in sh(["dvc", "exp", "show", "--json"], repo)
    ref = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).split()
    committed = sh(["git", "ls-tree", "-r", "--name-only", next(r for r in ref
                                                             if r.endswith("/narrow"))], repo)
    assert "reports/live/digits/linearnet/metrics.json" in committed
    assert "reports/live/digits/linearnet/plots/metrics/valid/accuracy.tsv" in committed
    assert ".tmp" not in committed

    runs = [(d, m) for d in params["run"]["datasets"] for m in params["run"]["models"]]
    found = list_experiments(repo, runs, "reports/live")
    assert [e.name for e in found][1:] == ["narrow"]
    assert changed_params(found[1], found[0].params) == {"models.linearnet.hidden": [128, 32]}
