"""Where a model looks: saliency maps the evaluate stage computes for the report's galleries
(section `#<dataset>-saliency`) and for the draw canvas's selftest.

Occlusion sensitivity (for convolutional models, and the canvas's live overlay for every
model: it needs only forward passes, which the page's JavaScript already runs): a square of
zeros (no ink) slides over the image; each pixel's value is the mean drop of the predicted
class's probability over the squares that cover it. pipeline/templates/draw.js computes the
same, window for window, and #selftest compares the two. Input gradient x input (for the
other models): the predicted class's logit's gradient times the input, summed over channels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.forward import model_inputs

GALLERY_IMAGES = 6  # per kind: the most confidently wrong, the least confident right
SELFTEST_IMAGES = 2  # of the page's selftest images, the ones whose saliency is checked


def occlusion_windows(height: int, width: int) -> tuple[int, list[int], list[int]]:
    """The occluding square's side and the top and left positions it takes: side
    max(2, round(shorter side / 7)), stride half of it, the last position flush with the edge."""
    side = max(2, round(min(height, width) / 7))
    stride = max(1, side // 2)

    def starts(size: int) -> list[int]:
        found = list(range(0, max(size - side, 0) + 1, stride))
        if found[-1] + side < size:
            found.append(size - side)
        return found

    return side, starts(height), starts(width)


@torch.no_grad()
def occlusion(model: nn.Module, image: np.ndarray, target: int | None = None) -> np.ndarray:
    """The occlusion map (H x W, float32) of one uint8 C x H x W image for class `target`
    (None: the class the model predicts for it here), in fp32 on the CPU."""
    model.eval()
    channels, height, width = image.shape
    side, tops, lefts = occlusion_windows(height, width)
    batch = np.repeat(image[None], 1 + len(tops) * len(lefts), axis=0)
    for k, (top, left) in enumerate((t, lf) for t in tops for lf in lefts):
        batch[1 + k, :, top : top + side, left : left + side] = 0
    logits = model(model_inputs(torch.from_numpy(batch), channels_last=False))
    probabilities = torch.softmax(logits.double(), dim=1).numpy()
    predicted = int(probabilities[0].argmax()) if target is None else target
    drops = probabilities[0, predicted] - probabilities[1:, predicted]
    total, covered = np.zeros((height, width)), np.zeros((height, width))
    for k, (top, left) in enumerate((t, lf) for t in tops for lf in lefts):
        total[top : top + side, left : left + side] += drops[k]
        covered[top : top + side, left : left + side] += 1
    return (total / np.maximum(covered, 1)).astype(np.float32)


def gradient_x_input(model: nn.Module, image: np.ndarray, target: int | None = None
                     ) -> np.ndarray:
    """The input gradient of class `target`'s logit (None: the predicted class) times the
    input, summed over channels (H x W, float32), in fp32 on the CPU."""
    model.eval()
    x = model_inputs(torch.from_numpy(image[None].copy()), channels_last=False)
    x.requires_grad_(True)
    logits = model(x)
    logits[0, int(logits[0].argmax()) if target is None else target].backward()
    assert x.grad is not None
    return (x.grad * x).detach()[0].sum(dim=0).numpy().astype(np.float32)


def gallery(model: nn.Module, convolutional: bool, images: np.ndarray, logits: np.ndarray,
            labels: np.ndarray) -> dict:
    """The report's saliency gallery of one model: its most confidently wrong and least
    confident right test images (GALLERY_IMAGES of each, test indices) and their maps, by
    occlusion for a convolutional model, else by input gradient x input."""
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    right = np.flatnonzero(predicted == labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")[:GALLERY_IMAGES]]
    unsure = right[np.argsort(confidence[right], kind="stable")[:GALLERY_IMAGES]]
    method = occlusion if convolutional else gradient_x_input
    chosen = np.concatenate([wrong, unsure]).astype(np.int64)
    # for the class the caption names (the evaluation's logits, bf16 where it trained so),
    # even where fp32 here would tip a near tie the other way
    maps = np.stack([method(model, images[i], int(predicted[i])) for i in chosen]) \
        if len(chosen) else \
        np.zeros((0, *images.shape[2:]), np.float32)
    return {"method": "occlusion" if convolutional else "gradient_x_input",
            "wrong": wrong.astype(np.int64), "unsure": unsure.astype(np.int64),
            "maps": maps.astype(np.float32)}
