"""The whole pipeline through `dvc repro`, in a copy of the repository (one run, small epochs)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.architectures import ARCHITECTURES
from pipeline.evaluation import load_evaluation
from pipeline.experiments import Flips, changed_params, flips, list_experiments, read_revision
from pipeline.saliency import SELFTEST_IMAGES as SELFTEST_SALIENCY
from pipeline.splits import load_split
from tests.browser import check_page, dump_dom
from tests.conftest import (
    FASHION_CLASSES,
    FASHION_SAMPLE,
    LocalServer,
    copy_repository,
    dvc_status,
    run_slots,
    serve_bytes,
    sh,
)
from tests.test_dvc_graph import import_closure, stage_definitions, stage_module

pytestmark = pytest.mark.e2e


def page_result(repo: Path, script: str, name: str) -> Any:
    """Run `script` at the end of the built report in Chromium; it writes JSON into a
    `<pre id="name">`, returned parsed."""
    dom = dump_dom(repo / "reports" / "index.html", script=script)
    found = re.search(rf'<pre id="{name}">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(unescape(found.group(1)))


def lock_hashes(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {f"{name}:{out['path']}": out["md5"] for name, stage in lock.items()
            for out in stage.get("outs", [])}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Iterator[tuple[Path, dict, LocalServer]]:
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
        local_test = repo.parent / "fashion-test.csv"  # a local file outside the repository
        local_test.write_bytes(FASHION_SAMPLE.read_bytes())
        params["datasets"]["fashion_sample"] = {   # a user CSV, added through params only
            "format": "csv", "train": {"url": url}, "test": {"path": str(local_test)},
            "header": True, "label_column": "label", "shape": [1, 28, 28],
            "classes": FASHION_CLASSES}
        params["drawing"]["fashion_sample"] = {"fit": 1.0, "center": "box"}
        params["train"]["epochs"] = 2
        # bit-identical re-runs need the same thread count; `auto` follows the machine's load
        params["execution"]["threads"] = 1
        params["run"]["models"] = [*params["run"]["models"], "simple_convnet"]  # 2 x 6 models
        # a stop the report must show: linear's loss is above this after its first epoch
        params["models"]["linear"]["train"] = {"early_stopping": {"max_loss": 0.01}}
        # and an augmented model, whose images the report shows
        params["models"]["linearnet"]["train"] = {"augment": {"translate": 0.1, "erase": 0.5}}
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        (repo.parent / "repro.log").write_text(sh(["dvc", "repro"], repo))
        yield repo, params, server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def test_the_report_renders_in_a_real_browser(built, tmp_path):
    repo, *_ = built
    report = repo / "reports" / "index.html"
    check = check_page(report, tmp_path)
    # the page's own images plus those the run sidecar adds (the experiments overlay)
    slots = "".join(run_slots(repo).values())
    assert check.images == report.read_text().count("<img ") + slots.count("<img ") > 20
    assert check.broken == [] and check.errors == [] and check.console_errors == []
    assert check.unfilled == []  # every timing and git slot was filled from reports/run.js
    # 2 datasets x 6 models stay readable at 1280 px: nothing wider than the window
    assert check.page_width <= 1280, check.page_width
    shown = tmp_path / "report-1280px.png"
    shutil.copyfile(check.screenshot, shown)
    print(f"report screenshot at 1280 px: {shown}")
    assert check.screenshot.stat().st_size > 20_000


def test_the_page_checks_its_own_forward_pass(built):
    """#selftest: every embedded model re-classifies embedded test images in JavaScript, and
    computes the occlusion saliency of the first ones as PyTorch did."""
    repo, params, _ = built
    dom = dump_dom(repo / "reports" / "index.html", "selftest")
    found = re.search(r'<pre id="selftest">max_abs_diff=([0-9.e+-]+) models=(\d+) images=(\d+)'
                      r' saliency_max_abs_diff=([0-9.e+-]+) saliency_maps=(\d+)', dom)
    assert found, dom[-2000:]
    html = (repo / "reports" / "index.html").read_text()
    embedded = sum(len(json.loads(block)["models"]) for block in re.findall(
        r'<script type="application/json" class="draw-data">(.*?)</script>', html, re.S))
    assert float(found.group(1)) <= 1e-4 and float(found.group(4)) <= 1e-4
    assert int(found.group(5)) == int(found.group(2)) * SELFTEST_SALIENCY  # every map checked
    assert int(found.group(2)) == embedded == 6 + 4  # cnn3 and simple_convnet left out at 28x28
    assert "Left out: " in html and "report.draw_max_params" in html


def test_drawing_a_stroke_updates_every_model(built):
    repo, *_ = built
    stroke = """
      var board = document.querySelector('.draw-board'), box = board.getBoundingClientRect();
      function send(type, x, y) {
        board.dispatchEvent(new PointerEvent(type, {clientX: box.left + x, clientY: box.top + y,
                                                    pointerId: 1, bubbles: true}));
      }
      function rows() {
        return Array.from(board.closest('.draw-panel').querySelectorAll('.draw-row'))
          .map(function (r) { return r.dataset.model + '=' + r.dataset.probabilities; });
      }
      var before = rows();
      send('pointerdown', 140, 50);
      for (var i = 1; i <= 18; i++) { send('pointermove', 140 + (i % 3), 50 + 10 * i); }
      send('pointerup', 142, 230);
      requestAnimationFrame(function () { setTimeout(function () {
        var out = document.createElement('pre'); out.id = 'stroke';
        out.textContent = JSON.stringify({before: before, after: rows()});
        document.body.appendChild(out);
      }, 0); });"""
    result = page_result(repo, stroke, "stroke")
    assert result["before"] == []  # a blank board: nothing to classify
    assert len(result["after"]) >= 4
    assert all(len(row.split("=")[1].split(",")) == 10 for row in result["after"])


def test_a_confusion_cell_and_a_class_open_their_test_images(built):
    """In Chromium: in each dataset's error browser, for the first model and the all-model
    ensemble, clicking the fullest off-diagonal cell shows its images (given and predicted as
    the cell says, the most confident first, as many as the cell holds up to what the page
    carries), and clicking a class shows its images, the least sure first."""
    repo, params, _ = built
    script = """
      var found = [];
      document.querySelectorAll('.errors-panel').forEach(function (panel) {
        var select = panel.querySelector('select');
        [0, select.options.length - 1].forEach(function (option) {
          select.value = String(option);
          select.dispatchEvent(new Event('change'));
          var cells = Array.from(panel.querySelectorAll('td.error'));
          cells.sort(function (a, b) { return b.dataset.count - a.dataset.count; });
          function shown() {
            return Array.from(panel.querySelectorAll('.errors-thumb')).map(function (f) {
              return [Number(f.dataset.label), Number(f.dataset.predicted),
                      f.querySelector('figcaption').textContent,
                      f.querySelector('.errors-sprite').style.backgroundPosition]; });
          }
          cells[0].querySelector('button').click();
          var cell = shown(), title = panel.querySelector('.errors-title').textContent;
          panel.querySelectorAll('th button')[1].click();
          found.push({dataset: panel.dataset.dataset, view: select.selectedOptions[0].text,
                      given: Number(cells[0].dataset.given),
                      predicted: Number(cells[0].dataset.predicted),
                      count: Number(cells[0].dataset.count), title: title, cell: cell,
                      klass: shown()});
        });
      });
      var out = document.createElement('pre'); out.id = 'errors-check';
      out.textContent = JSON.stringify(found);
      document.body.appendChild(out);"""
    opened = page_result(repo, script, "errors-check")
    assert [o["dataset"] for o in opened] == [d for d in params["run"]["datasets"]
                                              for _ in range(2)]
    assert [o["view"] for o in opened[:2]] == [params["run"]["models"][0], "all-model ensemble"]
    for case in opened:
        cell = case["cell"]
        assert 0 < len(cell) == min(case["count"], 24), case["title"]
        assert {(label, guess) for label, guess, *_ in cell} == {(case["given"],
                                                                  case["predicted"])}
        confidence = [float(re.search(r"top: [^(]+\(([\d.]+) %\)", caption).group(1))
                      for *_, caption, _ in cell]
        assert confidence == sorted(confidence, reverse=True)
        assert len({position for *_, position in cell}) == len(cell)  # distinct thumbnails
        assert f": {case['count']} test image" in case["title"]
        assert case["klass"] and {label for label, *_ in case["klass"]} == {1}


def test_hovering_a_point_of_the_embedding_map_shows_its_image_and_prediction(built):
    """In Chromium: each dataset's map places every test image (fewer than the cap here) for
    every model; hovering a mistake of the chosen model names the image, its label and the
    model's prediction, as the evaluation records say; t-SNE can be chosen."""
    repo, params, _ = built
    script = """
      var found = [];
      document.querySelectorAll('.embedding-panel').forEach(function (panel) {
        var model = panel.querySelector('.embedding-model');
        model.value = String(model.options.length - 1);
        model.dispatchEvent(new Event('change'));
        var projection = panel.querySelector('.embedding-projection');
        projection.value = 'tsne';
        projection.dispatchEvent(new Event('change'));
        var points = panel.querySelectorAll('.embedding-point');
        var wrong = panel.querySelector('.embedding-point.wrong');
        wrong.dispatchEvent(new MouseEvent('mouseover'));
        found.push({dataset: panel.dataset.dataset, model: model.selectedOptions[0].text,
                    points: points.length, index: Number(wrong.dataset.index),
                    x: [points[0].getAttribute('cx'), points[1].getAttribute('cx')],
                    caption: panel.querySelector('.embedding-caption').textContent,
                    picture: !!panel.querySelector('.embedding-tip .errors-sprite')});
      });
      var out = document.createElement('pre'); out.id = 'map-check';
      out.textContent = JSON.stringify(found);
      document.body.appendChild(out);"""
    hovered = page_result(repo, script, "map-check")
    assert [h["dataset"] for h in hovered] == params["run"]["datasets"]
    last = params["run"]["models"][-1]
    for case in hovered:
        test = load_split(repo / "data/prepared" / case["dataset"] / "test.pkl")
        record = load_evaluation(repo / "reports/evaluation" / case["dataset"] / f"{last}.pkl")
        assert case["model"].startswith(f"{last} (") and case["points"] == len(test.labels)
        assert case["x"][0] != case["x"][1] and case["picture"]
        index = case["index"]
        classes = json.loads((repo / "data/prepared" / case["dataset"] / "quality.json")
                             .read_text())["classes"]
        predicted = classes[int(record.logits[0][index].argmax())]
        assert case["caption"].startswith(
            f"#{index}: given {classes[test.labels[index]]}, {last} predicts {predicted} (")
        assert ": a mistake" in case["caption"] and predicted != classes[test.labels[index]]


def test_a_photo_dropped_on_the_canvas_is_turned_upright_as_predict_turns_it(built, tmp_path):
    """A JPEG stored sideways with EXIF Orientation 6 is read upright by the page's file drop
    (the browser applies the tag) and by pipeline-predict (Pillow's exif_transpose): the same
    probabilities as the upright PNG in the page, the same class in predict; the stored pixels
    alone read as another digit."""
    import base64
    import io
    import subprocess
    import sys

    from PIL import Image, ImageDraw

    repo, *_ = built
    upright = Image.new("L", (96, 96), 255)
    ImageDraw.Draw(upright).line([(30, 20), (66, 20), (40, 80)], fill=0, width=9)  # a 7
    stored = upright.rotate(90, expand=True)  # Orientation 6: turn 90 degrees clockwise to show
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {"upright.png": upright, "photo.jpg": stored.convert("RGB"), "stored.png": stored}
    encoded = {}
    for name, image in files.items():
        buffer = io.BytesIO()
        if name.endswith(".jpg"):
            image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
        else:
            image.save(buffer, "PNG")
        (tmp_path / name).write_bytes(buffer.getvalue())
        encoded[name] = [base64.b64encode(buffer.getvalue()).decode(),
                         "image/jpeg" if name.endswith(".jpg") else "image/png"]
    script = "var files = " + json.dumps(encoded) + """;
      var names = Object.keys(files), results = {};
      var board = document.querySelector('.draw-board'), panel = board.closest('.draw-panel');
      function rows() {
        return Array.from(panel.querySelectorAll('.draw-row')).map(function (r) {
          return r.dataset.model + '=' + r.dataset.probabilities; });
      }
      function next(i) {
        if (i === names.length) {
          var out = document.createElement('pre'); out.id = 'dropped';
          out.textContent = JSON.stringify(results); document.body.appendChild(out); return;
        }
        var spec = files[names[i]];
        var bytes = Uint8Array.from(atob(spec[0]), function (c) { return c.charCodeAt(0); });
        var transfer = new DataTransfer();
        transfer.items.add(new File([bytes], names[i], {type: spec[1]}));
        board.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true,
                                                   cancelable: true}));
        setTimeout(function () { results[names[i]] = rows(); next(i + 1); }, 1000);
      }
      next(0);"""
    shown = page_result(repo, script, "dropped")
    assert shown["photo.jpg"] == shown["upright.png"] and shown["photo.jpg"]
    assert shown["stored.png"] != shown["upright.png"]
    tops = {}
    for name in files:
        done = subprocess.run([sys.executable, "-m", "pipeline.predict", str(tmp_path / name),
                               "--checkpoint", "models/digits/cnn.pt", "--top-k", "1"],
                              cwd=repo, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        tops[name] = done.stdout.split(": ", 1)[1].split()[0]
    assert tops["photo.jpg"] == tops["upright.png"]


def test_dvc_repro_end_to_end(built, tmp_path):
    repo, params, _ = built

    html = (repo / "reports" / "index.html").read_text()
    for dataset in ("digits", "fashion_sample"):
        for model in params["run"]["models"]:
            for section in ("curves", "confusion", "classes", "errors", "probabilities",
                            "weights", "layers"):
                assert f'id="{dataset}-{model}-{section}"' in html, (dataset, model, section)
            has_filters = f'id="{dataset}-{model}-filters"' in html
            arch = ARCHITECTURES[params["models"][model]["arch"]]
            assert has_filters == arch.convolutional
        for section in ("data", "models", "tradeoff", "ensemble", "curves", "params",
                        "significance", "calibration", "roc", "label-errors", "errors",
                        "embedding", "saliency", "flips", "time-to-accuracy", "draw"):
            assert f'id="{dataset}-{section}"' in html, (dataset, section)
    images = re.findall(r'<img src="([^"]+)"', html)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    # the size budget, 2 datasets x 6 models (README: Reading the report)
    assert len(html.encode()) < 10_000_000
    assert "T-shirt/top" in html
    linear_row = html[html.index('<td><a href="#digits-linear">linear</a></td>'):]
    linear_row = linear_row[:linear_row.index("</tr>")]
    assert "<td>1 of 2<br>" in linear_row
    assert "stopped early: diverging: train loss " in linear_row
    assert "above early_stopping.max_loss 0.01" in linear_row
    assert 'id="digits-augmentation"' in html and 'id="fashion_sample-augmentation"' in html
    assert "training images as augmentation changes them for linearnet" in html

    # one verdict everywhere: the summary, the models table and the report stage's last lines
    printed = (repo.parent / "repro.log").read_text()
    for dataset in ("digits", "fashion_sample"):
        summary = html[html.index(f'<td><a href="#{dataset}">{dataset}</a></td>'):]
        summary = " ".join(summary[:summary.index("</tr>")].split())
        table = html[html.index(f'id="{dataset}-models"'):]
        table = table[:table.index("</table>")]
        marked = re.findall(rf'<tr class="(best|tied)"[^>]*>\s*<td><a href="#{dataset}-(\w+)">',
                            table)
        kinds, names = {kind for kind, _ in marked}, [name for _, name in marked]
        if kinds == {"best"}:
            assert len(names) == 1 and f"<td>{names[0]} <span" in summary, (summary, marked)
            assert f"{dataset}: best model {names[0]} (" in printed
        else:
            tied = re.search(r"tied: ([\w, ]+) <span", summary)
            assert kinds == {"tied"} and tied, (summary, marked)
            assert sorted(tied.group(1).split(", ")) == sorted(names), (summary, marked)
            assert f"{dataset}: tied at the top: {tied.group(1)} (" in printed
        # two epochs make weak models: their disputed labels are not claimed as label errors
        assert "none claimed" in summary and " disputed</a>" in summary, summary
    assert "<b>Not claimed as label errors</b>: the models together are " in html

    metrics = json.loads(sh(["dvc", "metrics", "show", "--json"], repo))
    shown = json.dumps(metrics)
    for dataset in ("digits", "fashion_sample"):
        for model in params["run"]["models"]:
            assert f"reports/live/{dataset}/{model}/metrics.json" in shown
    cnn = json.loads((repo / "reports/live/fashion_sample/cnn/metrics.json").read_text())
    assert cnn["parameter_count"] == 26_194 and "params" not in cnn  # not DVC's params
    assert cnn["step"] == 2  # epochs logged by dvclive
    assert cnn["seeds"]["count"] == params["models"]["cnn"]["seeds"] == 3
    assert 'id="fashion_sample-ensemble"' in html and "Seed ensembles" in html
    tensorboard = repo / "reports/tensorboard/fashion_sample/cnn"
    assert [p.name for p in tensorboard.iterdir()] == ["README.txt"]  # tensorboard off

    assert "Data and pipelines are up to date" in sh(["dvc", "repro"], repo)
    sh(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
    assert (tmp_path / "plots" / "index.html").stat().st_size > 1000

    # Timings are shown, but only through the sidecar: nothing DVC hashes holds them.
    slots = run_slots(repo)
    # "Parameters used": of the datasets, models and recipes, only those that ran
    used = yaml.safe_load(unescape(slots["params"].split("<pre>")[1].split("</pre>")[0]))
    assert list(used["datasets"]) == params["run"]["datasets"]
    assert list(used["models"]) == sorted(params["run"]["models"], key=list(
        params["models"]).index)
    assert set(used["drawing"]) <= set(params["run"]["datasets"])
    assert used["train"]["epochs"] == 2
    assert slots["seconds:digits/cnn"].endswith(" s") and "rate:fashion_sample/linear" in slots
    assert 'data-run="seconds:digits/cnn"' in html and "samples/s" in html


def test_a_forced_rerun_reproduces_every_output_byte_for_byte(built):
    """`dvc repro -f` on CPU: prepared data, checkpoints, evaluations, the report page and
    every committed metric file are the same bytes; only the timing files differ."""
    repo, *_ = built
    before = lock_hashes(repo)
    live = {p: p.read_bytes() for p in sorted((repo / "reports/live").rglob("*")) if p.is_file()}
    timing = (repo / "reports/timing/digits/cnn.json").read_text()
    sh(["dvc", "repro", "--force"], repo)
    after = lock_hashes(repo)
    assert after == before, {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
    assert {p: p.read_bytes() for p in live} == live
    assert (repo / "reports/timing/digits/cnn.json").read_text() != timing


def test_editing_a_module_marks_exactly_the_stages_that_run_it(built):
    repo, *_ = built
    assert dvc_status(repo) == {}
    modules = sorted(p.relative_to(repo) for p in (repo / "pipeline").rglob("*.py"))
    originals = {m: (repo / m).read_bytes() for m in modules}
    try:
        for module in modules:
            with open(repo / module, "a") as handle:
                handle.write("\n# an edit\n")
        changed = {stage.split("@")[0]: sorted(Path(p) for entry in details
                                               if isinstance(entry, dict)
                                               for p in entry.get("changed deps", {}))
                   for stage, details in dvc_status(repo).items()}
    finally:
        for module, text in originals.items():
            (repo / module).write_bytes(text)
    for name, definition in stage_definitions().items():
        expected = sorted(p for p in import_closure(stage_module(definition)))
        assert changed[name] == expected, name
    assert dvc_status(repo) == {}


def test_replacing_a_local_source_file_is_seen_by_dvc(built):
    repo, params, _ = built
    local = Path(params["datasets"]["fashion_sample"]["test"]["path"])
    original = local.read_bytes()
    try:
        lines = original.decode().splitlines(keepends=True)
        local.write_text("".join(lines[:500]))  # the user replaced the file with other data
        changed = dvc_status(repo)
        assert list(changed) == ["download@fashion_sample"]
        assert changed["download@fashion_sample"] == [
            {"changed outs": {"data/sources/fashion_sample": "modified"}}]
    finally:
        local.write_bytes(original)
    assert dvc_status(repo) == {}


def test_a_file_changed_on_its_server_is_found_by_check_sources(built):
    """The fashion_sample train file is an unpinned URL on a server that sends no ETag or
    Last-Modified: `pipeline-check-sources` re-hashes it and marks it for DVC."""
    repo, params, server = built
    path = "/kaggle/fashion-mnist_test.csv"
    check = ["python", "-m", "pipeline.check_sources", "--sources", "data/sources"]
    assert "fashion_sample.train: unchanged" in sh(check, repo)
    assert dvc_status(repo) == {}
    text = FASHION_SAMPLE.read_text()
    server.add(path, serve_bytes(text.replace("\n0,", "\n1,", 1).encode()))
    try:
        assert "fashion_sample.train: changed on the server" in sh(check, repo)
        assert dvc_status(repo) == {"download@fashion_sample": [
            {"changed outs": {"data/sources/fashion_sample": "modified"}}]}
    finally:
        server.add(path, serve_bytes(FASHION_SAMPLE.read_bytes()))
    assert "fashion_sample.train: unchanged" in sh(check, repo)
    assert dvc_status(repo) == {}


def test_an_experiment_is_logged_by_dvclive_and_compared_in_the_report(built):
    """`dvc exp run` commits the dvclive files; the report stage reads DVC's experiment list
    while `dvc exp run` is running it; `dvc exp show` and the experiments module see both."""
    repo, params, _ = built
    sh(["git", "config", "user.name", "e2e"], repo)
    sh(["git", "config", "user.email", "e2e@example.org"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline"], repo)
    sh(["dvc", "exp", "run", "-n", "narrow", "-S", "models.linearnet.hidden=[128,32]"], repo)

    slots = run_slots(repo)
    experiments = slots["experiments"]
    # this run's row names what it changed from the commit, and so does the page's banner
    assert "(committed)" in experiments and "models.linearnet.hidden=[128, 32]" in experiments
    banner = " ".join(slots["drift"].split())
    assert "models.linearnet.hidden=[128, 32]</code> (committed [256, 64])" in banner
    assert "<img " in experiments  # the overlaid validation curves
    # each cell of this run is tested against the commit's model on the same test images
    assert len(re.findall(r"(▲ better|▼ worse|≈ same), p=", experiments)) == len(
        params["run"]["datasets"]) * len(params["run"]["models"])
    # one table per dataset, so a wide one never hides the others' columns
    assert re.findall(r'<h4 id="experiments-(\w+)">', experiments) == params["run"]["datasets"]
    assert experiments.count("<table>") == len(params["run"]["datasets"])

    # What flipped: the images the run (the workspace while `dvc exp run` runs the report)
    # fixed and broke against the commit, as the experiments module pairs them
    runs = [(d, m) for d in params["run"]["datasets"] for m in params["run"]["models"]]
    committed_run = list_experiments(repo, runs, "reports/live")[0]
    this_run = read_revision(repo, None, "workspace", runs, "reports/live")
    for dataset in params["run"]["datasets"]:
        flipped = flips(this_run, committed_run, (dataset, "linearnet"))
        assert isinstance(flipped, Flips)
        blocks = {part.split(">")[0]: part for part in
                  slots[f"flips:{dataset}"].split('<div class="flips-run"')[1:]}
        block = blocks[' data-run-name="workspace" data-model="linearnet"']
        assert (f"workspace · linearnet: {len(flipped.fixed)} fixed, {len(flipped.broken)} "
                "broken") in " ".join(block.split())
        shown = [int(i) for i in re.findall(r'<span data-index="(\d+)">', block)]
        assert shown == [*flipped.fixed[:16], *flipped.broken[:16]]
        unchanged = blocks[' data-run-name="workspace" data-model="cnn"']
        assert "cnn: 0 fixed, 0 broken" in " ".join(unchanged.split())

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
