"""Drawings are made into inputs the way the dataset made its images (pipeline/drawing.py), so
hand-drawn digits on a big canvas, off-centre, are classified right by the default models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.checkpoint import Checkpoint
from pipeline.datasets import Drawing
from pipeline.drawing import normalise
from pipeline.engine import fit, select_device
from pipeline.formats import materialise
from pipeline.params import load_params
from pipeline.preparation import prepare
from pipeline.splits import SPLITS, load_split
from tests.conftest import ROOT


def test_mnist_style_fits_the_ink_in_20x20_and_centres_its_mass():
    ink = np.zeros((200, 300))
    ink[10:110, 200:240] = 255  # a tall bar near a corner of a wide canvas
    out = normalise(ink, (28, 28), Drawing(fit=20 / 28, center="mass"))
    rows, cols = np.nonzero(out > 0)
    assert rows.max() - rows.min() + 1 == 20 and cols.max() - cols.min() + 1 == 8
    mass = np.array([(np.indices(out.shape)[k] * out).sum() / out.sum() for k in (0, 1)])
    np.testing.assert_allclose(mass, [13.5, 13.5], atol=0.6)


def test_uci_style_counts_ink_in_blocks_of_a_binary_bitmap():
    ink = np.zeros((64, 64))
    ink[:, :32] = 255  # left half: once cropped to the ink, a 64x32 bar
    out = normalise(ink, (8, 8), Drawing(fit=1.0, center="box", supersample=4))
    assert out.shape == (8, 8) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {round(k * 255 / 16) for k in range(17)}
    assert (out[:, 2:6] == 255).all() and (out[:, :2] == 0).all() and (out[:, 6:] == 0).all()


def test_a_blank_image_has_no_ink():
    assert normalise(np.zeros((50, 50)), (8, 8), Drawing()) is None


def draw_digit(digit: int, size: int = 200, offset: tuple[int, int] = (30, -20),
               width: int = 14) -> Image.Image:
    """A digit drawn with thick dark strokes on a light 200x200 canvas, off-centre."""
    image = Image.new("L", (size, size), 255)
    pen = ImageDraw.Draw(image)

    def at(x: float, y: float) -> tuple[float, float]:  # a 60x100 box, shifted off-centre
        return offset[0] + 40 + x * 60, offset[1] + 50 + y * 100

    def line(*points: tuple[float, float]) -> None:
        pen.line([at(*p) for p in points], fill=0, width=width, joint="curve")

    def arc(x0: float, y0: float, x1: float, y1: float, start: int = 0, end: int = 360) -> None:
        pen.arc([at(x0, y0), at(x1, y1)], start, end, fill=0, width=width)

    strokes = {
        0: lambda: arc(0, 0, 1, 1),
        1: lambda: line((0.3, 0.2), (0.6, 0), (0.6, 1)),
        2: lambda: (arc(0, 0, 1, 0.5, 180, 360), line((1, 0.25), (0, 1), (1, 1))),
        3: lambda: (arc(0, 0, 1, 0.5, 200, 90), arc(0, 0.5, 1, 1, 270, 160)),
        4: lambda: line((0.75, 1), (0.75, 0), (0, 0.7), (1, 0.7)),
        5: lambda: (line((1, 0), (0.1, 0), (0.05, 0.45)), arc(0, 0.35, 1, 1, 200, 150)),
        6: lambda: (arc(0, 0.4, 1, 1), line((0.05, 0.7), (0.6, 0))),
        7: lambda: line((0, 0), (1, 0), (0.35, 1)),
        8: lambda: (arc(0.1, 0, 0.9, 0.48), arc(0, 0.48, 1, 1)),
        9: lambda: (arc(0, 0, 1, 0.6), line((0.95, 0.3), (0.6, 1))),
    }
    strokes[digit]()
    return image


@pytest.fixture(scope="module")
def default_digits_model(tmp_path_factory) -> Path:
    """The default `cnn` (3 seeds) trained on digits with params.yaml's settings."""
    folder = tmp_path_factory.mktemp("digits")
    params = load_params(ROOT / "params.yaml")
    dataset = params.dataset("digits")
    materialise("digits", dataset, folder / "raw", folder / "cache", params.download)
    prepare(folder / "raw", folder / "prepared", dataset, params.prepare)
    splits = {name: load_split(folder / "prepared" / f"{name}.pkl") for name in SPLITS}
    spec = params.model("cnn")
    device = select_device("cpu")
    results = [fit(spec.architecture(), params.training_for("cnn"), splits, device, seed,
                   params.train.amp, params.train.channels_last, log=lambda _: None)
               for seed in range(spec.seeds)]
    path = folder / "cnn.pt"
    Checkpoint(spec.architecture(), (1, 8, 8), dataset.classes, [r.state_dict for r in results],
               results[0].initial_state_dict, "digits", "cnn").save(path)
    return path


def predict_drawn_digits(model: Path, params: Path, folder: Path) -> tuple[list[str], str]:
    """The ten drawn digits through `python -m pipeline.predict`: the top guesses, the output."""
    paths = []
    for digit in range(10):
        paths.append(folder / f"drawn-{digit}.png")
        draw_digit(digit).save(paths[-1])
    done = subprocess.run([sys.executable, "-m", "pipeline.predict", "--checkpoint", str(model),
                           "--params", str(params), "--top-k", "1", *map(str, paths)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return [line.split(": ")[1].split()[0] for line in done.stdout.splitlines()], done.stdout


def right_guesses(guesses: list[str]) -> int:
    return sum(guess == str(digit) for digit, guess in enumerate(guesses))


def test_hand_drawn_digits_are_classified_by_the_default_model(default_digits_model, tmp_path):
    guesses, output = predict_drawn_digits(default_digits_model, ROOT / "params.yaml", tmp_path)
    print(f"hand-drawn digits: {guesses} ({right_guesses(guesses)}/10 right)")
    assert right_guesses(guesses) >= 8, output


def test_a_plain_resize_is_what_the_recipe_fixes(default_digits_model, tmp_path):
    """Without the dataset's drawing recipe (no params), the same drawings fare far worse."""
    guesses, output = predict_drawn_digits(default_digits_model, tmp_path / "none.yaml",
                                           tmp_path)
    assert right_guesses(guesses) <= 5
    assert "looks unlike the training images" in output or "unsure" in output
