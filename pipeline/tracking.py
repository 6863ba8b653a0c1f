"""Run tracking: what the train stage logs, and how the report reads it back.

Metrics go through dvclive, DVC's own logger, so `dvc exp show`, `dvc metrics diff`,
`dvc plots show/diff` and DVC Studio read them with no glue: one folder per dataset/model with

    metrics.json                          the summary (latest epoch, test, best epoch, seeds)
    plots/metrics/{train,valid}/{loss,accuracy}.tsv, lr.tsv   one row per epoch
    plots/sklearn/confusion_matrix.json   test (actual, predicted) pairs, with class names
    machine.json                          the machine and software that trained it

These files are committed to git, so they hold only what a re-run reproduces bit for bit; the
run's timings (seconds, samples/s) go to a separate, git-ignored timing file (`write_timing`).
This module owns the metric names both ways: `EpochRow` and `Summary` are what the train stage
logs and what the report and the experiments section read back.

TensorBoard event logs (scalars, weight histograms, hyper-parameters) are written as well when
`execution.tensorboard` is on, one run per seed copy; `pipeline-tensorboard` gathers them from the
workspace and every experiment so TensorBoard shows them side by side.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.artifacts import ArtifactError, read_json, write_json

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.tensorboard import SummaryWriter

METRICS_FILE = "metrics.json"
# the model's parameter count in metrics.json: not "params", which `dvc metrics show` and
# `dvc exp show` would read as DVC's params (older runs wrote "params"; both are read)
PARAMETER_COUNT = "parameter_count"
PRUNED_EPOCH = "pruned/epoch"  # only in a pruned sweep trial's metrics
CONFUSION_FILE = "confusion_matrix.json"
CONFUSION_PATH = f"plots/sklearn/{CONFUSION_FILE}"  # relative to the run folder
MACHINE_FILE = "machine.json"  # what made the run (pipeline/machine.py), in git beside metrics


@dataclass(frozen=True)
class EpochRow:
    """One epoch of a training run (the step of every curve is `epoch`)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    valid_loss: float
    valid_accuracy: float
    lr: float


def keeps(valid_accuracy: float, valid_loss: float, kept: tuple[float, float] | None) -> bool:
    """Whether training keeps this epoch's weights over the ones it kept, `kept` as (valid
    accuracy, valid loss): a higher validation accuracy, ties to the lower loss."""
    return kept is None or (valid_accuracy, -valid_loss) > (kept[0], -kept[1])


# EpochRow field -> dvclive metric name; each becomes plots/metrics/<name>.tsv
CURVES = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "valid_loss": "valid/loss",
    "valid_accuracy": "valid/accuracy",
    "lr": "lr",
}
assert list(CURVES) == [f.name for f in dataclasses.fields(EpochRow)][1:]


@dataclass(frozen=True)
class SeedSummary:
    count: int
    test_accuracy_mean: float
    test_accuracy_std: float
    ensemble_test_accuracy: float


@dataclass(frozen=True)
class Summary:
    """A run's final numbers, as metrics.json holds them (`test/accuracy`, `seeds/count`, ...)."""

    test_accuracy: float
    test_loss: float
    best_epoch: int
    best_valid_accuracy: float
    params: int
    seeds: SeedSummary | None = None

    def metrics(self) -> dict[str, float | int]:
        values = {"test/accuracy": self.test_accuracy, "test/loss": self.test_loss,
                  "best/epoch": self.best_epoch,
                  "best/valid_accuracy": self.best_valid_accuracy,
                  PARAMETER_COUNT: self.params}
        if self.seeds is not None:
            values.update({f"seeds/{k}": v for k, v in dataclasses.asdict(self.seeds).items()})
        return values

    @classmethod
    def from_json(cls, data: dict, source: str) -> Summary:
        def number(dotted: str, kind: type = float, default: object = None) -> float | int:
            value: object = data
            for key in dotted.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            if value is None and default is not None:
                return default  # type: ignore[return-value]
            if not isinstance(value, int | float) or isinstance(value, bool) or (
                    isinstance(value, float) and math.isnan(value)):
                raise ArtifactError(f"{source}: key '{dotted}' is missing or not a number; "
                                    "re-run the train stage (dvc repro)")
            return kind(value)

        seeds = None
        if isinstance(data.get("seeds"), dict):
            seeds = SeedSummary(int(number("seeds.count", int)), number("seeds.test_accuracy_mean"),
                                number("seeds.test_accuracy_std"),
                                number("seeds.ensemble_test_accuracy"))
        return cls(number("test.accuracy"), number("test.loss"),
                   int(number("best.epoch", int, 0)), number("best.valid_accuracy", float, 0.0),
                   int(number(PARAMETER_COUNT if PARAMETER_COUNT in data else "params", int)),
                   seeds)


def curve_path(column: str) -> str:
    """Where dvclive writes a curve, relative to the run folder."""
    return f"plots/metrics/{CURVES[column]}.tsv"


def _live_class() -> type:
    from dvclive import Live  # imports DVC: only the train stage pays for it
    from scmrepo.exceptions import SCMError

    class _Live(Live):
        def _init_dvc(self) -> None:
            # dvclive 3.49 reads HEAD before checking that the git repository has a commit, and
            # fails in a fresh `git init` (treeverse/dvclive#522). Its DVC link only serves
            # `dvc exp` and Studio, which need a commit anyway: log without it there.
            try:
                super()._init_dvc()
            except SCMError:
                self._dvc_repo = None
                self._dvc_file = "dvc.yaml"

    return _Live


def seed_run(seed: int) -> str:
    """The TensorBoard run folder of one seed copy, inside the model's folder."""
    return f"seed{seed}"


class RunTracker:
    """Logs one training run to a dvclive folder and, optionally, a TensorBoard folder.

    dvclive holds the model (the first seed copy); TensorBoard gets one run per seed copy
    (`<folder>/seed<k>/`), so the copies sit side by side, and `pipeline-tensorboard` puts each
    experiment's folders next to the others."""

    def __init__(self, live_dir: Path, tensorboard_dir: Path | None = None,
                 seeds: Sequence[int] = (0,)):
        # dvcyaml=None: dvc.yaml already declares these files; save_dvc_exp=False: `dvc exp run`
        # makes the experiment, a plain `python -m pipeline.stages.train` must not
        self.live = _live_class()(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False,
                                  report=None)
        self.logged_seed = seeds[0]
        self.tensorboard: dict[int, SummaryWriter] = {}
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = {seed: SummaryWriter(str(tensorboard_dir / seed_run(seed)))
                                for seed in seeds}

    def log_epoch(self, row: EpochRow, model: nn.Module | None = None,
                  seed: int | None = None) -> None:
        """One epoch's curves of one seed copy (default: the model); the step is the epoch."""
        seed = self.logged_seed if seed is None else seed
        if seed == self.logged_seed:
            self.live.step = row.epoch
            for column, name in CURVES.items():
                self.live.log_metric(name, float(getattr(row, column)))
            self.live.next_step()
        writer = self.tensorboard.get(seed)
        if writer is not None:
            for column, name in CURVES.items():
                writer.add_scalar(name, getattr(row, column), row.epoch)
            if model is not None:
                for name, parameter in model.named_parameters():
                    writer.add_histogram(f"weights/{name}", parameter.detach().float(),
                                         row.epoch)

    def log_summary(self, summary: Summary) -> None:
        """Final numbers (`test/accuracy`, `params`, ...): metrics.json only, no curve."""
        for name, value in summary.metrics().items():
            self.live.log_metric(name, value, plot=False)

    def log_pruned(self, epoch: int) -> None:
        """A sweep trial its pruner stopped (pipeline/trial.py): `pruned/epoch` in metrics.json,
        so `dvc exp show` tells a pruned trial from a finished one."""
        self.live.log_metric(PRUNED_EPOCH, epoch, plot=False)

    def log_confusion(self, actual: list[str], predicted: list[str]) -> None:
        self.live.log_sklearn_plot("confusion_matrix", actual, predicted, name=CONFUSION_FILE)

    def log_hyperparameters(self, hyperparameters: Mapping[str, object],
                            metrics: Mapping[int, Mapping[str, float]]) -> None:
        """TensorBoard's HParams dashboard: one row per seed copy (`metrics` by seed),
        comparable across experiments."""
        plain = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                 for k, v in hyperparameters.items()}
        for seed, writer in self.tensorboard.items():
            writer.add_hparams({**plain, "seed": seed},
                               {f"hparam/{k}": v for k, v in metrics[seed].items()},
                               run_name=".")

    def close(self) -> None:
        self.live.end()
        for writer in self.tensorboard.values():
            writer.close()


def describe_tensorboard_folder(folder: Path, run: str, enabled: bool) -> None:
    """A note in the (DVC-tracked, so never missing) TensorBoard folder saying what it holds."""
    off = ("None are written: execution.tensorboard is false in params.yaml; set it to true to "
           "get them with the next training.\n")
    (folder / "README.txt").write_text(
        f"TensorBoard event logs of the run {run}, one folder per seed copy.\n"
        f"{'' if enabled else off}"
        "Compare every experiment's runs: pipeline-tensorboard (see the README)\n",
        encoding="utf-8")


def parse_curve(text: str, source: str) -> dict[int, float]:
    """A dvclive TSV (`step<TAB>name`, header first) as {step: value}."""
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not rows or "step" not in rows[0]:
        raise ArtifactError(f"{source}: not a dvclive metric file (no 'step' column in the "
                            "header); re-run the train stage")
    step_at, value_at = rows[0].index("step"), len(rows[0]) - 1
    curve = {}
    for line_no, row in enumerate(rows[1:], start=2):
        try:
            curve[int(row[step_at])] = float(row[value_at])
        except (ValueError, IndexError):
            raise ArtifactError(f"{source}, line {line_no}: expected a step and a number, got "
                                f"{row!r}; re-run the train stage") from None
    return curve


def parse_history(read: Callable[[str], str | None], source: str) -> list[EpochRow]:
    """Per-epoch rows from a run folder's curves; `read` returns a file's text given its path
    relative to the run folder, or None if it is not there."""
    curves = {}
    for column in CURVES:
        text = read(curve_path(column))
        if text is None:
            raise ArtifactError(f"{source}/{curve_path(column)}: missing; run the train stage "
                                "(dvc repro)")
        curves[column] = parse_curve(text, f"{source}/{curve_path(column)}")
    epochs = sorted(set.intersection(*(set(curve) for curve in curves.values())))
    return [EpochRow(epoch, **{column: curves[column][epoch] for column in CURVES})
            for epoch in epochs]


def read_history(run_dir: Path) -> list[EpochRow]:
    def read(relative: str) -> str | None:
        path = run_dir / relative
        return path.read_text(encoding="utf-8") if path.is_file() else None

    return parse_history(read, str(run_dir))


def read_summary(run_dir: Path) -> Summary:
    """metrics.json, checked for the numbers the report needs."""
    return Summary.from_json(read_json(run_dir / METRICS_FILE), str(run_dir / METRICS_FILE))


def parse_summary(text: str, source: str) -> Summary:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{source}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{source}: expected a JSON object")
    return Summary.from_json(data, source)


def write_machine(run_dir: Path, made_on: dict) -> None:
    write_json(run_dir / MACHINE_FILE, made_on)


def parse_machine(text: str | None) -> dict | None:
    """A run's machine record, or None where it is missing or unreadable (older runs)."""
    try:
        found = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


def parse_predictions(text: str, source: str) -> tuple[list[str], list[str]]:
    """dvclive's confusion file: the test images' (actual, predicted) class names, in test
    order, so two runs' predictions can be compared image by image from git alone."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{source}: not valid JSON ({error})") from None
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get("actual"), str)
            and isinstance(r.get("predicted"), str) for r in rows):
        raise ArtifactError(f"{source}: expected a list of {{actual, predicted}} rows")
    return [r["actual"] for r in rows], [r["predicted"] for r in rows]


@dataclass(frozen=True)
class Timing:
    """How long a run took on this machine: never in a file whose hash identifies a result."""

    device: str
    train_seconds: float
    samples_per_second: float
    epoch_seconds: list[float]


def write_timing(path: Path, timing: Timing) -> None:
    write_json(path, dataclasses.asdict(timing))


def read_timing(path: Path) -> Timing | None:
    """The run's timing, or None where it is missing or unreadable (a run made elsewhere, e.g.
    applied from an experiment or pulled from a remote: timings are not results)."""
    try:
        data = read_json(path)
    except ArtifactError:
        return None
    number = (int, float)
    if not (isinstance(data, dict) and set(data) == {f.name for f in dataclasses.fields(Timing)}
            and isinstance(data["device"], str)
            and all(isinstance(data[k], number) and not isinstance(data[k], bool)
                    and math.isfinite(data[k]) for k in ("train_seconds", "samples_per_second"))
            and isinstance(data["epoch_seconds"], list)
            and all(isinstance(s, number) and not isinstance(s, bool) and math.isfinite(s)
                    for s in data["epoch_seconds"])):
        return None  # not a timing this pipeline wrote: shown as missing, like one from elsewhere
    return Timing(**data)
