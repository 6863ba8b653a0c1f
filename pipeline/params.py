"""The schema of params.yaml, and the one place it is loaded and validated.

A leaf of the import graph with its parts (pipeline/datasets.py, pipeline/architectures.py,
pipeline/schema.py): pydantic and YAML only, so every stage can load its settings without
importing another stage's code.

Every stage calls `load_params(path)`: unknown keys, wrong types, out-of-range values and
cross-references that do not resolve (a dataset or model listed to run but not defined) are all
refused here, before any work starts, with the key path, the value and what was expected.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from pipeline.architectures import ARCHITECTURES, Architecture
from pipeline.datasets import FORMATS, AnyDataset, Dataset, Drawing
from pipeline.errors import PipelineError
from pipeline.schema import Fraction, Strict
from pipeline.userfiles import UserFileError, read_bounded


class ParamsError(PipelineError, ValueError):
    """params.yaml is missing, unreadable or does not match the schema."""


# Upper bounds well past any sensible value: a typo (epochs: 1000000000) is refused up front
# instead of running for years or failing deep inside torch.
Epochs = Annotated[int, Field(ge=1, le=100_000)]
BatchSize = Annotated[int, Field(ge=1, le=1 << 20)]
LearningRate = Annotated[float, Field(gt=0, le=10)]
Momentum = Annotated[float, Field(ge=0, lt=1)]
WeightDecay = Annotated[float, Field(ge=0, le=10)]
MAX_SEED = 2**32 - 1  # what numpy and scikit-learn accept
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["onecycle", "constant"]
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}\Z")


class DownloadParams(Strict):
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    backoff_s: Annotated[float, Field(ge=0, le=600)] = 1.0
    max_total_s: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] = 600.0
    chunk_bytes: Annotated[int, Field(ge=1024, le=64 << 20)] = 1 << 20


class PrepareParams(Strict):
    valid_fraction: Fraction = 0.2
    test_fraction: Fraction = Field(0.2, description="used only when a dataset has no test file")
    seed: Seed = 42
    on_bad_row: Literal["fail", "drop"] = "fail"
    max_bad_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01


class EarlyStopping(Strict):
    """When a model's training stops before `epochs`: the monitored validation metric has not
    improved by `min_delta` for `patience` epochs, or the training loss went above `max_loss`
    (diverging). Either way the best-validation weights are kept, as after a full run."""

    patience: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="epochs without improvement before stopping; null: never")
    monitor: Literal["valid_loss", "valid_accuracy"] = "valid_loss"
    min_delta: Annotated[float, Field(ge=0, le=1e6)] = Field(
        0.0, description="the least change of the monitored metric that counts as better")
    max_loss: Annotated[float, Field(gt=0, le=1e6)] | None = Field(
        None, description="stop when an epoch's training loss goes above this; null: never")

    @property
    def active(self) -> bool:
        return self.patience is not None or self.max_loss is not None


class Augment(Strict):
    """Random changes to every training image, drawn anew each epoch (pipeline/augment.py);
    all zero (the default): none."""

    translate: Annotated[float, Field(ge=0, le=0.5)] = Field(
        0.0, description="largest shift, as a share of the side")
    rotate: Annotated[float, Field(ge=0, le=180)] = Field(
        0.0, description="largest rotation, in degrees either way")
    scale: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="largest zoom in or out: 0.1 draws sizes from 0.9 to 1.1")
    shear: Annotated[float, Field(ge=0, le=45)] = Field(
        0.0, description="largest shear, in degrees either way")
    erase: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="chance of blanking a random rectangle of 2-25 % of the image")
    flip: bool = Field(False, description="mirror half the images left to right; only for a "
                                          "dataset whose `flip: true` says that keeps a class")

    @property
    def active(self) -> bool:
        return bool(self.translate or self.rotate or self.scale or self.shear or self.erase
                    or self.flip)


class TrainSettings(Strict):
    epochs: Epochs = 10
    batch_size: BatchSize = 32
    optimizer: Optimizer = "adam"
    lr: LearningRate = 1e-3
    schedule: Schedule = "onecycle"
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 0.0
    early_stopping: EarlyStopping = EarlyStopping()
    augment: Augment = Augment()


# Per-model training overrides: every TrainSettings field, optional (left out: the train
# section's value), with the same bounds. Derived, so the two cannot drift apart.
def _optional(field: Any) -> Any:
    kind = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    return (kind | None, None)


TrainOverrides = create_model(
    "TrainOverrides", __base__=Strict, __module__=__name__,
    **{name: _optional(field) for name, field in TrainSettings.model_fields.items()})


class TrainParams(TrainSettings):
    seed: Seed = 0
    amp: bool = Field(True, description="bf16 autocast where the hardware has native bf16")
    channels_last: bool = True


class ExecutionParams(Strict):
    """How and where the pipeline runs, not what it computes. No stage lists this section in
    its DVC params, so changing it re-runs nothing; the next training uses it. Like another
    machine, these settings can move results in their last bits (the threads and the device
    decide the order of float sums), so each run records them (`machine.json`) and
    `pipeline-verify` treats a change as another machine."""

    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="auto: cuda, then mps, then cpu")
    threads: Literal["auto"] | Annotated[int, Field(ge=1, le=1024)] = Field(
        "auto", description="CPU threads per training process; auto: the usable cores that "
                            "other work is not using when the stage starts")
    processes: Annotated[int, Field(ge=1, le=64)] = Field(
        1, description="data-parallel worker processes on this machine (torchrun; one per GPU)")
    cuda_graphs: bool = Field(True, description="on CUDA, replay each full batch's training "
                              "step as one captured CUDA graph")
    tensorboard: bool = Field(False, description="also write TensorBoard event logs")
    save_state_every_s: Annotated[float, Field(ge=0, le=86_400)] = Field(
        30.0, description="save the training state at the end of an epoch at most this often, "
                          "so a killed train stage resumes (0: every epoch)")


class ModelRun(Strict):
    """What a `models:` entry adds to its architecture's fields (pipeline/architectures.py)."""

    seeds: Annotated[int, Field(ge=1, le=16)] = Field(
        1, description="train this many copies (train.seed, +1, ...) for a seed ensemble")
    train: TrainOverrides = TrainOverrides()
    trial: str | None = Field(
        None, description="set by pipeline-sweep only: the sweep trial "
                          "(`<sweep>/<number>/<token>`) this training reports each epoch's "
                          "validation score to, and that may stop it early (pruned); part of "
                          "the params so a pruned run is never taken for a full one from DVC's "
                          "run cache")

    def architecture(self) -> Architecture:
        """The architecture alone: what the model is, without how it is trained."""
        fields = self.model_dump(exclude=set(ModelRun.model_fields))
        return ARCHITECTURES[fields["arch"]].model_validate(fields)


# One params class per registered architecture: its own fields plus `seeds` and `train`.
_MODEL_SPECS = tuple(type(f"{cls.__name__}Spec", (cls, ModelRun), {"__module__": __name__})
                     for cls in ARCHITECTURES.values())
if typing.TYPE_CHECKING:  # a union built at import time; to a type checker, each is a ModelRun
    ModelSpec = ModelRun
else:
    ModelSpec = Annotated[Union[_MODEL_SPECS], Field(discriminator="arch")]  # noqa: UP007
# Where pydantic puts a union member's tag in an error location: datasets.<name>.<format>...
_TAGGED_SECTIONS = {"datasets": FORMATS, "models": {
    name: spec for name, spec in zip(ARCHITECTURES, _MODEL_SPECS, strict=True)}}


class ReportParams(Strict):
    samples_per_class: Annotated[int, Field(ge=1, le=20)] = 8
    draw_max_params: Annotated[int, Field(ge=0, le=5_000_000)] = Field(
        300_000, description="models up to this size run in the page's draw canvas; larger "
                             "ones are left out so the page stays small")


class VerifyParams(Strict):
    """What `pipeline-verify` (and the report's first screen) count as reproduced."""

    margin: Annotated[float, Field(gt=0, le=100)] = Field(
        1.0, description="accuracy points a result may move and still count as reproduced")
    seed_coverage: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.95, description="for a model trained with seeds > 1, the margin widens to cover this "
                          "share of the differences between two of its seeds (0: never)")


SweepChoice = str | int | float | bool


class SearchDimension(Strict):
    """One searched key of `sweep.space`: a range (`low`, `high`; `log: true` for a log scale,
    `step` for a grid of values, `type: int` for whole numbers) or a list of `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: Annotated[float, Field(gt=0)] | None = None
    type: Literal["float", "int"] = "float"
    choices: Annotated[list[SweepChoice], Field(min_length=1, max_length=1000)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SearchDimension:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log or self.step is not None:
                raise ValueError("give either choices or a range (low, high), not both")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"choices {self.choices} lists a value twice")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices: [...])")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0 (got {self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna samples a log range "
                             "continuously); drop one")
        if self.type == "int" and any(v is not None and float(v) != int(v)
                                      for v in (self.low, self.high, self.step)):
            raise ValueError("type: int needs whole numbers for low, high and step")
        return self

    def values_to_check(self) -> list[SweepChoice]:
        """The values the schema must accept for every trial to be valid: the ends of a
        range (an integer one as integers), every choice."""
        if self.choices is not None:
            return list(self.choices)
        ends = [float(self.low or 0), float(self.high or 0)]
        return [int(v) for v in ends] if self.type == "int" else [*ends]


SWEEP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,47}\Z")
SweepObjective = Literal["valid_accuracy", "valid_loss"]


class SweepParams(Strict):
    """`pipeline-sweep`'s search (README: Sweeps). Keys of `space` and `fixed` are paths under
    `models.<model>` as params.yaml writes them (`train.lr`, `dropout`), checked by the
    model's own schema; no stage lists this section, so editing it re-runs nothing."""

    dataset: str
    model: str
    name: str | None = Field(None, description="the sweep's name (default <dataset>-<model>): "
                             "its Optuna study and its experiments' prefix")
    space: Annotated[dict[str, SearchDimension], Field(min_length=1)]
    fixed: dict[str, SweepChoice | list[SweepChoice] | None] = Field(
        {}, description="set in every trial (e.g. fewer epochs for the search)")
    trials: Annotated[int, Field(ge=1, le=10_000)] = 20
    timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="no new trial starts after this many seconds of this sweep run")
    objective: SweepObjective = "valid_accuracy"
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    warmup_epochs: Annotated[int, Field(ge=0, le=100_000)] = Field(
        3, description="no trial is pruned before this many epochs")
    startup_trials: Annotated[int, Field(ge=0, le=10_000)] = Field(
        2, description="trials that finish before any is pruned (and before TPE guides)")
    seed: Seed = 0

    @property
    def study(self) -> str:
        return self.name or f"{self.dataset}-{self.model}"

    @model_validator(mode="after")
    def _valid_sweep(self) -> SweepParams:
        if not SWEEP_NAME.match(self.study):
            raise ValueError(f"sweep name {self.study[:80]!r} must start with a letter and use "
                             "only letters, digits, _ and -, at most 48 characters")
        if self.sampler == "grid":
            ranged = [k for k, d in self.space.items() if d.choices is None and d.step is None]
            if ranged:
                raise ValueError(f"sampler: grid needs choices (or a step) for every key of "
                                 f"space; {', '.join(ranged)} is a continuous range")
        return self


class RunSelection(Strict):
    datasets: list[str] = Field(min_length=1)
    models: list[str] = Field(min_length=1)


class Params(Strict):
    run: RunSelection
    datasets: dict[str, Dataset]
    models: dict[str, ModelSpec]
    download: DownloadParams = DownloadParams()
    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    execution: ExecutionParams = ExecutionParams()
    # How a drawing or photo becomes one of a dataset's images, by dataset: for pipeline-predict,
    # pipeline-export and the report's draw canvas. No training stage reads it, so adding or
    # editing a recipe re-runs the report only.
    drawing: dict[str, Drawing] = {}

    @field_validator("drawing", mode="before")
    @classmethod
    def _no_recipes(cls, value: Any) -> Any:
        return {} if value is None else value  # every recipe commented out
    report: ReportParams = ReportParams()
    verify: VerifyParams = VerifyParams()
    sweep: SweepParams | None = None

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
        for name in self.drawing:
            if name not in self.datasets:
                raise ValueError(f"drawing.{name}: no dataset {name!r} is defined under "
                                 f"'datasets:'{_did_you_mean(name, list(self.datasets))}")
        for name, model in self.models.items():
            _check_name(f"models.{name}", name)
            if self.train.seed + model.seeds - 1 > MAX_SEED:
                raise ValueError(
                    f"models.{name}.seeds = {model.seeds} with train.seed = {self.train.seed}: "
                    f"its copies use seeds up to {self.train.seed + model.seeds - 1}, past "
                    f"{MAX_SEED}; lower train.seed")
        for run_model in self.run.models:
            if not self.training_for(run_model).augment.flip:
                continue
            overrides = self.models[run_model].train.model_dump(exclude_none=True)
            where = (f"models.{run_model}.train.augment.flip" if "augment" in overrides
                     else "train.augment.flip")
            for dataset in self.run.datasets:
                if not self.datasets[dataset].flip:
                    raise ValueError(
                        f"{where} is true, but datasets.{dataset} does not say a mirrored image "
                        f"keeps its class (flip: true): a mirrored digit or letter is another "
                        f"one; set {where}: false, or flip: true on the dataset if it holds")
        if self.sweep is not None:
            self._check_sweep(self.sweep)
        return self

    def _check_sweep(self, sweep: SweepParams) -> None:
        """The sweep's dataset and model exist, and every value a trial can set is one the
        model's own schema accepts."""
        for kind, name, defined in (("dataset", sweep.dataset, self.datasets),
                                    ("model", sweep.model, self.models)):
            if name not in defined:
                raise ValueError(f"sweep.{kind} = {name!r} is not defined under '{kind}s:' "
                                 f"(defined: {', '.join(sorted(defined))})"
                                 f"{_did_you_mean(name, list(defined))}")
        for section, entries in (("space", sweep.space), ("fixed", sweep.fixed)):
            for key, entry in entries.items():
                if key.split(".")[0] in ("arch", "trial"):
                    raise ValueError(f"sweep.{section}.{key}: pipeline-sweep sets "
                                     f"models.{sweep.model}.{key.split('.')[0]} itself; "
                                     "search other keys")
                values = (entry.values_to_check() if isinstance(entry, SearchDimension)
                          else [entry])
                for value in values:
                    problem = self.model_override_problem(sweep.model, {key: value})
                    if problem and "valid integer" in problem and isinstance(value, float) \
                            and isinstance(entry, SearchDimension):
                        problem += " (a whole-number key: give its range `type: int`)"
                    if problem:
                        raise ValueError(f"sweep.{section}.{key}: {_short(value)} is refused "
                                         f"for models.{sweep.model}.{key}: {problem}")

    def with_model_values(self, model: str, values: dict[str, Any]) -> ModelRun:
        """The model's entry with `values` set (keys are dotted paths under models.<model>),
        validated by the model's own schema (a ValidationError if refused)."""
        spec = self.models[model]
        tree = spec.model_dump(exclude_defaults=False)
        for key, value in values.items():
            node = tree
            *parents, last = key.split(".")
            for part in parents:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                elif not isinstance(child, dict):
                    raise ValueError(f"{part} is a value, not a section with keys")
                node = child
            node[last] = value
        return type(spec).model_validate(tree)

    def model_override_problem(self, model: str, values: dict[str, Any]) -> str | None:
        """Why the model's schema refuses `values` (one line), or None."""
        try:
            self.with_model_values(model, values)
        except ValidationError as error:
            item = error.errors(include_url=False)[0]
            where = ".".join(str(p) for p in item["loc"])
            if item["type"] == "extra_forbidden":
                node: Any = type(self.models[model])
                for part in item["loc"][:-1]:
                    node = _unwrap(node.model_fields[str(part)].annotation) \
                        if isinstance(node, type) and issubclass(node, BaseModel) else None
                allowed = list(node.model_fields) \
                    if isinstance(node, type) and issubclass(node, BaseModel) else []
                return f"unknown key {where!r}" + _did_you_mean(str(item["loc"][-1]), allowed)
            return (f"{where}: " if where else "") + item["msg"].removeprefix("Value error, ")
        except ValueError as error:
            return str(error)
        return None

    def dataset(self, name: str) -> AnyDataset:
        return self._lookup("datasets", name)

    def model(self, name: str) -> ModelRun:
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
    if not NAME.match(name):
        raise ValueError(f"{key}: name {name[:80]!r} must start with a letter and use only "
                         "a-z, A-Z, 0-9 and _, at most 64 characters")


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _untagged(loc: tuple) -> tuple:
    """An error location without pydantic's union tag (datasets.x.csv.shape -> datasets.x.shape)."""
    if len(loc) > 2 and loc[0] in _TAGGED_SECTIONS and loc[2] in _TAGGED_SECTIONS[loc[0]]:
        return loc[:2] + loc[3:]
    return loc


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys allowed where the unknown key `loc[-1]` was found, for 'did you mean'."""
    node: Any = Params
    for index, part in enumerate(loc[:-1]):
        if index == 2 and loc[0] in _TAGGED_SECTIONS and part in _TAGGED_SECTIONS[loc[0]]:
            node = _TAGGED_SECTIONS[loc[0]][part]
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
        loc = _untagged(tuple(item["loc"]))
        key = ".".join(str(p) for p in loc) or "(top level)"
        value = item.get("input")
        if item["type"] == "extra_forbidden" and loc[:1] == ("train",) and len(loc) == 2 \
                and loc[1] in ExecutionParams.model_fields:
            lines.append(f"  - {key}: moved to execution.{loc[1]} (how the pipeline runs is "
                         "kept apart from the experiment, so changing it retrains nothing)")
            continue
        if item["type"] == "extra_forbidden" and loc[:1] == ("datasets",) and len(loc) == 3 \
                and loc[2] == "drawing":
            lines.append(f"  - {key}: moved to drawing.{loc[1]} (a setting only inference "
                         "uses, kept out of the dataset so changing it re-runs no download, "
                         "preparation or training)")
            continue
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


def upgrade(raw: dict) -> dict:
    """An older revision's params tree in today's layout (to compare revisions): the execution
    settings that lived under `train:` moved to `execution:` (`threads: 0` is today's `auto`),
    and the drawing recipes under `datasets.<ds>.drawing` to `drawing.<ds>`."""
    datasets = raw.get("datasets")
    current = raw.get("drawing")
    if isinstance(datasets, dict) and isinstance(current, dict | None) and any(
            isinstance(d, dict) and "drawing" in d for d in datasets.values()):
        recipes = {name: d["drawing"] for name, d in datasets.items()
                   if isinstance(d, dict) and d.get("drawing") is not None}
        raw = {**raw, "datasets": {name: ({k: v for k, v in d.items() if k != "drawing"}
                                          if isinstance(d, dict) else d)
                                   for name, d in datasets.items()},
               "drawing": {**recipes, **(current or {})}}
    train = raw.get("train")
    if not isinstance(train, dict) or not set(train) & set(ExecutionParams.model_fields):
        return raw
    moved = {k: v for k, v in train.items() if k in ExecutionParams.model_fields}
    if moved.get("threads") == 0:
        moved["threads"] = "auto"
    execution: dict = raw["execution"] if isinstance(raw.get("execution"), dict) else {}
    return {**raw, "train": {k: v for k, v in train.items() if k not in moved},
            "execution": {**moved, **execution}}


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, "
                          f"got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_format_errors(error, source)) from None


class _YamlProblem(Exception):
    """Something params.yaml must not contain; the message says where."""


class _ParamsLoader(yaml.SafeLoader):
    """YAML as params.yaml needs it: no aliases (a few nested `*a` references can expand to
    billions of values), and no key given twice in one mapping (YAML keeps the last silently)."""

    def compose_node(self, parent, index):  # PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _YamlProblem(f"line {event.start_mark.line + 1}, column "
                               f"{event.start_mark.column + 1}: the alias *{event.anchor} refers "
                               "to an anchor; params.yaml does not allow anchors and aliases, "
                               "write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:
                raise _YamlProblem(f"line {line}: a mapping key must be a plain value") from None
            if first != line:
                raise _YamlProblem(f"line {line}: the key {key!r} is given twice in one mapping "
                                   f"(first at line {first}); keep one")
        return super().construct_mapping(node, deep)


_ParamsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _ParamsLoader.construct_mapping)
# `lr: 1e-3` is a float in YAML 1.2 (and to DVC, which rewrites params.yaml), a string to
# PyYAML's YAML 1.1 rules; the schema is strict, so read it as the number everyone means.
_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))
MAX_PARAMS_BYTES = 1 << 20


def load_params(path: str | Path) -> Params:
    path = Path(path)
    try:
        data = read_bounded(path, MAX_PARAMS_BYTES, "parameters file")
    except UserFileError as error:
        raise ParamsError(f"{path}: cannot read the parameters file "
                          f"({str(error).removeprefix(f'{path}: ')})") from None
    except OSError as error:
        raise ParamsError(f"{path}: cannot read the parameters file ({error.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); "
                          "save it as UTF-8") from None
    return parse_params(read_params_yaml(text, str(path)), str(path))


def read_params_yaml(text: str, source: str) -> Any:
    """params.yaml's YAML tree, read as strictly as the file itself is (no aliases, no key
    twice, at most MAX_PARAMS_BYTES): also for another revision's params, which is input too."""
    if len(text) > MAX_PARAMS_BYTES:
        raise ParamsError(f"{source}: {len(text):,} characters; a parameters file is a few KB")
    try:
        return yaml.load(text, Loader=_ParamsLoader)  # a SafeLoader subclass
    except _YamlProblem as problem:
        raise ParamsError(f"{source}, {problem}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ParamsError(f"{source}: not valid YAML{where}: {reason}") from None
    except RecursionError:
        raise ParamsError(f"{source}: nested too deeply to be a parameters file") from None
    except ValueError as error:  # e.g. an integer of more than 4,300 digits
        raise ParamsError(f"{source}: a value YAML cannot read as written "
                          f"({str(error).splitlines()[0][:160]})") from None
