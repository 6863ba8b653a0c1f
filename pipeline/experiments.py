"""The experiments DVC knows, read for the report's comparison section and `pipeline-compare`.

`dvc.api.exp_show` lists the committed baseline and the `dvc exp run` experiments derived from it;
each one's params.yaml and dvclive files (committed to git, see dvc.yaml) are then read at its
revision, and its evaluation records (DVC outputs) where this clone's cache has them, through
`pipeline.revisions` (the one place another revision's file is read). DVC releases its repository
lock while a stage's command runs, so the report stage can call its API.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import yaml

from pipeline import tracking
from pipeline.analysis import softmax
from pipeline.artifacts import ArtifactError
from pipeline.evaluation import parse_evaluation
from pipeline.layout import evaluation_file
from pipeline.params import ParamsError, parse_params, read_params_yaml, upgrade
from pipeline.revisions import RevisionFiles, list_revisions

Run = tuple[str, str]  # (dataset, model)


@dataclass
class Experiment:
    name: str
    params: dict[str, object]  # flattened: "train.lr" -> 0.02
    accuracy: dict[Run, float] = field(default_factory=dict)
    histories: dict[Run, list[tracking.EpochRow]] = field(default_factory=dict)
    # per run: which test images the model got right, and its class probabilities, from its
    # evaluation record; per dataset: the test labels the records hold
    correct: dict[Run, np.ndarray] = field(default_factory=dict)
    probabilities: dict[Run, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    # per run whose evaluation record could not be read: why (not in the cache, damaged, ...)
    missing: dict[Run, str] = field(default_factory=dict)
    made_on: dict[Run, dict] = field(default_factory=dict)  # the run's machine.json
    summaries: dict[Run, tracking.Summary] = field(default_factory=dict)  # metrics.json
    # per run, from dvclive's confusion file in git: the test images' (actual, predicted) classes
    predictions: dict[Run, tuple[list[str], list[str]]] = field(default_factory=dict)
    prepared: dict[str, str] = field(default_factory=dict)  # dataset -> its prepared data's hash
    committed: bool = False  # the baseline commit, not an experiment
    revision: str = ""       # the git revision it was read at (a branch name for the baseline)


def param_text(value: object) -> str:
    """A parameter value as params.yaml and `dvc exp run -S` spell it (`true`, not `True`)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def normalised_params(raw: dict) -> dict[str, object]:
    """Flattened params with the schema's defaults filled in, so revisions compare fairly."""
    raw = upgrade(raw)
    try:
        return flatten(parse_params(raw).model_dump(mode="json"))
    except ParamsError:  # written under an older schema: compare what is there
        return flatten(raw)


def runs_of(raw: dict) -> list[Run] | None:
    """The dataset x model runs a params.yaml asks for (its `run:` section), in its order; None
    when it has no such lists (written under an older schema)."""
    selection = raw.get("run")
    datasets = selection.get("datasets") if isinstance(selection, dict) else None
    models = selection.get("models") if isinstance(selection, dict) else None
    if not isinstance(datasets, list) or not isinstance(models, list):
        return None
    return [(str(d), str(m)) for d in datasets for m in models]


def all_runs(experiments: list[Experiment], first: list[Run]) -> list[Run]:
    """`first`, then every other run some experiment made, in the order they appear: a model
    added by one experiment (`dvc exp run -S +models.tiny...`) gets its column."""
    columns = list(first)
    for experiment in experiments:
        columns += [run for run in experiment.accuracy if run not in columns]
    return columns


def read_revision(repo: Path, revision: str | None, name: str, runs: list[Run],
                  live_dir: str, evaluation_dir: str | None = None,
                  prepared_dir: str | None = None, strict: bool = False) -> Experiment | None:
    """One revision's params, test accuracies, curves, per-image predictions and machine
    records from git, the hash of each dataset's prepared data from its dvc.lock, and which
    test images each model got right from its evaluation record where this clone has it
    (else the reason in `missing`); None if it has no usable run. Only the runs its params.yaml
    asks for are read (`runs` where it names none): a dvclive folder another run left in git
    is not this revision's result. `revision` None: the workspace. Params that cannot be read
    make it None too, or, with `strict`, the error."""
    files = RevisionFiles(repo, revision)
    params_text = files.read_text("params.yaml")
    try:
        raw = read_params_yaml(params_text, f"params.yaml of {files.label}") \
            if params_text is not None else None
    except ParamsError:  # a revision's params are input too: unreadable, nothing to compare
        if strict:
            raise
        return None
    if not isinstance(raw, dict):
        return None
    experiment = Experiment(name, normalised_params(raw))
    where = files.label
    for dataset, model in runs_of(raw) or runs:
        run_dir = f"{live_dir}/{dataset}/{model}"
        summary = files.read_text(f"{run_dir}/{tracking.METRICS_FILE}")
        try:
            parsed = tracking.parse_summary(summary, f"{where}: {run_dir}") if summary else None
            history = tracking.parse_history(partial(_read_in, files, run_dir),
                                             f"{where}: {run_dir}")
        except ArtifactError:  # an older layout, or damaged
            continue
        if parsed is None:
            continue
        experiment.accuracy[(dataset, model)] = parsed.test_accuracy
        experiment.summaries[(dataset, model)] = parsed
        experiment.histories[(dataset, model)] = history
        confusion = files.read_text(f"{run_dir}/{tracking.CONFUSION_PATH}")
        if confusion is not None:
            with contextlib.suppress(ArtifactError):  # damaged: compared by accuracy only
                experiment.predictions[(dataset, model)] = tracking.parse_predictions(
                    confusion, f"{where}: {run_dir}/{tracking.CONFUSION_PATH}")
        made_on = tracking.parse_machine(files.read_text(f"{run_dir}/{tracking.MACHINE_FILE}"))
        if made_on is not None:
            experiment.made_on[(dataset, model)] = made_on
        if evaluation_dir is not None:
            path = f"{evaluation_dir}/{dataset}/{evaluation_file(model)}"
            data = files.read_bytes(path)
            if data is None:
                experiment.missing[(dataset, model)] = files.missing[path]
                continue
            try:
                record = parse_evaluation(data, f"{path} of {where}")
            except ArtifactError as error:
                experiment.missing[(dataset, model)] = \
                    f"damaged ({str(error).removeprefix(f'{path} of {where}: ')})"
                continue
            experiment.correct[(dataset, model)] = record.logits[0].argmax(1) == record.labels
            experiment.probabilities[(dataset, model)] = softmax(record.logits[0])
            experiment.labels[dataset] = record.labels
    if prepared_dir is not None and experiment.accuracy:
        experiment.prepared = _output_hashes(files, prepared_dir, {d for d, _ in runs})
    return experiment if experiment.accuracy else None


def _read_in(files: RevisionFiles, folder: str, relative: str) -> str | None:
    return files.read_text(f"{folder}/{relative}")


def _output_hashes(files: RevisionFiles, folder: str, datasets: set[str]) -> dict[str, str]:
    """The hash dvc.lock records for `<folder>/<dataset>` of each dataset (what the revision's
    stages made of it); datasets the lock does not name are left out."""
    text = files.read_text("dvc.lock")
    try:
        lock = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return {}
    found = {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    for stage in (stages or {}).values():
        for out in (stage.get("outs") or []) if isinstance(stage, dict) else []:
            if not isinstance(out, dict):
                continue
            dataset = str(out.get("path", "")).removeprefix(folder.rstrip("/") + "/")
            if dataset in datasets and out.get("md5"):
                found[dataset] = str(out["md5"])
    return found


def list_experiments(repo: Path, runs: list[Run], live_dir: str,
                     limit: int = 8, evaluation_dir: str | None = None,
                     prepared_dir: str | None = None) -> list[Experiment]:
    """The committed baseline and up to `limit` finished experiments with their results."""
    found = []
    for revision in list_revisions(repo, limit):
        experiment = read_revision(repo, revision.rev, revision.name, runs, live_dir,
                                   evaluation_dir, prepared_dir)
        if experiment is not None:
            experiment.committed, experiment.revision = revision.committed, revision.rev
            found.append(experiment)
    return found


def changed_params(experiment: Experiment, reference: dict[str, object]) -> dict[str, object]:
    """The parameters whose value differs from the reference (the committed ones). A dataset or
    model defined on one side only is one entry (`models.x`: "not defined" or "defined"), not
    one `None` per key."""
    changed: dict[str, object] = {}
    for key in sorted(set(experiment.params) | set(reference)):
        if key in experiment.params and key in reference:
            if experiment.params[key] != reference[key]:
                changed[key] = experiment.params[key]
            continue
        parts = key.split(".")
        group = ".".join(parts[:2]) if parts[0] in ("datasets", "models") else key
        changed[group] = "defined" if key in experiment.params else "not defined"
    return changed


def drift(workspace: Experiment, committed: Experiment) -> dict[str, tuple[object, object]]:
    """What the workspace changed from the commit, as key -> (committed value, workspace
    value); a dataset or model defined on one side only reads "not defined" on the other."""
    changes = {}
    for key, value in changed_params(workspace, committed.params).items():
        if key in committed.params:
            changes[key] = (committed.params[key], value)
        else:  # a whole group, or a key the commit lacks
            changes[key] = ("defined" if value == "not defined" else "not defined", value)
    return changes


def paired_correct(ours: Experiment, theirs: Experiment, run: Run
                   ) -> tuple[np.ndarray, np.ndarray, str] | str | None:
    """Which test images each of two runs got right, image by image: from both evaluation
    records, else from dvclive's per-image predictions in git, with the evidence's name; or
    why the two cannot be paired; None when a side has neither."""
    dataset = run[0]
    if dataset in ours.prepared and dataset in theirs.prepared \
            and ours.prepared[dataset] != theirs.prepared[dataset]:
        return "the prepared data differ (dvc.lock), so images are not compared one by one"
    mine, other = ours.correct.get(run), theirs.correct.get(run)
    if mine is not None and other is not None and mine.shape == other.shape:
        return mine, other, "evaluation records"
    mine_predicted, other_predicted = ours.predictions.get(run), theirs.predictions.get(run)
    if mine_predicted and other_predicted:
        if mine_predicted[0] != other_predicted[0]:
            return "their test labels differ, so images are not compared one by one"
        return (_right(mine_predicted), _right(other_predicted), "dvclive predictions")
    return None


@dataclass(frozen=True)
class Flips:
    """The test images (indices in the test split, from 0) one run got right and another wrong,
    both ways: McNemar's discordant cells, image by image."""

    fixed: np.ndarray   # wrong in the other run, right in this one
    broken: np.ndarray  # right in the other run, wrong in this one
    evidence: str       # what the pairing came from (`paired_correct`)


def flips(ours: Experiment, theirs: Experiment, run: Run) -> Flips | str | None:
    """What `ours` changed image by image against `theirs` for one run; or why the two cannot
    be paired, or None when a side has no per-image results (`paired_correct`)."""
    paired = paired_correct(ours, theirs, run)
    if not isinstance(paired, tuple):
        return paired
    mine, other, evidence = paired
    return Flips(np.flatnonzero(mine & ~other), np.flatnonzero(~mine & other), evidence)


def same_test_split(ours: Experiment, theirs: Experiment, dataset: str) -> bool:
    """Whether two runs tested on the same images in the same order: the same prepared data
    (dvc.lock) where both record it, else the same test labels (evaluation records, else
    dvclive's per-image predictions). False when neither can tell."""
    if dataset in ours.prepared and dataset in theirs.prepared:
        return ours.prepared[dataset] == theirs.prepared[dataset]
    if dataset in ours.labels and dataset in theirs.labels:
        return np.array_equal(ours.labels[dataset], theirs.labels[dataset])
    mine = next((p[0] for (d, _), p in ours.predictions.items() if d == dataset), None)
    other = next((p[0] for (d, _), p in theirs.predictions.items() if d == dataset), None)
    return mine is not None and mine == other


def suspected_label_errors(experiment: Experiment, dataset: str) -> set[int] | str | None:
    """The test images of `dataset` whose label the experiment's models jointly and confidently
    dispute (`evidence.label_issues` on their mean probabilities, as the report lists them);
    why they are not claimed as label errors when the models are not good enough to tell
    (`evidence.label_issue_doubt`); None without evaluation records to tell."""
    from pipeline.evidence import label_issue_doubt, label_issues

    probabilities = [p for (d, _), p in experiment.probabilities.items() if d == dataset]
    if not probabilities or dataset not in experiment.labels:
        return None
    mean, labels = np.mean(probabilities, axis=0), experiment.labels[dataset]
    doubt = label_issue_doubt(mean, labels)
    if doubt is not None:
        return doubt
    return {issue.index for issue in label_issues(mean, labels)}


def _right(predictions: tuple[list[str], list[str]]) -> np.ndarray:
    actual, predicted = predictions
    return np.array([a == p for a, p in zip(actual, predicted, strict=True)], bool)


def against_baseline(experiment: Experiment, committed: Experiment | None, run: tuple[str, str]
                     ) -> dict | None:
    """McNemar's exact test of an experiment's model against the committed one on the same test
    images (`paired_correct`): images only it / only the baseline got right, the p-value, and
    "better" / "worse" when p < evidence.ALPHA. None when the two cannot be paired."""
    from pipeline.evidence import ALPHA, mcnemar

    if committed is None or experiment is committed:
        return None
    paired = paired_correct(experiment, committed, run)
    if not isinstance(paired, tuple):
        return None
    mine, theirs, _ = paired
    only_mine, only_theirs, p_value = mcnemar(mine, theirs)
    verdict = None
    if p_value < ALPHA and only_mine != only_theirs:
        verdict = "better" if only_mine > only_theirs else "worse"
    return {"wins": (only_mine, only_theirs), "p_value": p_value, "verdict": verdict}


@dataclass
class ComparisonRow:
    """One run of the experiments comparison (the report's table, `pipeline-compare`'s)."""

    name: str
    changed: dict[str, object]   # the parameters it changed from the reference
    accuracy: dict[Run, float]
    tests: dict[Run, dict | None]  # McNemar against the commit's model (`against_baseline`)


def comparison_rows(every: list[Experiment], committed: Experiment | None, runs: list[Run],
                    reference: dict[str, object] | None) -> list[ComparisonRow]:
    """Each run's changed parameters (from `reference`; none without one), accuracies and
    McNemar tests against the committed model: what both comparisons show."""
    return [ComparisonRow(e.name, changed_params(e, reference) if reference is not None else {},
                          e.accuracy, {run: against_baseline(e, committed, run) for run in runs})
            for e in every]


def missing_comparisons(experiments: list[Experiment]) -> list[str]:
    """One line per experiment and reason: which runs could not be compared image by image (their
    evaluation records missing or damaged) and why; their accuracies and curves come from git."""
    lines = []
    for experiment in experiments:
        by_reason: dict[str, list[str]] = {}
        for (dataset, model), reason in experiment.missing.items():
            by_reason.setdefault(reason, []).append(f"{dataset}/{model}")
        for reason, runs in by_reason.items():
            lines.append(f"{experiment.name}: evaluation records of {', '.join(runs)} {reason}")
    return lines
