"""The schema of params.yaml, and the one place it is loaded and validated.

Every stage calls `load_params(path)`: unknown keys, wrong types, out-of-range values and
cross-references that do not resolve (a dataset or model listed to run but not defined) are all
refused here, before any work starts, with the key path, the value and what was expected.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or does not match the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class FileSource(_Strict):
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
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
        if self.resource is not None and ":" not in self.resource:
            raise ValueError(
                f"resource must look like 'package.module:file' (got {self.resource!r})"
            )
        return self


class IdxPair(_Strict):
    images: FileSource
    labels: FileSource


class _DatasetBase(_Strict):
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        description="image shape as [channels, height, width]"
    )
    classes: list[str] = Field(min_length=2)
    mirrors: list[str] = []

    @field_validator("shape", mode="before")
    @classmethod
    def _three_sizes(cls, shape: Any) -> Any:
        if not isinstance(shape, list | tuple) or len(shape) != 3:
            raise ValueError("expected [channels, height, width], e.g. [1, 28, 28]")
        return shape

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, classes: list[str]) -> list[str]:
        duplicates = sorted({c for c in classes if classes.count(c) > 1})
        if duplicates:
            raise ValueError(f"class names must be unique; repeated: {duplicates}")
        return classes

    @field_validator("mirrors")
    @classmethod
    def _mirrors_are_urls(cls, mirrors: list[str]) -> list[str]:
        for mirror in mirrors:
            if not mirror.startswith(("http://", "https://")):
                raise ValueError(f"mirror must start with http:// or https:// (got {mirror!r})")
        return [m if m.endswith("/") else m + "/" for m in mirrors]

    @property
    def num_pixels(self) -> int:
        c, h, w = self.shape
        return c * h * w


class CsvDataset(_DatasetBase):
    """A CSV with one image per row: a label column and C*H*W pixel columns in C,H,W order."""

    format: Literal["csv"]
    train: FileSource
    test: FileSource | None = None
    header: bool = True
    label_column: str | int = Field(
        "first", description="'first', 'last', a header name, or a 0-based column index"
    )
    max_pixel: PositiveInt = 255


class IdxDataset(_DatasetBase):
    """The MNIST-family IDX files (gzipped), converted to Kaggle-layout CSV on download."""

    format: Literal["idx"]
    train: IdxPair
    test: IdxPair

    @property
    def max_pixel(self) -> int:
        return 255


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
        return 255


Dataset = Annotated[CsvDataset | IdxDataset | CifarDataset, Field(discriminator="format")]
AnyDataset = CsvDataset | IdxDataset | CifarDataset


class DownloadParams(_Strict):
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    backoff_s: Annotated[float, Field(ge=0)] = 1.0
    max_total_s: Annotated[float, Field(gt=0)] = 600.0
    chunk_bytes: Annotated[int, Field(ge=1024)] = 1 << 20


class PrepareParams(_Strict):
    valid_fraction: Fraction = 0.2
    test_fraction: Fraction = Field(0.2, description="used only when a dataset has no test file")
    seed: int = 42
    on_bad_row: Literal["fail", "drop"] = "fail"
    max_bad_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01


class TrainSettings(_Strict):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    schedule: Literal["onecycle", "constant"] = "onecycle"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


class TrainOverrides(_Strict):
    """Per-model training overrides; anything left out comes from the train section."""

    epochs: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    optimizer: Literal["adam", "adamw", "sgd"] | None = None
    lr: Annotated[float, Field(gt=0)] | None = None
    schedule: Literal["onecycle", "constant"] | None = None
    momentum: Annotated[float, Field(ge=0, lt=1)] | None = None
    weight_decay: Annotated[float, Field(ge=0)] | None = None


class TrainParams(TrainSettings):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: bool = Field(True, description="bf16 autocast where the hardware has native bf16")
    channels_last: bool = True
    threads: Annotated[int, Field(ge=0)] = Field(0, description="0: torch's default")
    tensorboard: bool = Field(False, description="also write TensorBoard event logs")


class ModelSpec(_Strict):
    arch: Literal["linear", "linearnet", "cnn", "convnet"]
    hidden: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="hidden Linear sizes; default [256, 64] for linearnet, [] for convnet")
    channels: list[PositiveInt] = Field([8, 16, 32, 64], min_length=1)
    kernel_size: PositiveInt = 3
    head_hidden: PositiveInt = 24
    activation: Literal["leaky_relu", "relu"] = "leaky_relu"
    negative_slope: Annotated[float, Field(ge=0)] = 0.01
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    seeds: Annotated[int, Field(ge=1, le=16)] = Field(
        1, description="train this many copies (train.seed, +1, ...) for a seed ensemble")
    train: TrainOverrides = TrainOverrides()

    def hidden_sizes(self) -> list[int]:
        if self.hidden is not None:
            return self.hidden
        return [256, 64] if self.arch == "linearnet" else []

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd so 'same' padding keeps the size (got {k})")
        return k


class ReportParams(_Strict):
    samples_per_class: Annotated[int, Field(ge=1, le=20)] = 8


class RunSelection(_Strict):
    datasets: list[str] = Field(min_length=1)
    models: list[str] = Field(min_length=1)


class Params(_Strict):
    run: RunSelection
    datasets: dict[str, Dataset]
    models: dict[str, ModelSpec]
    download: DownloadParams = DownloadParams()
    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    report: ReportParams = ReportParams()

    @model_validator(mode="after")
    def _selection_is_defined(self) -> Params:
        for kind, chosen, defined in (
            ("datasets", self.run.datasets, self.datasets),
            ("models", self.run.models, self.models),
        ):
            for i, name in enumerate(chosen):
                if name not in defined:
                    hint = _did_you_mean(name, list(defined))
                    raise ValueError(
                        f"run.{kind}[{i}] = {name!r} is not defined under '{kind}:'"
                        f" (defined: {', '.join(sorted(defined))}){hint}"
                    )
            if len(set(chosen)) != len(chosen):
                raise ValueError(f"run.{kind} lists a name twice: {chosen}")
        for name in self.datasets:
            _check_name(f"datasets.{name}", name)
        for name in self.models:
            _check_name(f"models.{name}", name)
        return self

    def dataset(self, name: str) -> AnyDataset:
        return self._lookup("datasets", name)

    def model(self, name: str) -> ModelSpec:
        return self._lookup("models", name)

    def _lookup(self, kind: str, name: str) -> Any:
        defined = getattr(self, kind)
        if name not in defined:
            raise ParamsError(
                f"{name!r} is not defined under `{kind}:` in the parameters "
                f"(defined: {', '.join(sorted(defined))}){_did_you_mean(name, list(defined))}"
            )
        return defined[name]

    def training_for(self, model_name: str) -> TrainSettings:
        """The train section with the model's own overrides applied."""
        overrides = self.models[model_name].train.model_dump(exclude_none=True)
        base = self.train.model_dump(include=set(TrainSettings.model_fields))
        return TrainSettings(**{**base, **overrides})


def _check_name(key: str, name: str) -> None:
    # Names become folder names and DVC stage names (train@digits-cnn).
    if not name.replace("_", "").isalnum() or not name[0].isalpha():
        raise ValueError(f"{key}: name {name!r} must start with a letter and use only a-z, 0-9, _")


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys allowed where the unknown key `loc[-1]` was found, for 'did you mean'."""
    node: Any = Params
    for part in loc[:-1]:
        if part in ("csv", "idx", "cifar"):  # pydantic's tag for the dataset union member
            node = {"csv": CsvDataset, "idx": IdxDataset, "cifar": CifarDataset}[part]
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        elif isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = node.model_fields[part].annotation
        else:
            return []
        node = _unwrap(node)
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the model or dict inside."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} problem(s) in the parameters:"]
    for item in error.errors(include_url=False):
        loc = tuple(p for p in item["loc"] if p not in ("csv", "idx"))
        key = ".".join(str(p) for p in loc) or "(top level)"
        value = item.get("input")
        if item["type"] == "extra_forbidden":
            allowed = [k for k in _allowed_keys(item["loc"]) if k != loc[-1]]
            hint = _did_you_mean(str(loc[-1]), allowed)
            known = f" Allowed here: {', '.join(allowed)}." if allowed else ""
            lines.append(f"  - {key}: unknown key{hint}.{known}")
            continue
        message = item["msg"].removeprefix("Value error, ")
        if loc:
            lines.append(f"  - {key} = {_short(value)}: {message}")
        else:
            lines.append(f"  - {message}")
    lines.append("Fix these entries in params.yaml (or the -S overrides) and run again.")
    return "\n".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, "
                          f"got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_format_errors(error, source)) from None


def load_params(path: str | Path) -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ParamsError(f"{path}: cannot read the parameters file ({error.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}: {error}") from None
    return parse_params(raw, str(path))
