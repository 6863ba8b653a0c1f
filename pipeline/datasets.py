"""What a `datasets:` entry in params.yaml may say: one schema per format, and its sources.

A leaf of the import graph (pydantic only): the converters (pipeline/formats.py), the downloader
(pipeline/sources.py), the CSV parser (pipeline/ingest.py) and the drawing recipe
(pipeline/drawing.py) import these classes, never the reverse, so editing an implementation
re-runs only the stages that run it. `FORMATS` is the registry: the params union and every list
of format names derive from it.
"""

from __future__ import annotations

import re
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from pipeline.schema import PositiveInt, Sha256, Strict

# Bounds of a dataset's declared shape: large enough for any image classification CSV, small
# enough that a typo (1x100000x100000) is refused before anything is allocated.
MAX_CHANNELS, MAX_SIDE, MAX_PIXELS, MAX_CLASSES = 16, 4096, 1 << 22, 100_000
PIXEL_MAX = 255  # the raw CSVs' and the prepared arrays' brightest value (uint8)


class Drawing(Strict):
    fit: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="the ink's longer side fills this share of the frame (MNIST: 20/28)")
    center: Literal["box", "mass"] = Field(
        "box", description="centre the ink's bounding box, or its centre of mass (MNIST)")
    supersample: Annotated[int, Field(ge=1, le=8)] = Field(
        1, description=">1: draw at this many times the size, binarise, and count the ink "
                       "pixels in each block (UCI digits: 4, 32x32 into 8x8)")
    threshold: Annotated[int, Field(ge=1, le=254)] = Field(
        128, description="ink is brighter than this (0..255), for the bounding box and binarising")
    min_contrast: Annotated[int, Field(ge=1, le=255)] = Field(
        32, description="fewer grey levels than this between the image's lightest and darkest "
                        "pixels: blank, no ink; more: the levels are stretched to 0..255 first "
                        "(a light pencil, a grey photo)")
    min_stroke: Annotated[float, Field(ge=0, le=8)] = Field(
        0.0, description="thicken strokes thinner than this many pixels of the frame (the "
                         "supersampled frame when supersample > 1) to about it, as the pen of the "
                         "dataset's writers would have drawn them; 0: as drawn")



def check_url(url: str, what: str) -> None:
    """A URL the downloader can request as written: http(s), a host, and only printable ASCII
    (a space or a non-ASCII letter must be percent-encoded; an IDN host written as punycode)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{what} must start with http:// or https:// (got {url[:100]!r})")
    bad = next((c for c in url if not "\x21" <= c <= "\x7e"), None)
    if bad is not None:
        raise ValueError(f"{what} {url[:100]!r} holds {bad!r}; percent-encode it (a space is "
                         "%20) and write a non-ASCII host name in punycode (xn--...)")
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError as error:  # a broken IPv6 literal, a bad port
        raise ValueError(f"{what} {url[:100]!r} is not a valid URL ({error})") from None
    if not host:
        raise ValueError(f"{what} {url[:100]!r} names no host")


class FileSource(Strict):
    """Where one file comes from: exactly one of url, name (joined to the dataset's mirrors),
    path (local file) or resource ("package.module:file" inside an installed package)."""

    url: str | None = None
    name: str | None = None
    path: str | None = None
    resource: str | None = None
    sha256: Sha256 | None = None
    size: PositiveInt | None = None

    @model_validator(mode="after")
    def _exactly_one_location(self) -> FileSource:
        given = [k for k in ("url", "name", "path", "resource") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of url, name, path or resource "
                f"(got {', '.join(given) if given else 'none'})"
            )
        if self.url is not None:
            check_url(self.url, "url")
        if self.path is not None and "\x00" in self.path:
            raise ValueError("path holds a NUL character, which no file name can")
        if self.name is not None and (not re.fullmatch(r"[\x21-\x2e\x30-\x7e][\x21-\x7e]*",
                                                       self.name)
                                      or ".." in self.name.split("/")):
            raise ValueError(f"name must be a file name relative to the mirrors in printable "
                             f"ASCII (percent-encode the rest), without spaces or '..' "
                             f"(got {self.name!r})")
        if self.resource is not None and ":" not in self.resource:
            raise ValueError(
                f"resource must look like 'package.module:file' (got {self.resource!r})"
            )
        return self


@dataclass(frozen=True)
class CsvLayout:
    """How a CSV of images is laid out: what the parser (pipeline/ingest.py) checks each row
    against."""

    num_pixels: int
    num_classes: int
    header: bool = True
    label_column: str | int = "first"
    max_pixel: int = PIXEL_MAX
    labelled: bool = True  # False: rows of pixels only (new data to classify); labels come back -1
    class_names: tuple[str, ...] = ()  # a label cell may name its class instead of its index

    @property
    def columns(self) -> str:
        return (f"1 label + {self.num_pixels} pixels" if self.labelled
                else f"{self.num_pixels} pixels, no label")



class _DatasetBase(Strict):
    shape: tuple[Annotated[int, Field(ge=1, le=MAX_CHANNELS)],
                 Annotated[int, Field(ge=1, le=MAX_SIDE)],
                 Annotated[int, Field(ge=1, le=MAX_SIDE)]] = Field(
        description="image shape as [channels, height, width]"
    )
    classes: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=2, max_length=MAX_CLASSES)
    mirrors: list[str] = []
    flip: bool = Field(False, description="a left-right mirror image is of the same class "
                                          "(clothes, photos; not digits or letters): allows "
                                          "train.augment.flip")

    @field_validator("shape", mode="before")
    @classmethod
    def _three_sizes(cls, shape: Any) -> Any:
        if not isinstance(shape, list | tuple) or len(shape) != 3:
            raise ValueError("expected [channels, height, width], e.g. [1, 28, 28]")
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape) \
                and shape[0] * shape[1] * shape[2] > MAX_PIXELS:
            raise ValueError(f"{shape[0]}x{shape[1]}x{shape[2]} is more than {MAX_PIXELS:,} "
                             "values an image; this pipeline is for small images")
        return tuple(shape)

    @field_validator("classes", mode="before")
    @classmethod
    def _numbers_name_classes(cls, classes: Any) -> Any:
        """`classes: [0, 1, 2]` names the classes "0", "1", "2" (booleans stay refused), and so
        does `classes: 3`: a long list would make every DVC command slow (DVC parses
        params.yaml again for each stage; docs/performance.md, "Many classes")."""
        if isinstance(classes, int) and not isinstance(classes, bool):
            if not 2 <= classes <= MAX_CLASSES:
                raise ValueError(f"a number of classes from 2 to {MAX_CLASSES:,}, or their names")
            return [str(c) for c in range(classes)]
        if isinstance(classes, list):
            return [str(c) if isinstance(c, int) and not isinstance(c, bool) else c
                    for c in classes]
        return classes

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, classes: list[str]) -> list[str]:
        duplicates = sorted(name for name, count in Counter(classes).items() if count > 1)
        if duplicates:
            raise ValueError(f"class names must be unique; repeated: {duplicates}")
        return classes

    @field_validator("mirrors")
    @classmethod
    def _mirrors_are_urls(cls, mirrors: list[str]) -> list[str]:
        for mirror in mirrors:
            check_url(mirror, "mirror")
        return [m if m.endswith("/") else m + "/" for m in mirrors]

    @property
    def num_pixels(self) -> int:
        c, h, w = self.shape
        return c * h * w

    def csv_layout(self) -> CsvLayout:
        """How the raw CSV files this format leaves in data/raw/<dataset>/ are laid out."""
        return CsvLayout(self.num_pixels, len(self.classes), True, "label", PIXEL_MAX)

    def file_sources(self) -> dict[str, FileSource]:
        """Every file the dataset is made from, by a short label (e.g. `train.images`)."""
        raise NotImplementedError


class CsvDataset(_DatasetBase):
    """A CSV with one image per row: a label column and C*H*W pixel columns in C,H,W order."""

    format: Literal["csv"]
    train: FileSource
    test: FileSource | None = None
    header: bool = True
    label_column: str | int = Field(
        "first", description="'first', 'last', a header name, or a 0-based column index"
    )
    max_pixel: PositiveInt = PIXEL_MAX

    def csv_layout(self) -> CsvLayout:
        return CsvLayout(self.num_pixels, len(self.classes), self.header, self.label_column,
                         self.max_pixel, class_names=tuple(self.classes))

    def file_sources(self) -> dict[str, FileSource]:
        return {split: source for split in ("train", "test")
                if (source := getattr(self, split)) is not None}


class IdxPair(Strict):
    images: FileSource
    labels: FileSource


class IdxDataset(_DatasetBase):
    """The MNIST-family IDX files (gzipped), converted to Kaggle-layout CSV on download."""

    format: Literal["idx"]
    train: IdxPair
    test: IdxPair

    @property
    def max_pixel(self) -> int:
        return PIXEL_MAX

    def file_sources(self) -> dict[str, FileSource]:
        return {f"{split}.{part}": getattr(getattr(self, split), part)
                for split in ("train", "test") for part in ("images", "labels")}


class CifarDataset(_DatasetBase):
    """The CIFAR python tarball: pickled batches (read through a numpy-only unpickler),
    converted to Kaggle-layout CSV (label + C*H*W pixel columns) on download."""

    format: Literal["cifar"]
    archive: FileSource
    train_batches: list[str] = Field(
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
        min_length=1)
    test_batches: list[str] = Field(["test_batch"], min_length=1)

    @property
    def max_pixel(self) -> int:
        return PIXEL_MAX

    def file_sources(self) -> dict[str, FileSource]:
        return {"archive": self.archive}


FORMATS: dict[str, type[_DatasetBase]] = {
    get_args(cls.model_fields["format"].annotation)[0]: cls
    for cls in (CsvDataset, IdxDataset, CifarDataset)
}
AnyDataset = CsvDataset | IdxDataset | CifarDataset
Dataset = Annotated[AnyDataset, Field(discriminator="format")]

