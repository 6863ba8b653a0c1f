"""The report's draw canvas (pipeline/templates/draw.js) against Python, in headless Chromium:
the same drawings give the same model inputs as pipeline/drawing.py (what pipeline-predict
uses), and the JavaScript forward pass gives PyTorch's probabilities for every architecture."""

from __future__ import annotations

import base64
import json
import re
import subprocess

import numpy as np
import pytest
import torch

from pipeline.architectures import ARCHITECTURES
from pipeline.drawing import normalise
from pipeline.models import build
from pipeline.params import load_params
from pipeline.web_model import export, reference_probabilities
from tests.browser import chromium
from tests.conftest import ROOT
from tests.drawn_digits import PenStyle, draw_digit

DRAW_JS = ROOT / "pipeline" / "templates" / "draw.js"


def run_in_browser(tmp_path, payload: dict, script: str) -> dict:
    """Load draw.js in a page with `payload` as window.PAYLOAD, run `script` (which sets
    window.RESULT) and return RESULT as Python data."""
    page = tmp_path / "harness.html"
    page.write_text(
        "<!DOCTYPE html><html><body><script>\n" + DRAW_JS.read_text() + "\n</script>\n"
        f"<script>window.PAYLOAD = {json.dumps(payload)};</script>\n"
        f"<script>{script}\nvar out = document.createElement('pre'); out.id = 'result';"
        "out.textContent = JSON.stringify(window.RESULT); document.body.appendChild(out);"
        "</script></body></html>", encoding="utf-8")
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_drawings_become_the_same_inputs_in_the_page_and_in_python(tmp_path):
    """Ten PIL-drawn digits (200x200, thick, off-centre, dark on light) through every built-in
    drawing recipe: the page's arrays equal Python's."""
    params = load_params(ROOT / "params.yaml")
    recipes = {name: (params.drawing[name], list(params.datasets[name].shape[1:]))
               for name in ("digits", "mnist", "fashion_mnist")}
    # strokes thickened in grey as well as in a binary bitmap
    recipes["mnist, thickened"] = (params.drawing["mnist"].model_copy(update={"min_stroke": 3.5}),
                                   [28, 28])
    assert params.drawing["digits"].min_stroke > 0
    drawings = [np.asarray(draw_digit(d), dtype=np.uint8) for d in range(10)]
    # plus a small one, upscaled rather than shrunk, and an off-grid aspect ratio; thin pens
    drawings.append(np.asarray(draw_digit(7, size=40, offset=(-30, -45), width=3), np.uint8))
    drawings += [np.asarray(PenStyle(width=2, slant=0.3).draw(d), np.uint8) for d in (2, 8)]
    payload = {"drawings": [base64.b64encode(d.tobytes()).decode() for d in drawings],
               "sizes": [list(d.shape) for d in drawings],
               "recipes": {n: {"recipe": r.model_dump(), "shape": s}
                           for n, (r, s) in recipes.items()}}
    result = run_in_browser(tmp_path, payload, """
      window.RESULT = {};
      Object.keys(PAYLOAD.recipes).forEach(function (name) {
        var recipe = PAYLOAD.recipes[name];
        window.RESULT[name] = PAYLOAD.drawings.map(function (encoded, i) {
          var text = atob(encoded), h = PAYLOAD.sizes[i][0], w = PAYLOAD.sizes[i][1];
          var grey = new Float64Array(text.length);
          for (var k = 0; k < text.length; k++) { grey[k] = text.charCodeAt(k); }
          var out = ReportDraw.normalise(ReportDraw.inkOf(grey, h, w), h, w, recipe.shape,
                                         recipe.recipe);
          return Array.prototype.slice.call(out);
        });
      });""")
    for name, (recipe, shape) in recipes.items():
        for index, drawing in enumerate(drawings):
            expected = normalise(255 - drawing.astype(np.float64), tuple(shape), recipe)
            got = np.array(result[name][index], dtype=np.int64).reshape(shape)
            difference = np.abs(got - expected.astype(np.int64))
            # the same sums in another order: at most a rounding tie apart, on a pixel or two
            assert difference.max() <= 1 and (difference > 0).sum() <= 2, (name, index)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_page_forward_pass_matches_pytorch(tmp_path, arch):
    torch.manual_seed(0)
    shape = (1, 28, 28)
    model = build(ARCHITECTURES[arch].model_validate({"arch": arch}), shape, 10).eval()
    layers = export(model)
    assert layers is not None, f"{arch} has a layer the page cannot run"
    images = np.random.default_rng(0).integers(0, 256, (3, *shape), dtype=np.uint8)
    expected = reference_probabilities(model, images)
    encoded = [{k: base64.b64encode(v.astype("<f4").tobytes()).decode()
                if isinstance(v, np.ndarray) else v for k, v in layer.items()} for layer in layers]
    result = run_in_browser(tmp_path, {
        "model": {"name": arch, "layers": encoded}, "shape": list(shape),
        "images": [image.ravel().tolist() for image in images]}, """
      var model = ReportDraw.prepareModel(PAYLOAD.model);
      window.RESULT = PAYLOAD.images.map(function (pixels) {
        return ReportDraw.softmax(ReportDraw.forward(model, pixels, PAYLOAD.shape).logits);
      });""")
    assert np.abs(np.array(result) - expected).max() <= 1e-5


def test_a_layer_the_page_cannot_run_leaves_the_model_out():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    assert export(model) is None
    assert export(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, dilation=2))) is None
