"""Classify new images with a trained model: PNG/JPEG files or CSV rows in the dataset's layout.

    python -m pipeline.predict --checkpoint models/digits/cnn.pt my_digit.png
    pipeline-predict --checkpoint models/digits/cnn.pt data/raw/digits/train.csv.gz --top-k 3 \\
        --out predictions.csv
    pipeline-predict --checkpoint cnn.onnx --backend onnx my_digit.png   # no torch needed

Images are converted to the model's channels (grey or RGB) and resized to its input size. The
built-in datasets draw bright ink on a dark background; a photo or scan with a light background
is inverted (`--invert auto`, the default, decides by the border pixels; `yes`/`no` force it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gzip
import re
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.artifacts import atomic_write
from pipeline.datasets import AnyDataset, CsvLayout, Drawing
from pipeline.drawing import normalise
from pipeline.ingest import DataError, iter_image_csv, max_line_bytes
from pipeline.params import ParamsError, load_params
from pipeline.userfiles import UserFileError, open_regular

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
CSV_SUFFIXES = (".csv", ".csv.gz")


class PredictError(DataError):
    """An input cannot be classified; the message says which file and why."""


@dataclass
class Batch:
    """Inputs classified together: one image file, or a block of a CSV's rows."""

    names: list[str]  # "file" or "file:row"
    images: np.ndarray  # (N, C, H, W) uint8
    labels: list[str | None]  # the true class where the input says it


# The largest side an image file is worked on at (or twice the model's side, if larger):
# reduced by whole factors below it first
WORK_SIDE = 1024
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def load_image(path: Path, shape: tuple[int, int, int], invert: str = "auto",
               drawing: Drawing | None = None) -> np.ndarray:
    """One image file as a C x H x W uint8 array in the model's shape. With the dataset's
    `drawing` recipe (grey models), the ink is cropped, scaled and centred the way the
    dataset's own images were made, instead of resizing the whole picture."""
    channels, height, width = shape
    try:
        with open_regular(path, "image file") as handle, Image.open(handle) as opened:
            frames = getattr(opened, "n_frames", 1)
            if frames > 1:
                raise PredictError(f"{path}: an animated image with {frames} frames; save the "
                                   "frame to classify as a PNG")
            sixteen_bit = opened.mode in _SIXTEEN_BIT
            work_side = max(WORK_SIDE, 2 * height, 2 * width)
            opened.draft(None, (work_side, work_side))  # JPEG: decoded at 1/2 to 1/8 scale
            opened.load()
            # a phone stores a photo as the sensor read it, with an EXIF tag saying how to
            # turn it upright (as a browser shows it); the tag travels with the reduced copy
            upright = ImageOps.exif_transpose(_reduced(opened, work_side))
            image = _to_8_bit(upright, sixteen_bit).convert("L" if channels == 1 else "RGB")
    except UserFileError as error:
        if "is a folder" in str(error):
            raise PredictError(f"{path}: is a folder; give the image files in it") from None
        raise PredictError(str(error)) from None
    except Image.DecompressionBombError as error:
        raise PredictError(f"{path}: refused as a decompression bomb ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise PredictError(f"{path}: not an image this tool can read ({error}); "
                           "use a PNG or JPEG file") from None
    if channels not in (1, 3):
        raise PredictError(f"{path}: the model takes {channels}-channel input; only grey (1) "
                           "and RGB (3) models can classify image files, use a CSV instead")
    if drawing is not None and channels == 1:
        grey = np.asarray(image, dtype=np.uint8)
        light = invert == "yes" or (invert == "auto" and _light_background(grey[None]))
        normalised = normalise(255 - grey if light else grey, (height, width), drawing)
        if normalised is None:
            raise PredictError(
                f"{path}: no ink found: its darkest and lightest pixels are under "
                f"{drawing.min_contrast} grey levels apart (drawing.<dataset>.min_contrast), so "
                "it is blank or nearly; draw darker or lower that setting")
        return np.ascontiguousarray(normalised[None])
    resized = image.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(resized, dtype=np.uint8)
    array = array[None] if channels == 1 else np.transpose(array, (2, 0, 1))
    if invert == "yes" or (invert == "auto" and _light_background(array)):
        array = 255 - array
    return np.ascontiguousarray(array)


def _reduced(image: Image.Image, side: int) -> Image.Image:
    """The image with at most `side` pixels on its longer side, each pixel the mean of the
    block it stands for (transparent pixels weighted by their alpha). A model sees a few dozen
    pixels a side, and the float arithmetic below on a whole 8000 x 8000 picture would take
    gigabytes; reduced a band of rows at a time, the decoded picture is the only large copy."""
    factor = -(-max(image.size) // side)
    if factor <= 1:
        return image
    width, height = image.size
    band = factor * max(1, 256 // factor)
    parts = [_reduced_band(image.crop((0, top, width, min(top + band, height))), factor)
             for top in range(0, height, band)]
    reduced = Image.new(parts[0].mode, (parts[0].width, sum(part.height for part in parts)))
    for index, part in enumerate(parts):
        reduced.paste(part, (0, index * (band // factor)))
    reduced.info = dict(image.info)  # the EXIF orientation, a palette's transparency
    return reduced


def _reduced_band(band: Image.Image, factor: int) -> Image.Image:
    if band.mode in ("1", "P", "PA"):  # means of palette indices or of bits are no colours
        transparent = band.mode == "PA" or "transparency" in band.info
        band = band.convert("RGBA" if transparent else "L" if band.mode == "1" else "RGB")
    if band.mode in _SIXTEEN_BIT:
        band = band.convert("I")
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(band.mode)
    if premultiplied:
        return band.convert(premultiplied).reduce(factor).convert(band.mode)
    return band.reduce(factor)


def _to_8_bit(image: Image.Image, sixteen_bit: bool) -> Image.Image:
    """8 bits a channel without losing the picture: 16- and 32-bit grey are scaled down (PIL's
    own conversion clips them to white), and a transparent background is filled with the
    colour opposite to the ink, so the drawing stays visible whatever its colour."""
    if image.mode in (*_SIXTEEN_BIT, "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if sixteen_bit or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba, dtype=np.float64)[..., 3:] / 255.0
        grey = np.asarray(rgba.convert("L"), dtype=np.float64)
        opaque = alpha[..., 0] > 0.5
        ink_is_light = opaque.any() and grey[opaque].mean() > 127
        background = 0.0 if ink_is_light else 255.0
        rgb = np.asarray(rgba, dtype=np.float64)[..., :3]
        flat = rgb * alpha + background * (1.0 - alpha)
        return Image.fromarray(np.clip(flat + 0.5, 0, 255).astype(np.uint8), "RGB")
    return image


def _light_background(image: np.ndarray) -> bool:
    border = np.concatenate([image[:, 0].ravel(), image[:, -1].ravel(),
                             image[:, :, 0].ravel(), image[:, :, -1].ravel()])
    return float(border.mean()) > 127


@dataclass(frozen=True)
class CsvOptions:
    """How the CSV files given to predict are laid out, where they differ from the dataset's
    (the command line's --header and --label-column; None: as the file or the dataset says)."""

    header: bool | None = None
    label_column: str | int | None = None


def _first_line_fields(path: Path, layout: CsvLayout) -> tuple[list[bytes], bool] | None:
    """The fields of the first non-blank line, read no further than one line may be, and
    whether the line ended there; None where the file cannot tell (the reader then says what
    is wrong). Compressed or not by its bytes, as the reader decides."""
    try:
        with open_regular(path, "CSV file") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            with (gzip.open(raw) if gzipped else raw) as handle:
                head = handle.read(max_line_bytes(layout))
    except UserFileError as error:
        raise PredictError(str(error)) from None
    except (OSError, EOFError, zlib.error):
        return None
    limit = max_line_bytes(layout)
    for line in head.removeprefix(b"\xef\xbb\xbf").splitlines(keepends=True):
        if line.strip():
            return line.rstrip(b"\r\n").split(b","), line.endswith(b"\n") or len(head) < limit
    return None


def csv_layout_for(path: Path, dataset: AnyDataset, shape: tuple[int, int, int],
                   options: CsvOptions) -> CsvLayout:
    """The layout to read one CSV given to predict with: the dataset's, with or without a label
    column (new data has none: the column count tells), and a header only where the file has
    one. A file with another dataset's column count is refused, saying what the model takes."""
    layout = dataset.csv_layout()
    first = _first_line_fields(path, layout)
    if first is None:
        return layout
    fields, complete = first
    pixels = layout.num_pixels
    if len(fields) not in (pixels, pixels + 1) or not complete:
        more = "" if complete else "+"
        c, h, w = shape
        raise PredictError(
            f"{path}: {len(fields):,}{more} columns, but the model takes {c}x{h}x{w} images: "
            f"{pixels:,} pixel columns, with or without a label column; is this file from "
            "another dataset?")
    names = {name.encode() for name in dataset.classes}  # a data row may name its class
    numeric = all(re.fullmatch(rb"\s*[+-]?[0-9]+\s*", f) or f.strip().strip(b'"') in names
                  for f in fields)
    header = options.header if options.header is not None else not numeric
    label_column = options.label_column if options.label_column is not None \
        else layout.label_column
    if not header and isinstance(label_column, str) and label_column not in ("first", "last"):
        label_column = "first"  # a column name needs a header; Kaggle's layout puts it first
    return dataclasses.replace(layout, header=header, label_column=label_column,
                               labelled=len(fields) == pixels + 1)


CSV_BATCH_ROWS = 8192  # rows of a CSV classified at a time: memory stays bounded


def batches(path: Path, shape: tuple[int, int, int], classes: list[str],
            dataset: AnyDataset | None, invert: str, options: CsvOptions,
            drawing: Drawing | None = None) -> Iterator[Batch]:
    """One input file as batches to classify: an image as one, a CSV as blocks of rows read
    in bounded memory; PredictError when it cannot be read."""
    if path.name.lower().endswith(CSV_SUFFIXES):
        if dataset is None:
            raise PredictError(f"{path}: the CSV layout is unknown: the checkpoint's dataset "
                               "is not defined in the parameters file (--params)")
        layout = csv_layout_for(path, dataset, shape, options)
        first_row = 1
        try:
            for table in iter_image_csv(path, layout, CSV_BATCH_ROWS):
                count = len(table.labels)
                yield Batch([f"{path}:{row}" for row in range(first_row, first_row + count)],
                            table.images.reshape(-1, *shape),
                            [classes[label] if label >= 0 else None for label in table.labels])
                first_row += count
        except DataError as error:
            raise PredictError(str(error)) from None
        return
    if path.suffix.lower() in IMAGE_SUFFIXES:
        yield Batch([str(path)], load_image(path, shape, invert, drawing)[None].copy(), [None])
        return
    raise PredictError(f"{path}: expected a CSV ({', '.join(CSV_SUFFIXES)}) or an image "
                       f"({', '.join(sorted(IMAGE_SUFFIXES))})")


def probabilities(models: list, images: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Softmax of the models' mean logits: one model, or a seed ensemble (torch modules)."""
    import torch

    from pipeline.forward import model_inputs

    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = model_inputs(torch.from_numpy(images[start : start + batch]),
                             channels_last=False)
            chunks.append(torch.softmax(torch.stack([m.eval()(x) for m in models]).mean(0), 1))
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0))


@dataclass
class Classifier:
    """What predict needs of a trained model, whichever runtime runs it."""

    classes: list[str]
    input_shape: tuple[int, int, int]
    dataset: str | None
    seeds: int
    drawing: Drawing | None  # the recipe that travels with the model (an ONNX export's)
    probabilities: Callable[[np.ndarray], np.ndarray]


BACKENDS = ("torch", "onnx")


def load_classifier(path: Path, backend: str) -> Classifier:
    """A checkpoint in PyTorch, or an exported .onnx file in ONNX Runtime (torch not imported)."""
    if backend == "auto":
        backend = "onnx" if path.suffix.lower() == ".onnx" else "torch"
    if backend == "onnx":
        from pipeline.portable import PortableError, load_portable

        try:
            exported = load_portable(path)
        except PortableError as error:
            raise PredictError(str(error)) from None
        return Classifier(exported.classes, exported.input_shape, exported.dataset or None,
                          exported.seeds, exported.drawing, exported.probabilities)
    if path.suffix.lower() == ".onnx":
        raise PredictError(f"{path}: an ONNX model; run it with --backend onnx")
    from pipeline.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    models = checkpoint.seed_models()
    return Classifier(checkpoint.classes, checkpoint.input_shape, checkpoint.dataset,
                      len(models), None, lambda images: probabilities(models, images))


UNSURE_BELOW = 0.5  # top probability
INK_RANGE = (0.02, 0.85)  # share of the input's pixels that hold ink, for grey images


def doubts(probabilities_row: np.ndarray, image: np.ndarray) -> str:
    """Why a prediction should not be taken at face value, or nothing."""
    notes = []
    if probabilities_row.max() < UNSURE_BELOW:
        notes.append(f"unsure: the top class has under {UNSURE_BELOW:.0%}")
    if image.shape[0] == 1:
        ink = float((image > 32).mean())
        if not INK_RANGE[0] <= ink <= INK_RANGE[1]:
            notes.append(f"looks unlike the training images: ink covers {ink:.0%} of it")
    return f"  [{'; '.join(notes)}]" if notes else ""


def checkpoint_dataset(params_path: Path, dataset_name: str | None
                       ) -> tuple[AnyDataset | None, Drawing | None]:
    """The checkpoint's dataset as params.yaml defines it (its CSV layout) and its drawing
    recipe, read once; None for what the file does not hold (or without a parameters file)."""
    if dataset_name is None or not params_path.is_file():
        return None, None
    params = load_params(params_path)
    return params.datasets.get(dataset_name), params.drawing.get(dataset_name)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula


def spreadsheet_text(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula (`=HYPERLINK(...)`,
    `+cmd`, `@SUM`) gets a leading apostrophe, as OWASP's CSV-injection advice says."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


HEADER = ["input", "actual", "predicted", "confidence"]


def csv_rows(batch: Batch, probs: np.ndarray, shown: list[str]) -> Iterator[list[str]]:
    """The --out rows of one batch; names and class names (from files the user may not have
    made) written so that a spreadsheet opening the file runs nothing."""
    for name, label, row in zip(batch.names, batch.labels, probs, strict=True):
        best = int(row.argmax())
        yield [spreadsheet_text(name), spreadsheet_text(label or ""), shown[best],
               f"{row[best]:.4f}", *(f"{p:.4f}" for p in row)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path,
                        help="PNG/JPEG files or CSV files (a CSV row is shown as file.csv:N, the "
                             "N-th data row counting from 1, a header line not counted)")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="models/<ds>/<model>.pt, or a .onnx file from pipeline-export")
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                        help="torch, or onnx (ONNX Runtime, no torch needed); auto: onnx for a "
                             ".onnx file")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="for the CSV layout of the checkpoint's dataset and its drawing "
                             "recipe (an ONNX export carries its own)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--invert", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--out", type=Path, help="also write every probability to this CSV")
    parser.add_argument("--header", choices=("auto", "yes", "no"), default="auto",
                        help="whether CSV inputs start with a header line (auto: a first line "
                             "that is not all numbers is one)")
    parser.add_argument("--label-column", help="the CSV inputs' label column: first, last, a "
                        "0-based index or a header name (default: the dataset's; first when "
                        "there is no header)")
    args = parser.parse_args(argv)

    if args.out is not None and args.out.is_dir():
        raise PredictError(f"--out {args.out}: is a folder; give a file name, e.g. "
                           f"{args.out / 'predictions.csv'}")
    model = load_classifier(args.checkpoint, args.backend)
    if model.seeds > 1:
        print(f"{args.checkpoint}: averaging the logits of its {model.seeds} seed copies (the "
              "report's seed-ensemble accuracy; its model table's main figure is the first "
              "seed alone)", file=sys.stderr)
    classes = model.classes
    shape = model.input_shape
    try:
        dataset, recipe = checkpoint_dataset(args.params, model.dataset)
    except ParamsError as error:
        needs_layout = any(p.name.lower().endswith(CSV_SUFFIXES) for p in args.inputs)
        if model.drawing is None or needs_layout:
            raise
        print(f"note: {args.params} was not read ({str(error).splitlines()[0]}); the model's "
              "own drawing recipe is used", file=sys.stderr)
        dataset, recipe = None, None
    drawing = model.drawing or recipe
    guessing = drawing is None and shape[0] == 1  # said once an image file was read
    options = CsvOptions({"yes": True, "no": False}.get(args.header),
                         _label_column(args.label_column))
    top_k = max(1, min(args.top_k, len(classes)))
    shown = [spreadsheet_text(c) for c in classes]
    failures: list[str] = []
    labelled = right = 0
    with (atomic_write(args.out, "w") if args.out else contextlib.nullcontext()) as handle:
        writer = csv.writer(handle, lineterminator="\n") if handle is not None else None
        if writer is not None:
            writer.writerow([*HEADER, *shown])
        for path in args.inputs:
            # a file's --out rows and accuracy count only once the whole file was read: a CSV
            # refused part-way leaves nothing of it in either (its rows shown so far say so)
            file_labelled = file_right = printed = 0
            with (tempfile.TemporaryFile("w+", newline="") if writer is not None
                  else contextlib.nullcontext()) as held:
                try:
                    for batch in batches(path, shape, classes, dataset, args.invert, options,
                                         drawing):
                        probs = model.probabilities(batch.images)
                        if guessing and path.suffix.lower() in IMAGE_SUFFIXES:
                            guessing = False
                            print(f"note: no drawing recipe for {model.dataset or 'this model'}"
                                  f"'s images (drawing.{model.dataset or '<dataset>'} "
                                  f"in {args.params}, or an export made with one): image files "
                                  "are resized whole, which reads a drawing worse than cropping "
                                  "its ink the way the dataset's images were made",
                                  file=sys.stderr)
                        for name, label, row, image in zip(batch.names, batch.labels, probs,
                                                           batch.images, strict=True):
                            best = np.argsort(-row)[:top_k]
                            guesses = ", ".join(f"{classes[i]} {row[i]:.1%}" for i in best)
                            truth = f"  (true: {label})" if label is not None else ""
                            print(f"{name}: {guesses}{truth}{doubts(row, image)}")
                            printed += 1
                            if label is not None:
                                file_labelled += 1
                                file_right += label == classes[int(row.argmax())]
                        if held is not None:
                            csv.writer(held, lineterminator="\n").writerows(
                                csv_rows(batch, probs, shown))
                    labelled, right = labelled + file_labelled, right + file_right
                    if held is not None and handle is not None:
                        held.seek(0)
                        shutil.copyfileobj(held, handle)
                except PredictError as error:
                    failures.append(str(error) + (
                        f" (its first {printed:,} rows, shown above, are left out of the accuracy"
                        f"{' and --out' if writer is not None else ''})" if printed else ""))
    if labelled:
        print(f"accuracy on the {labelled:,} labelled inputs: {right / labelled:.2%}",
              file=sys.stderr)
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    if len(failures) == 1:
        raise PredictError(failures[0])
    if failures:
        raise PredictError(f"{len(failures)} of {len(args.inputs)} inputs could not be "
                           "classified (the others are above):\n  " + "\n  ".join(failures))


def _label_column(text: str | None) -> str | int | None:
    return int(text) if text is not None and text.isdigit() else text


def cli() -> None:
    from pipeline.cli import run_stage

    run_stage(main)


if __name__ == "__main__":
    cli()
