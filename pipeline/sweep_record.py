"""A sweep's summary (`<sweeps>/<name>.json`, in git): what `pipeline-sweep` found, as the
report's sweep section draws it. Written by pipeline/sweep.py, read by the report stage (which
needs no Optuna); `pipeline-sweep --summary` rewrites it from the storage on any machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.artifacts import ArtifactError
from pipeline.userfiles import UserFileError, read_bounded

SUMMARY_SUFFIX = ".json"
TOP_TRIALS = 5  # the best finished trials judged on test for the report's table (for reference)
MAX_SUMMARY_BYTES = 32 << 20
TrialState = Literal["complete", "pruned", "failed", "running", "waiting"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreOnTest(Record):
    """A model's test accuracy with its bootstrap interval (pipeline/evidence.py)."""

    accuracy: float
    low: float
    high: float
    seeds: int = 1  # > 1: the seed ensemble's


class SweepTrial(Record):
    number: int
    state: TrialState
    params: dict[str, str | int | float | bool]
    value: float | None = None  # the objective (validation) of a finished trial
    curve: list[tuple[int, float]] = []  # (epoch, best objective so far) as reported
    pruned_at_epoch: int | None = None
    experiment: str | None = None  # the `dvc exp` name
    test: ScoreOnTest | None = None  # only the top trials are judged on test
    note: str | None = None  # why it failed, or that it was interrupted and run again


class Comparison(Record):
    against: str  # "trial 9", "the baseline"
    wins: tuple[int, int]  # test images only the chosen / only the other got right
    p_value: float  # McNemar's exact
    adjusted: float  # Holm-adjusted over the comparisons made
    better: bool  # significantly better after the correction


class Verdict(Record):
    chosen: int | None  # the trial the validation score chose
    crowned: bool  # significantly better than the runner-up (and no worse than the baseline)
    seeds: int = 1  # the seed count the compared models were re-trained with
    comparisons: list[Comparison] = []
    baseline: ScoreOnTest | None = None
    text: str  # the sentence the sweep printed
    apply: str | None = None  # the command that brings the chosen trial into the workspace


class SweepSummary(Record):
    version: Literal[1] = 1
    name: str
    dataset: str
    model: str
    objective: Literal["valid_accuracy", "valid_loss"]
    sampler: str
    pruner: str
    space: dict[str, dict]
    fixed: dict[str, object] = {}
    trials: list[SweepTrial]
    importance: dict[str, Annotated[float, Field(ge=0)]] | None = None
    importance_note: str | None = None  # why there is none
    verdict: Verdict | None = None

    @property
    def maximise(self) -> bool:
        return self.objective == "valid_accuracy"

    def finished(self) -> list[SweepTrial]:
        """Complete trials, best first."""
        done = [(t.value, t) for t in self.trials if t.state == "complete" and t.value is not None]
        return [t for _, t in sorted(done, key=lambda pair: (
            -pair[0] if self.maximise else pair[0], pair[1].number))]


def summary_path(folder: Path, name: str) -> Path:
    return folder / f"{name}{SUMMARY_SUFFIX}"


def parse_summary(data: bytes, source: str) -> SweepSummary:
    try:
        return SweepSummary.model_validate_json(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"{source}: not a sweep summary of this version ({where}: "
                            f"{first['msg']}); rewrite it with `pipeline-sweep --summary`") \
            from None


def read_summaries(folder: Path) -> list[SweepSummary]:
    """Every summary in the folder, by name (a missing folder: none)."""
    found = []
    for path in sorted(folder.glob(f"*{SUMMARY_SUFFIX}")) if folder.is_dir() else []:
        try:
            data = read_bounded(path, MAX_SUMMARY_BYTES, "sweep summary")
        except (UserFileError, OSError) as error:
            raise ArtifactError(f"{path}: cannot be read ({error})") from None
        found.append(parse_summary(data, str(path)))
    return found
