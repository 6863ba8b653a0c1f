"""What the report's click-through error analysis needs (section `#<dataset>-errors`): for each
view of a dataset's test predictions (every model, each seed ensemble, the all-model ensemble),
its confusion matrix over the whole test split and, for the test images worth opening, the
predicted class, the top-3 probabilities and the probability of the given label; and one
sprite sheet of those images' thumbnails, shared by every view (pipeline/templates/errors.js
draws from it by index).

Which images are worth opening: per view, the most confident images of every off-diagonal cell
and the least sure images of every class, `per_list` of each. A cell with more images than that
says how many it holds and shows the most confident; so the page stays small whatever the
size of the test split.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.analysis import softmax
from pipeline.datasets import PIXEL_MAX

SPRITE_COLUMNS = 64
TOP_K = 3
# the class colours of the page's scatter plots (matplotlib's tab10, which its figures use)
CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf")


@dataclass(frozen=True)
class View:
    """One set of test predictions: a model, a seed ensemble or the all-model ensemble."""

    name: str
    logits: np.ndarray  # (N, classes): a model's, or the mean of its members'


def views(models: dict[str, np.ndarray], seed_logits: dict[str, np.ndarray]) -> list[View]:
    """Every model (its first copy), then each model's seed ensemble (mean of its copies'
    logits, `seed_logits` (seeds, N, classes)) where it has several, then the all-model
    ensemble (mean of the models' logits) where there are several models."""
    found = [View(name, logits) for name, logits in models.items()]
    found += [View(f"{name} (seed ensemble)", stacked.mean(axis=0))
              for name, stacked in seed_logits.items() if len(stacked) > 1]
    if len(models) > 1:
        found.append(View("all-model ensemble", np.mean(list(models.values()), axis=0)))
    return found


def chosen_images(all_views: list[View], labels: np.ndarray, per_list: int) -> np.ndarray:
    """The test images the page carries (sorted indices): per view, the `per_list` most
    confident of each off-diagonal confusion cell and the `per_list` least sure (lowest
    probability of the given label) of each class."""
    chosen: set[int] = set()
    for view in all_views:
        probabilities = softmax(view.logits)
        predicted = probabilities.argmax(axis=1)
        confidence = probabilities.max(axis=1)
        given = probabilities[np.arange(len(labels)), labels]
        wrong = np.flatnonzero(predicted != labels)
        for cell in {(int(labels[i]), int(predicted[i])) for i in wrong}:
            members = wrong[(labels[wrong] == cell[0]) & (predicted[wrong] == cell[1])]
            chosen.update(members[np.argsort(-confidence[members], kind="stable")[:per_list]]
                          .tolist())
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            chosen.update(members[np.argsort(given[members], kind="stable")[:per_list]].tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def sprite_layout(count: int) -> tuple[int, int]:
    """The sprite sheet's rows and columns for `count` images: SPRITE_COLUMNS to a row, fewer
    when there are fewer images."""
    return max(1, -(-count // SPRITE_COLUMNS)), min(max(count, 1), SPRITE_COLUMNS)


def sprite_sheet(images: np.ndarray) -> str:
    """The images (N, C, H, W uint8) as one PNG data URI, SPRITE_COLUMNS to a row, as the
    report's other figures show them: grey (a one-channel PNG) as dark ink on light, colour as
    stored."""
    count, channels, height, width = images.shape
    rows, columns = sprite_layout(count)
    grey = channels == 1
    tiles = PIXEL_MAX - images[:, 0] if grey else np.transpose(images[:, :3], (0, 2, 3, 1))
    sheet = np.full((rows * height, columns * width, *tiles.shape[3:]), PIXEL_MAX, np.uint8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, SPRITE_COLUMNS)
        sheet[row * height : (row + 1) * height, column * width : (column + 1) * width] = tile
    buffer = io.BytesIO()
    Image.fromarray(sheet, "L" if grey else "RGB").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def browser_data(all_views: list[View], labels: np.ndarray, images: np.ndarray,
                 label_quality: np.ndarray, per_list: int,
                 also: np.ndarray | None = None) -> tuple[dict, str]:
    """The click-through's data for one dataset (JSON-ready): the chosen images' test indices,
    labels, label-quality scores (thousandths) and sprite layout; per view its full confusion
    matrix and, per chosen image, the predicted class, the top-3 classes with their
    probabilities and the probability of the given label (thousandths). And the sprite sheet's
    data URI, which the page holds once, in a style rule. `also`: more test images to carry
    (the embedding map's points), so every view of the page draws from the one sprite."""
    chosen = chosen_images(all_views, labels, per_list)
    if also is not None:
        chosen = np.union1d(chosen, also).astype(np.int64)
    classes = int(all_views[0].logits.shape[1]) if all_views else 0
    shown = []
    for view in all_views:
        probabilities = softmax(view.logits)
        predicted = probabilities.argmax(axis=1)
        confusion = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(confusion, (labels, predicted), 1)
        picked = probabilities[chosen]
        top = np.argsort(-picked, axis=1, kind="stable")[:, :TOP_K]
        shown.append({
            "name": view.name,
            "confusion": confusion.tolist(),
            "predicted": predicted[chosen].tolist(),
            "top": top.tolist(),
            "top_p": np.rint(1000 * np.take_along_axis(picked, top, axis=1)).astype(int)
                       .tolist(),
            "given_p": np.rint(1000 * picked[np.arange(len(chosen)), labels[chosen]])
                         .astype(int).tolist(),
        })
    height, width = images.shape[2:]
    return {
        "index": chosen.tolist(),
        "labels": labels[chosen].tolist(),
        "quality": np.rint(1000 * label_quality[chosen]).astype(int).tolist(),
        "sprite": dict(zip(("rows", "columns"), sprite_layout(len(chosen)), strict=True),
                       tile=[int(height), int(width)]),
        "per_list": per_list,
        "colours": list(CLASS_COLOURS),
        "views": shown,
    }, sprite_sheet(images[chosen])
