"""Export a trained model as one ONNX file, checked against PyTorch before it is written.

    pipeline-export --checkpoint models/digits/cnn.pt --out cnn.onnx

The file holds the checkpoint's seed ensemble (mean of logits, then softmax), the pipeline's
pixel scaling, and as metadata the class names, input shape, dataset and model names and the
dataset's drawing recipe (pipeline/portable.py). Before it is written, ONNX Runtime and PyTorch
classify the test split (by default the checkpoint dataset's, where dvc.yaml puts it) in fp32,
and a file whose probabilities differ by more than 1e-4 anywhere is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import portable
from pipeline.artifacts import atomic_write
from pipeline.checkpoint import Checkpoint, load_checkpoint
from pipeline.datasets import PIXEL_MAX, Drawing
from pipeline.layout import split_file
from pipeline.params import load_params
from pipeline.revisions import dvc_yaml_paths
from pipeline.splits import load_split

OPSET = 18


class SeedEnsemble(nn.Module):
    """Pixel values (0-255) in, class probabilities out: the softmax of the seed copies' mean
    logits, as pipeline-predict computes them."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.copies = nn.ModuleList(models)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels / float(PIXEL_MAX)
        return torch.softmax(torch.stack([m(x) for m in self.copies]).mean(0), dim=1)


def onnx_bytes(checkpoint: Checkpoint, module: SeedEnsemble, drawing: Drawing | None) -> bytes:
    """The checkpoint, run as `module`, as an ONNX model (any batch size), metadata included."""
    import onnx

    example = torch.zeros((2, *checkpoint.input_shape), dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's notes on opsets and deprecations
        torch.onnx.export(module, (example,), buffer,  # type: ignore[arg-type]  # a file too
                          input_names=[portable.INPUT],
                          output_names=[portable.OUTPUT], opset_version=OPSET, dynamo=False,
                          dynamic_axes={portable.INPUT: {0: "batch"},
                                        portable.OUTPUT: {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    metadata = {
        portable.CLASSES: json.dumps(checkpoint.classes),
        portable.INPUT_SHAPE: json.dumps(list(checkpoint.input_shape)),
        portable.DATASET: checkpoint.dataset or "",
        portable.MODEL: checkpoint.model or "",
        portable.SEEDS: str(len(checkpoint.state_dicts)),
        portable.DRAWING: json.dumps(drawing.model_dump() if drawing else None),
        portable.PREPROCESSING: portable.PREPROCESSING_TEXT,
    }
    onnx.helper.set_model_props(model, metadata)
    return model.SerializeToString()


def largest_difference(module: SeedEnsemble, exported: bytes, images: np.ndarray) -> float:
    """The largest absolute difference between ONNX Runtime's and PyTorch's probabilities."""
    session = portable.session_for(exported)
    largest = 0.0
    with torch.no_grad():
        for start in range(0, max(len(images), 1), 1024):
            block = images[start : start + 1024].astype(np.float32)
            if not len(block):
                break
            expected = module(torch.from_numpy(block)).numpy()
            got = session.run([portable.OUTPUT], {portable.INPUT: block})[0]
            if not (np.isfinite(got).all() and np.isfinite(expected).all()):
                return float("inf")  # NaN would compare as no difference at all
            largest = max(largest, float(np.abs(got - expected).max()))
    return largest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="models/<ds>/<model>.pt")
    parser.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="for the dataset's drawing recipe, carried in the export")
    parser.add_argument("--test", type=Path,
                        help="the split to check against (default: the checkpoint dataset's "
                             "test split, where dvc.yaml puts prepared data)")
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint(args.checkpoint)
    recipe = (load_params(args.params).drawing.get(checkpoint.dataset or "")
              if args.params.is_file() else None)
    test_path = args.test
    if test_path is None:
        if checkpoint.dataset is None:
            raise portable.PortableError(f"{args.checkpoint}: names no dataset; give the split "
                                         "to check against with --test")
        [prepared] = dvc_yaml_paths(Path("."), "prepared")
        test_path = Path(prepared) / checkpoint.dataset / split_file("test")
    test = load_split(test_path)
    if not len(test.labels):
        raise portable.PortableError(f"{test_path}: holds no images to check the export "
                                     "against; give a split with some (--test)")
    if tuple(test.images.shape[1:]) != tuple(checkpoint.input_shape):
        raise portable.PortableError(
            f"{test_path}: images of {'x'.join(map(str, test.images.shape[1:]))}, but "
            f"{args.checkpoint} takes {'x'.join(map(str, checkpoint.input_shape))}; give its "
            "dataset's test split with --test")
    module = SeedEnsemble([m.eval() for m in checkpoint.seed_models()]).eval()
    exported = onnx_bytes(checkpoint, module, recipe)
    difference = largest_difference(module, exported, test.images)
    if difference > portable.MAX_ABS_DIFFERENCE:
        raise portable.PortableError(
            f"{args.checkpoint}: the ONNX export's probabilities differ from PyTorch's by up to "
            f"{difference:.2g} on {test_path} (more than {portable.MAX_ABS_DIFFERENCE:g}); "
            f"nothing was written to {args.out}")
    with atomic_write(args.out) as handle:
        handle.write(exported)
    copies = len(checkpoint.state_dicts)
    shape = "x".join(map(str, checkpoint.input_shape))
    print(f"wrote {args.out} ({len(exported):,} bytes): {checkpoint.dataset}/{checkpoint.model}"
          f", {copies} seed cop{'ies' if copies > 1 else 'y'}, input {shape}, "
          f"{len(checkpoint.classes)} classes; ONNX Runtime matches PyTorch on "
          f"{len(test.labels):,} test images to {difference:.1g} (at most "
          f"{portable.MAX_ABS_DIFFERENCE:g} allowed)", file=sys.stderr)


def cli() -> None:
    from pipeline.cli import run_stage

    run_stage(main)


if __name__ == "__main__":
    cli()
