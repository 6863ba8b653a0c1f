"""The evaluation record: everything the report shows about one trained model.

The evaluate stage (pipeline/inference.py computes it) stores the test logits of every seed
copy, the confusion matrix, per-class scores, the layer table, first-layer filters and feature
maps, histograms of the weights before and after training, the per-model evidence (accuracy
interval, calibration, ROC and precision-recall curves) and the model's layers for the page's
draw canvas in one pickle of plain arrays. The report only reads these files: it loads no
checkpoint and runs no model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifacts import ArtifactError, load_arrays, parse_arrays, save_arrays


@dataclass
class Evaluation:
    arch: str
    convolutional: bool
    params: int
    seeds: list[int]
    logits: np.ndarray  # (seeds, N, classes) float32, test set; [0] is the model
    labels: np.ndarray  # (N,) int64
    confusion: np.ndarray  # (classes, classes) int64 of the model (rows: true class)
    scores: list[dict]  # per class: name, precision, recall, f1, support
    confused: list[list]  # most confused pairs: [true, predicted, count]
    layers: list[dict]  # name, kind, output_shape, params
    filters: np.ndarray | None  # first conv's weights averaged over input channels
    feature_maps: np.ndarray | None  # first conv's output for test image 0
    weight_histograms: dict[str, dict]  # per weight tensor: edges, initial, trained, size
    training: dict  # the effective settings it was trained with: optimizer, lr, batch size, ...
    # the evidence (pipeline/evidence.py), from the test logits
    interval: dict  # bootstrap 95 % interval of the model's accuracy: estimate, low, high
    seed_interval: dict | None  # the same for its seed ensemble (seeds > 1)
    calibration: dict  # reliability bins, ECE and Brier score of the model
    class_curves: dict  # per class: ROC and precision-recall on fixed grids, their AUCs
    # the model for the page's draw canvas: layer records (pipeline/web_model.py), or None, and
    # PyTorch's fp32 probabilities of the first test images for the page's selftest
    web_layers: list[dict] | None
    selftest_probabilities: np.ndarray
    # what made it (pipeline/machine.py): `evaluated` here, `trained` from the checkpoint (None
    # for checkpoints from before it was recorded; empty in records from before either was)
    made_on: dict = field(default_factory=dict)


def save_evaluation(path: Path, evaluation: Evaluation) -> None:
    save_arrays(path, asdict(evaluation))


def load_evaluation(path: Path) -> Evaluation:
    return _checked(load_arrays(path), str(path))


def parse_evaluation(data: bytes, source: str) -> Evaluation:
    """An evaluation record from bytes (another revision's, read through DVC); anything that
    is not a complete record raises ArtifactError naming `source`."""
    return _checked(parse_arrays(data, source), source)


def _checked(payload: dict, source: str) -> Evaluation:
    try:
        evaluation = Evaluation(**payload)
    except TypeError as error:
        raise ArtifactError(f"{source}: not an evaluation written by the evaluate stage "
                            f"({error}); re-run it (dvc repro)") from None
    logits, labels = evaluation.logits, evaluation.labels
    if not (isinstance(logits, np.ndarray) and isinstance(labels, np.ndarray)
            and logits.dtype.kind == "f" and labels.dtype.kind in "iu"
            and logits.ndim == 3 and labels.ndim == 1 and logits.shape[1] == len(labels)
            and logits.shape[0] >= 1):
        raise ArtifactError(f"{source}: logits do not match the labels; re-run the evaluate "
                            "stage (dvc repro)")
    return evaluation
