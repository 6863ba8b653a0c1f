"""Figures drawn in a pool of processes come out as drawn one by one, each where it belongs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import plots


def queue_some(queue: plots.FigureQueue) -> tuple[dict, dict]:
    section, model = {}, {}
    classes = ["a", "b", "c"]
    queue.add(section, "balance", plots.class_balance,
              {"train": [5, 3, 2], "test": [1, 1, 1]}, classes, "balance")
    queue.add(section, "params", plots.parameter_bars, {"x": 650, "y": 26_194},
              {"x": 0.9, "y": 0.95}, "params")
    labels = np.array([0, 1, 2])
    # nothing misclassified: the figure function returns None, and the slot says so
    queue.add(model, "misclassified", plots.misclassified_gallery,
              np.zeros((3, 1, 4, 4), np.uint8), labels, labels, np.ones(3), classes, "wrong")
    return section, model


def test_a_pool_draws_the_same_bytes_as_one_process_and_keeps_the_order():
    with plots.FigureQueue(workers=2) as pooled, plots.FigureQueue(workers=1) as alone:
        pooled_section, pooled_model = queue_some(pooled)
        alone_section, alone_model = queue_some(alone)
        assert pooled_section == {}  # filled in by draw(), whatever is drawn by then
        pooled.draw()
        alone.draw()
    assert pooled_section == alone_section and pooled_model == alone_model
    assert set(pooled_section) == {"balance", "params"}
    assert all(uri.startswith("data:image/png;base64,") for uri in pooled_section.values())
    assert pooled_section["balance"] != pooled_section["params"]
    assert pooled_model == {"misclassified": None}
    assert pooled.jobs == [] and alone.jobs == []


def _mark(path: str) -> None:
    Path(path).write_text("drawn")


def test_figures_start_drawing_when_queued_and_leaving_the_block_stops_the_pool(tmp_path):
    """The report works out its evidence while the queued figures are drawn."""
    import time

    marker = tmp_path / "drawn"
    with pytest.raises(RuntimeError), plots.FigureQueue(workers=2) as queue:
        queue.add({}, "mark", _mark, str(marker))
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:  # no draw() called yet
            time.sleep(0.01)
        assert marker.read_text() == "drawn"
        raise RuntimeError("the report failed before draw()")
    assert queue._pool is None


def _decode(uri: str) -> np.ndarray:
    import base64
    import io

    from matplotlib.image import imread

    return imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")[..., :3]


def test_a_sample_grid_shows_each_class_s_images_in_its_own_row():
    """The galleries draw every image into one axes (pipeline/plots.py, _ImageGrid): each
    image lands in its cell, classes top to bottom, as many as the split holds (up to
    `per_class`)."""
    colours = np.array([[255, 0, 0], [0, 160, 0], [0, 0, 255]], np.uint8)
    labels = np.array([0, 0, 1, 2, 1, 0])  # class 0 has 3 images, shown 2; class 2 has 1
    images = np.stack([np.broadcast_to(colours[k][:, None, None], (3, 6, 6)) for k in labels])
    pixels = _decode(plots.sample_grid(images, labels, ["red", "green", "blue"], 2, "samples"))
    rows, areas = [], []
    for colour in colours / 255:
        hit = np.all(np.abs(pixels - colour) < 0.02, axis=-1)
        areas.append(int(hit.sum()))
        rows.append(np.flatnonzero(hit.any(axis=1)).mean())
    assert rows == sorted(rows)  # red above green above blue
    assert min(areas) > 1000  # drawn at a visible size
    assert [round(area / areas[2], 1) for area in areas] == [2.0, 2.0, 1.0], areas


def test_a_figure_is_cut_to_what_it_draws_and_keeps_what_it_draws_past_its_edges():
    """to_data_uri draws once and trims the pixels to what was drawn, plus savefig's padding
    in the background colour; a figure drawing past its canvas goes through savefig's tight
    box, which widens the picture to take it in."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    pad = round(plt.rcParams["savefig.pad_inches"] * plots.DPI)
    figure = plt.figure(figsize=(4, 3))
    figure.add_artist(Rectangle((0.25, 0.25), 0.5, 0.5, transform=figure.transFigure,
                                color="black"))
    pixels = _decode(plots.to_data_uri(figure))
    square = 0.5 * np.array([3, 4]) * plots.DPI  # the rectangle, in pixels
    assert np.allclose(pixels.shape[:2], square + 2 * pad, atol=4), pixels.shape
    assert (pixels[:pad] == 1).all() and (pixels[-pad:] == 1).all()  # white padding around
    assert (pixels[:, :pad] == 1).all() and (pixels[:, -pad:] == 1).all()
    assert (pixels[pixels.shape[0] // 2, pixels.shape[1] // 2] == 0).all()

    figure = plt.figure(figsize=(4, 3))
    figure.text(-0.3, 0.5, "a label left of the canvas", fontsize=12)
    figure.text(0.5, 0.5, "inside")
    pixels = _decode(plots.to_data_uri(figure))
    assert pixels.shape[1] > 0.3 * 4 * plots.DPI + 100  # the outside label is in the picture
    assert (pixels[:, : pad - 2] == 1).all()  # and padded like the rest


def test_figures_are_palette_pngs_unless_their_colours_would_suffer():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    colour = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)  # noise: no palette holds it
    for images, mode in ((grey, "P"), (colour, "RGB")):
        uri = plots.sample_grid(images, np.arange(20) % 2, ["a", "b"], 4, "t")
        assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).mode == mode
