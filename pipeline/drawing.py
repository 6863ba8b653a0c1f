"""How a dataset's images were made from a drawing, so a new drawing is made the same way.

The digit datasets did not photograph their digits as they came: the UCI digits were cropped
to the ink, scaled to fill a 32x32 binary bitmap and counted in 4x4 blocks (0..16 levels in an
8x8 image); MNIST fitted the ink into 20x20 keeping its aspect ratio and centred its centre of
mass in 28x28. A drawing on a 200x200 canvas, off-centre, classified after a plain resize,
looks like none of them. `Drawing` (pipeline/datasets.py) is that recipe as a dataset setting
(`drawing:` in params.yaml); `normalise()` applies it to a grey image with bright ink on a
dark background. The report's draw canvas runs the same steps in JavaScript
(pipeline/templates/draw.js), with the same area-averaging resize and the same rounding, and a
test compares the two.
"""

from __future__ import annotations

import numpy as np

from pipeline.datasets import PIXEL_MAX, Drawing


def _resize_axis(image: np.ndarray, size: int) -> np.ndarray:
    """Area-weighted resampling of the last axis to `size`: each output pixel is the mean of the
    input span it covers (the page's JavaScript does the same sums)."""
    length = image.shape[-1]
    scale = length / size
    weights = np.zeros((size, length))
    for j in range(size):
        start, end = j * scale, (j + 1) * scale
        for i in range(int(np.floor(start)), min(length, int(np.ceil(end)))):
            weights[j, i] = min(end, i + 1) - max(start, i)
    return image @ weights.T / scale


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 2-D float image resized by area averaging, across then down."""
    return _resize_axis(_resize_axis(image, width).T, height).T


def normalise(ink: np.ndarray, size: tuple[int, int], drawing: Drawing) -> np.ndarray | None:
    """A uint8 image of `size` (H, W) made from `ink` (2-D, 0..255, bright ink on dark) the way
    the dataset made its images; None when there is no ink at all."""
    ys, xs = np.nonzero(ink >= drawing.threshold)
    if len(ys) == 0:
        return None
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float64)
    k = drawing.supersample
    frame_h, frame_w = size[0] * k, size[1] * k
    scale = drawing.fit * min(frame_h, frame_w) / max(crop.shape)
    new_h = min(frame_h, max(1, round(crop.shape[0] * scale)))
    new_w = min(frame_w, max(1, round(crop.shape[1] * scale)))
    small = area_resize(crop, new_h, new_w)
    if drawing.center == "mass" and small.sum() > 0:
        rows, cols = np.indices(small.shape)
        cy, cx = (rows * small).sum() / small.sum(), (cols * small).sum() / small.sum()
        top, left = round(frame_h / 2 - cy - 0.5), round(frame_w / 2 - cx - 0.5)
    else:
        top, left = (frame_h - new_h) // 2, (frame_w - new_w) // 2
    top = min(max(top, 0), frame_h - new_h)
    left = min(max(left, 0), frame_w - new_w)
    frame = np.zeros((frame_h, frame_w))
    frame[top : top + new_h, left : left + new_w] = small
    if k == 1:
        return np.clip(frame + 0.5, 0, PIXEL_MAX).astype(np.uint8)
    counts = (frame >= drawing.threshold).reshape(size[0], k, size[1], k).sum(axis=(1, 3))
    return np.rint(counts * (PIXEL_MAX / (k * k))).astype(np.uint8)
