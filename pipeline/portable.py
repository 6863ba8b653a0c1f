"""A trained model as one ONNX file a user can take away, and running it without torch.

`pipeline-export` (pipeline/export.py) writes the file; this module is what reads it, with
onnxruntime and numpy only, so `pipeline-predict --backend onnx` runs where torch is not
installed. The graph takes pixel values as the dataset stores them (float32, N x C x H x W,
0 to 255), does the pipeline's own scaling, and returns the class probabilities (the softmax of
the mean logits of the checkpoint's seed copies). What else inference needs travels in the
file's metadata, under the keys below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets import Drawing
from pipeline.errors import PipelineError

INPUT, OUTPUT = "pixels", "probabilities"
# metadata keys: one place, written by export.py and read here
CLASSES, INPUT_SHAPE, DATASET, MODEL, SEEDS, DRAWING, PREPROCESSING = (
    "pipeline.classes", "pipeline.input_shape", "pipeline.dataset", "pipeline.model",
    "pipeline.seeds", "pipeline.drawing", "pipeline.preprocessing")
PREPROCESSING_TEXT = ("input: float32 pixel values 0-255, N x C x H x W as the dataset stores "
                      "them (bright ink on a dark background); the graph divides by 255")
MAX_ABS_DIFFERENCE = 1e-4  # of a probability, ONNX Runtime against PyTorch, in fp32


class PortableError(PipelineError):
    pass


@dataclass
class PortableModel:
    """An exported model loaded in ONNX Runtime (CPU), with what its metadata says."""

    path: Path
    session: Any
    classes: list[str]
    input_shape: tuple[int, int, int]
    dataset: str | None
    model: str | None
    seeds: int
    drawing: Drawing | None

    def probabilities(self, images: np.ndarray, batch: int = 1024) -> np.ndarray:
        """The class probabilities of uint8 (or float) images, N x C x H x W."""
        try:
            chunks = [self.session.run([OUTPUT], {INPUT: images[start : start + batch]
                                                  .astype(np.float32)})[0]
                      for start in range(0, len(images), batch)]
        except Exception as error:  # noqa: BLE001 - onnxruntime's own exception types
            raise PortableError(f"{self.path}: ONNX Runtime could not run it "
                                f"({str(error).splitlines()[0][:200]})") from None
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)))


def session_for(model: bytes | str) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def load_portable(path: Path) -> PortableModel:
    """Open an exported model; a file that is not one of ours is refused in one line."""
    from pipeline.userfiles import UserFileError, read_bounded

    try:
        data = read_bounded(path, 2 << 30, "ONNX model")
    except UserFileError as error:
        raise PortableError(str(error)) from None
    try:
        session = session_for(data)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise PortableError(f"{path}: not an ONNX model ONNX Runtime can load "
                            f"({str(error).splitlines()[0][:200]})") from None
    meta = session.get_modelmeta().custom_metadata_map
    try:
        classes = json.loads(meta[CLASSES])
        shape = tuple(int(v) for v in json.loads(meta[INPUT_SHAPE]))
        drawing = json.loads(meta.get(DRAWING, "null"))
        seeds = int(meta.get(SEEDS, "1"))
        recipe = Drawing.model_validate(drawing) if drawing else None
    except (KeyError, ValueError, TypeError) as error:  # pydantic's errors are ValueErrors
        raise PortableError(f"{path}: an ONNX model without this pipeline's metadata, or with "
                            f"malformed metadata ({str(error).splitlines()[0][:160]}); export "
                            "it with pipeline-export") from None
    if not (isinstance(classes, list) and len(classes) >= 2
            and all(isinstance(c, str) for c in classes)
            and len(shape) == 3 and all(side >= 1 for side in shape) and seeds >= 1):
        raise PortableError(f"{path}: its metadata's classes, input shape or seed count are "
                            "malformed; export it again with pipeline-export")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    graph_in = [i.shape for i in inputs if i.name == INPUT]
    graph_out = [o.shape for o in outputs if o.name == OUTPUT]
    if not graph_in or not graph_out or not _fits(graph_in[0][1:], list(shape)) \
            or not _fits(graph_out[0][1:], [len(classes)]):
        raise PortableError(f"{path}: its graph does not take `{INPUT}` of "
                            f"{'x'.join(map(str, shape))} or give `{OUTPUT}` of "
                            f"{len(classes)} classes as its metadata says; export it again "
                            "with pipeline-export")
    return PortableModel(path, session, classes, shape, meta.get(DATASET), meta.get(MODEL),
                         seeds, recipe)


def _fits(dimensions: list, expected: list[int]) -> bool:
    """A graph's dimensions (numbers, or names where any size goes) against the metadata's."""
    return len(dimensions) == len(expected) and all(
        not isinstance(d, int) or d == e for d, e in zip(dimensions, expected, strict=True))
