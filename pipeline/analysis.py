"""Numbers computed from predictions: per-class scores, confusions, ensembles, the
accuracy/parameter Pareto front; and from a model: its layer table and first-layer activations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.datasets import PIXEL_MAX

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ClassScores:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class); rows are the true class."""
    return np.bincount(labels * n_classes + predicted,
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def per_class_scores(labels: np.ndarray, predicted: np.ndarray,
                     classes: list[str]) -> list[ClassScores]:
    """Precision, recall and F1 per class (0 where undefined, as scikit-learn's
    zero_division=0), from the confusion matrix."""
    confusion = confusion_matrix(labels, predicted, len(classes)).astype(np.float64)
    hits = np.diag(confusion)
    support = confusion.sum(axis=1)
    claimed = confusion.sum(axis=0)
    precision = np.divide(hits, claimed, out=np.zeros_like(hits), where=claimed > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return [ClassScores(name, float(p), float(r), float(f), int(s))
            for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)]


def telling_examples(probabilities: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Test images worth looking at, not easy ones at ~100 %: the most confidently wrong, the
    least confident right, a typical right one, then the next least confident; in that order."""
    confidence = probabilities.max(1)
    right = probabilities.argmax(1) == labels
    wrong_ids = np.flatnonzero(~right)[np.argsort(-confidence[~right], kind="stable")]
    right_ids = np.flatnonzero(right)[np.argsort(confidence[right], kind="stable")]
    candidates = [*wrong_ids[:1], *right_ids[:1], *right_ids[len(right_ids) // 2:][:1],
                  *right_ids[1:], *wrong_ids[1:]]
    picks: list[int] = []
    for index in candidates:
        if len(picks) == count:
            break
        if int(index) not in picks:
            picks.append(int(index))
    return np.array(picks, dtype=np.int64)


def most_confused(confusion: np.ndarray, classes: list[str], top: int = 5
                  ) -> list[tuple[str, str, int]]:
    """The largest off-diagonal cells: (true class, predicted class, count), biggest first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    pairs = [(classes[i], classes[j], int(off[i, j]))
             for i, j in zip(*np.unravel_index(order, off.shape), strict=True)]
    return [pair for pair in pairs if pair[2] > 0]


def ensemble(logits: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """Accuracy of averaging the members' logits, next to each member's own."""
    members = {name: float((values.argmax(1) == labels).mean()) for name, values in logits.items()}
    mean = np.mean(np.stack(list(logits.values())), axis=0)
    accuracy = float((mean.argmax(1) == labels).mean())
    return {"members": members, "accuracy": accuracy,
            "gain_over_best": accuracy - max(members.values())}


def seed_ensemble(logits: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """`ensemble()` of one model's seed copies, plus the mean and spread of their accuracies."""
    result = ensemble(logits, labels)
    accuracies = np.array(list(result["members"].values()))
    result.update(mean=float(accuracies.mean()),
                  std=float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0)
    return result


def pareto_front(points: dict[str, tuple[int, float]]) -> list[str]:
    """Models no other model beats on both fewer parameters and higher accuracy, by size."""
    front = [name for name, (params, accuracy) in points.items()
             if not any(p <= params and a >= accuracy and (p, a) != (params, accuracy)
                        for p, a in points.values())]
    return sorted(front, key=lambda name: points[name][0])


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    from torch import nn

    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def first_block_maps(model: nn.Module, image: np.ndarray) -> np.ndarray | None:
    """The first convolution's output channels for one uint8 C x H x W image (CPU, fp32)."""
    import torch

    conv = first_conv(model)
    if conv is None:
        return None
    captured: list[torch.Tensor] = []
    hook = conv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model.eval()
        with torch.no_grad():
            model(torch.from_numpy(image).float().div(PIXEL_MAX).unsqueeze(0).to(conv.weight.device))
    finally:
        hook.remove()
    return captured[0][0].float().cpu().numpy()


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


def layer_summary(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerRow]:
    """Per leaf layer: output shape for a batch of one and parameter count (like torchsummary)."""
    import torch

    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        if list(module.children()):
            continue

        def record(mod: nn.Module, _inputs, output, name: str = name) -> None:
            rows.append(LayerRow(name, type(mod).__name__, tuple(output.shape),
                                 sum(p.numel() for p in mod.parameters(recurse=False))))

        hooks.append(module.register_forward_hook(record))
    try:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return rows
