"""Run tracking: what the train stage logs, and how the report reads it back.

Metrics go through dvclive, DVC's own logger, so `dvc exp show`, `dvc metrics diff`,
`dvc plots show/diff` and DVC Studio read them with no glue: one folder per dataset/model with

    metrics.json                          the summary (latest epoch, test, best epoch, timing)
    plots/metrics/{train,valid}/{loss,accuracy}.tsv, lr.tsv, epoch_seconds.tsv   one row per epoch
    plots/sklearn/confusion_matrix.json   test (actual, predicted) pairs, with class names

TensorBoard event logs (scalars, weight histograms, hyper-parameters) are written as well when
`train.tensorboard` is on, for `tensorboard --logdir reports/tensorboard`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping
from pathlib import Path

from torch import nn

from pipeline.artifacts import ArtifactError, read_json

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.json"
# history column -> dvclive metric name; each becomes plots/metrics/<name>.tsv
CURVES = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "valid_loss": "valid/loss",
    "valid_accuracy": "valid/accuracy",
    "lr": "lr",
    "seconds": "epoch_seconds",
}


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


class RunTracker:
    """Logs one training run to a dvclive folder and, optionally, a TensorBoard folder."""

    def __init__(self, live_dir: Path, tensorboard_dir: Path | None = None):
        # dvcyaml=None: dvc.yaml already declares these files; save_dvc_exp=False: `dvc exp run`
        # makes the experiment, a plain `python -m pipeline.train` must not
        self.live = _live_class()(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False,
                                  report=None)
        self.tensorboard = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(tensorboard_dir))

    def log_epoch(self, row: Mapping[str, float], model: nn.Module | None = None) -> None:
        """One history row (keys of CURVES plus `epoch`); the step is the epoch number."""
        epoch = int(row["epoch"])
        self.live.step = epoch
        for column, name in CURVES.items():
            self.live.log_metric(name, float(row[column]))
        self.live.next_step()
        if self.tensorboard is not None:
            for column, name in CURVES.items():
                self.tensorboard.add_scalar(name, row[column], epoch)
            if model is not None:
                for name, parameter in model.named_parameters():
                    self.tensorboard.add_histogram(f"weights/{name}", parameter.detach().float(),
                                                   epoch)

    def log_summary(self, values: Mapping[str, float | int]) -> None:
        """Final numbers (`test/accuracy`, `params`, ...): metrics.json only, no curve."""
        for name, value in values.items():
            self.live.log_metric(name, value, plot=False)

    def log_confusion(self, actual: list[str], predicted: list[str]) -> None:
        self.live.log_sklearn_plot("confusion_matrix", actual, predicted, name=CONFUSION_FILE)

    def log_hyperparameters(self, hyperparameters: Mapping[str, object],
                            metrics: Mapping[str, float]) -> None:
        """TensorBoard's HParams dashboard: one row per run, comparable across experiments."""
        if self.tensorboard is None:
            return
        plain = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                 for k, v in hyperparameters.items()}
        self.tensorboard.add_hparams(plain, {f"hparam/{k}": v for k, v in metrics.items()},
                                     run_name=".")

    def close(self) -> None:
        self.live.end()
        if self.tensorboard is not None:
            self.tensorboard.close()


def describe_tensorboard_folder(folder: Path, run: str, enabled: bool) -> None:
    """A note in the (DVC-tracked, so never missing) TensorBoard folder saying what it holds."""
    off = ("None are written: train.tensorboard is false in params.yaml; set it to true to get "
           "them.\n")
    (folder / "README.txt").write_text(
        f"TensorBoard event logs of the run {run}.\n{'' if enabled else off}"
        "View every run with: tensorboard --logdir reports/tensorboard\n", encoding="utf-8")


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


def parse_history(read: Callable[[str], str | None], source: str) -> list[dict]:
    """Per-epoch rows ({epoch, train_loss, ...}) from a run folder's curves; `read` returns a
    file's text given its path relative to the run folder, or None if it is not there."""
    curves = {}
    for column in CURVES:
        text = read(curve_path(column))
        if text is None:
            raise ArtifactError(f"{source}/{curve_path(column)}: missing; run the train stage "
                                "(dvc repro)")
        curves[column] = parse_curve(text, f"{source}/{curve_path(column)}")
    epochs = sorted(set.intersection(*(set(curve) for curve in curves.values())))
    return [{"epoch": epoch, **{column: curves[column][epoch] for column in CURVES}}
            for epoch in epochs]


def read_history(run_dir: Path) -> list[dict]:
    def read(relative: str) -> str | None:
        path = run_dir / relative
        return path.read_text(encoding="utf-8") if path.is_file() else None

    return parse_history(read, str(run_dir))


def read_summary(run_dir: Path) -> dict:
    """metrics.json, checked for the numbers the report needs."""
    summary = read_json(run_dir / METRICS_FILE)
    for dotted in ("test.accuracy", "test.loss", "params"):
        value = summary
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            raise ArtifactError(f"{run_dir / METRICS_FILE}: key '{dotted}' is missing or not a "
                                "number; re-run the train stage (dvc repro)")
    return summary
