"""How a dataset's images were made from a drawing, so a new drawing is made the same way.

The digit datasets did not photograph their digits as they came: the UCI digits were cropped
to the ink, scaled to fill a 32x32 binary bitmap and counted in 4x4 blocks (0..16 levels in an
8x8 image); MNIST fitted the ink into 20x20 keeping its aspect ratio and centred its centre of
mass in 28x28. A drawing on a 200x200 canvas, off-centre, classified after a plain resize,
looks like none of them. `Drawing` (pipeline/datasets.py) is that recipe as a dataset setting
(`drawing:` in params.yaml); `normalise()` applies it to a grey image with bright ink on a
dark background, its levels first stretched to span 0..255 (a light pencil, a grey photo).
A pen thinner than the dataset's writers' can be thickened first
(`min_stroke`): a stroke's width is estimated as twice its ink area over its outline (a stroke
of length L and width w has area wL and outline 2L), and the ink is dilated until the width,
once fitted into the frame, reaches the target. The report's draw canvas runs the same steps
in JavaScript (pipeline/templates/draw.js), with the same area-averaging resize and the same
rounding, and a test compares the two.
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


def stroke_width(mask: np.ndarray) -> float:
    """The mean width of the strokes in a binary image: twice the ink area over the outline
    (the ink/background edges between 4-neighbours, outside the image counting as background)."""
    padded = np.pad(mask, 1)
    outline = (np.count_nonzero(padded[1:] != padded[:-1])
               + np.count_nonzero(padded[:, 1:] != padded[:, :-1]))
    return 2 * np.count_nonzero(mask) / outline


def thickening_passes(width: float, longer_side: int, frame_side: float, target: float) -> int:
    """How many one-pixel dilations make strokes `width` wide in an ink box whose longer side is
    `longer_side` reach `target` pixels once that side is fitted to `frame_side` pixels: each
    pass adds a pixel to both sides of a stroke and to the box, so after r passes the fitted
    width is (width + 2r) * frame_side / (longer_side + 2r)."""
    if target <= 0 or width * frame_side >= target * longer_side or target >= frame_side:
        return 0
    return max(0, round((target * longer_side - width * frame_side) / (2 * (frame_side - target))))


def dilate(image: np.ndarray, passes: int) -> np.ndarray:
    """`image` padded by `passes` pixels and grown that many times by a 4-neighbour maximum."""
    out = np.pad(image, passes)
    for _ in range(passes):
        grown = out.copy()
        np.maximum(grown[1:], out[:-1], out=grown[1:])
        np.maximum(grown[:-1], out[1:], out=grown[:-1])
        np.maximum(grown[:, 1:], out[:, :-1], out=grown[:, 1:])
        np.maximum(grown[:, :-1], out[:, 1:], out=grown[:, :-1])
        out = grown
    return out


def normalise(ink: np.ndarray, size: tuple[int, int], drawing: Drawing) -> np.ndarray | None:
    """A uint8 image of `size` (H, W) made from `ink` (2-D, 0..255, bright ink on dark) the way
    the dataset made its images; None when there is no ink (fewer than the recipe's
    min_contrast grey levels between the image's lightest and darkest pixels)."""
    lightest, darkest = float(ink.min()), float(ink.max())
    if darkest - lightest < drawing.min_contrast:
        return None
    if lightest > 0 or darkest < PIXEL_MAX:  # a light pencil, a grey photo: stretch to 0..255
        ink = (ink.astype(np.float64) - lightest) * PIXEL_MAX / (darkest - lightest)
    ys, xs = np.nonzero(ink >= drawing.threshold)
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float64)
    k = drawing.supersample
    frame_h, frame_w = size[0] * k, size[1] * k
    if drawing.min_stroke > 0:
        crop = dilate(crop, thickening_passes(
            stroke_width(crop >= drawing.threshold), max(crop.shape),
            drawing.fit * min(frame_h, frame_w), drawing.min_stroke))
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
