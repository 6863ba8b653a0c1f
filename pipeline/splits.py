"""The prepared splits, as the stages after prepare read them: `load_split()` reads one back,
checked. The prepare stage writes them (pipeline/preparation.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.artifacts import ArtifactError, load_arrays

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64
    classes: list[str]


def load_split(path: str | Path) -> Split:
    """Load a prepared split safely and check it is what the later stages expect."""
    path = Path(path)
    payload = load_arrays(path)
    images, labels, classes = (payload.get(k) for k in ("images", "labels", "classes"))
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ArtifactError(f"{path}: 'images' must be a uint8 array of shape (N, C, H, W)")
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
        raise ArtifactError(f"{path}: 'labels' must be a 1-D int64 array")
    if len(images) != len(labels):
        raise ArtifactError(f"{path}: {len(images)} images but {len(labels)} labels")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ArtifactError(f"{path}: 'classes' must be a list of class names")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ArtifactError(f"{path}: labels outside 0..{len(classes) - 1}")
    return Split(images, labels, classes)
