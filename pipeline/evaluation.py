"""The evaluation record: everything the report shows about one trained model.

The evaluate stage (pipeline/inference.py computes it) stores the test logits of every seed
copy, the confusion matrix, per-class scores, the layer table, first-layer filters and feature
maps, histograms of the weights before and after training, the per-model evidence (accuracy
interval, calibration, ROC and precision-recall curves) and the model's layers for the page's
draw canvas. The report only reads these files: it loads no checkpoint and runs no model.

In memory the record is typed all the way down (`Evaluation` and the dataclasses it holds). On
disk it is one pickle of plain arrays and values, read by the safe unpickler that admits no
classes: `save_evaluation` writes the plain form and `load_evaluation` checks it and builds the
dataclasses back, naming the file when it is not a record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.analysis import ClassScores, LayerRow
from pipeline.artifacts import ArtifactError, load_arrays, parse_arrays, save_arrays
from pipeline.evidence import Calibration, ClassCurves, Interval


@dataclass(frozen=True)
class Confusion:
    """One of the most confused pairs: how many test images of `actual` were read as
    `predicted`."""

    actual: str
    predicted: str
    count: int


@dataclass(frozen=True)
class WeightHistogram:
    """One weight tensor's values at initialisation and after training, over shared bins."""

    edges: np.ndarray  # float64, bins + 1
    initial: np.ndarray  # int64 counts
    trained: np.ndarray  # int64 counts
    size: int  # values in the tensor


@dataclass
class Evaluation:
    arch: str
    convolutional: bool
    params: int
    seeds: list[int]
    logits: np.ndarray  # (seeds, N, classes) float32, test set; [0] is the model
    labels: np.ndarray  # (N,) int64
    confusion: np.ndarray  # (classes, classes) int64 of the model (rows: true class)
    scores: list[ClassScores]  # per class
    confused: list[Confusion]  # the most confused pairs, largest first
    layers: list[LayerRow]
    filters: np.ndarray | None  # first conv's weights averaged over input channels
    feature_maps: np.ndarray | None  # first conv's output for test image 0
    weight_histograms: dict[str, WeightHistogram]  # per weight tensor (biases left out)
    training: dict[str, Any]  # the effective settings it was trained with: optimizer, lr, ...
    # the evidence (pipeline/evidence.py), from the test logits
    interval: Interval  # bootstrap 95 % interval of the model's accuracy
    seed_interval: Interval | None  # the same for its seed ensemble (seeds > 1)
    calibration: Calibration  # reliability bins, ECE and Brier score of the model
    class_curves: ClassCurves  # per class: ROC and precision-recall on fixed grids, their AUCs
    # the model for the page's draw canvas: JSON layer records (pipeline/web_model.py), or None,
    # and PyTorch's fp32 probabilities of the first test images for the page's selftest
    web_layers: list[dict] | None
    selftest_probabilities: np.ndarray
    # what made it (pipeline/machine.py records): `evaluated` here, `trained` from the
    # checkpoint (None for checkpoints from before it was recorded; empty in older records)
    made_on: dict = field(default_factory=dict)
    # the embedding map (pipeline/embedding.py): the placed test images' indices, the feature
    # count, their PCA and t-SNE coordinates (t-SNE None where not run); None in older records
    embedding: dict | None = None
    # where the model looks (pipeline/saliency.py): its saliency gallery (method, the most
    # confidently wrong and least confident right test indices, their maps), and the occlusion
    # maps of the first selftest images for the page's check (None without a web model)
    saliency: dict | None = None
    selftest_saliency: np.ndarray | None = None


FIELDS = tuple(f.name for f in fields(Evaluation))
OPTIONAL = ("made_on", "embedding", "saliency", "selftest_saliency")  # absent from older records
REQUIRED = tuple(name for name in FIELDS if name not in OPTIONAL)


def to_record(evaluation: Evaluation) -> dict:
    """The plain form stored on disk (the layout every earlier record has too)."""
    record = asdict(evaluation)
    record["confused"] = [[c.actual, c.predicted, c.count] for c in evaluation.confused]
    record["layers"] = [{**asdict(row), "output_shape": list(row.output_shape)}
                        for row in evaluation.layers]
    return record


def from_record(payload: dict, source: str) -> Evaluation:
    """The typed record from its plain form; ArtifactError naming `source` when it is not one."""
    unknown = sorted(set(payload) - set(FIELDS))
    missing = [name for name in REQUIRED if name not in payload]
    if unknown or missing:
        raise ArtifactError(
            f"{source}: not an evaluation written by the evaluate stage (missing "
            f"{', '.join(missing) or 'nothing'}; unexpected {', '.join(unknown) or 'nothing'}); "
            "re-run it (dvc repro)")
    try:
        evaluation = Evaluation(**{
            **payload,
            "scores": [ClassScores(**s) for s in payload["scores"]],
            "confused": [Confusion(str(a), str(p), int(n)) for a, p, n in payload["confused"]],
            "layers": [LayerRow(r["name"], r["kind"], tuple(r["output_shape"]), r["params"])
                       for r in payload["layers"]],
            "weight_histograms": {name: WeightHistogram(**h)
                                  for name, h in payload["weight_histograms"].items()},
            "interval": Interval(**payload["interval"]),
            "seed_interval": None if payload["seed_interval"] is None
            else Interval(**payload["seed_interval"]),
            "calibration": Calibration(**payload["calibration"]),
            "class_curves": ClassCurves(**payload["class_curves"]),
        })
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ArtifactError(f"{source}: not an evaluation written by the evaluate stage "
                            f"({type(error).__name__}: {error}); re-run it (dvc repro)") from None
    logits, labels = evaluation.logits, evaluation.labels
    if not (isinstance(logits, np.ndarray) and isinstance(labels, np.ndarray)
            and logits.dtype.kind == "f" and labels.dtype.kind in "iu"
            and logits.ndim == 3 and labels.ndim == 1 and logits.shape[1] == len(labels)
            and logits.shape[0] >= 1):
        raise ArtifactError(f"{source}: logits do not match the labels; re-run the evaluate "
                            "stage (dvc repro)")
    if evaluation.embedding is not None and not _is_embedding(evaluation.embedding,
                                                              len(labels)):
        raise ArtifactError(f"{source}: its embedding map is not one the evaluate stage "
                            "writes; re-run it (dvc repro)")
    if evaluation.saliency is not None and not _is_saliency(evaluation.saliency, len(labels)):
        raise ArtifactError(f"{source}: its saliency gallery is not one the evaluate stage "
                            "writes; re-run it (dvc repro)")
    return evaluation


def _is_saliency(saliency: object, images: int) -> bool:
    if not isinstance(saliency, dict) or set(saliency) != {"method", "wrong", "unsure", "maps"}:
        return False
    chosen = [saliency[k] for k in ("wrong", "unsure")]
    if not all(isinstance(c, np.ndarray) and c.dtype.kind in "iu" and c.ndim == 1
               and (len(c) == 0 or (c.min() >= 0 and c.max() < images)) for c in chosen):
        return False
    maps = saliency["maps"]
    return (saliency["method"] in ("occlusion", "gradient_x_input")
            and isinstance(maps, np.ndarray) and maps.ndim == 3
            and len(maps) == sum(len(c) for c in chosen))


def _is_embedding(embedding: object, images: int) -> bool:
    if not isinstance(embedding, dict) or set(embedding) != {"index", "features", "pca", "tsne"}:
        return False
    index = embedding["index"]
    if not (isinstance(index, np.ndarray) and index.dtype.kind in "iu" and index.ndim == 1
            and (len(index) == 0 or (index.min() >= 0 and index.max() < images))):
        return False
    return all(isinstance(embedding[k], np.ndarray) and embedding[k].shape == (len(index), 2)
               for k in ("pca", "tsne") if k == "pca" or embedding[k] is not None)


def save_evaluation(path: Path, evaluation: Evaluation) -> None:
    save_arrays(path, to_record(evaluation))


def load_evaluation(path: Path) -> Evaluation:
    return from_record(load_arrays(path), str(path))


def parse_evaluation(data: bytes, source: str) -> Evaluation:
    """An evaluation record from bytes (another revision's, read through DVC); anything that
    is not a complete record raises ArtifactError naming `source`."""
    return from_record(parse_arrays(data, source), source)
