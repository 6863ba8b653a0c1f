"""The experiments DVC knows, read for the report's comparison section.

`dvc.api.exp_show` lists the committed baseline and the `dvc exp run` experiments derived from it;
each one's params.yaml and dvclive files (committed to git, see dvc.yaml) are then read at its
revision through `dvc.api.DVCFileSystem`. DVC releases its repository lock while a stage's command
runs, so the report stage can call its API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from pipeline import tracking
from pipeline.artifacts import ArtifactError, load_foreign_arrays
from pipeline.errors import PipelineError
from pipeline.params import ParamsError, parse_params

FINISHED = (None, "Success")  # exp_show's State of a usable row; queued/running/failed are not


@dataclass
class Experiment:
    name: str
    params: dict[str, object]  # flattened: "train.lr" -> 0.02
    accuracy: dict[tuple[str, str], float] = field(default_factory=dict)  # (dataset, model)
    histories: dict[tuple[str, str], list[tracking.EpochRow]] = field(default_factory=dict)
    # per (dataset, model): which test images the model got right, from its evaluation
    correct: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    committed: bool = False  # the baseline commit, not an experiment
    revision: str = ""       # the git revision it was read at (a branch name for the baseline)


def dvc_yaml_paths(repo: Path, *names: str) -> list[str]:
    """Entries of dvc.yaml's `vars` (where the project's paths are set)."""
    try:
        document = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise PipelineError(f"{repo / 'dvc.yaml'}: cannot be read ({error}); run this from "
                            "the project root") from error
    found: dict[str, object] = {}
    for entry in document.get("vars") or []:
        if isinstance(entry, dict):
            found.update(entry)
    missing = [n for n in names if not isinstance(found.get(n), str)]
    if missing:
        raise PipelineError(f"{repo / 'dvc.yaml'}: `vars` has no path for {', '.join(missing)}")
    return [str(found[n]) for n in names]


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
    try:
        return flatten(parse_params(raw).model_dump(mode="json"))
    except ParamsError:  # written under an older schema: compare what is there
        return flatten(raw)


def read_revision(repo: Path, revision: str, name: str, runs: list[tuple[str, str]],
                  live_dir: str, evaluation_dir: str | None = None) -> Experiment | None:
    """One revision's params, test accuracies and curves; None if it has no usable run."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(repo), rev=revision)

    def read(path: str) -> str | None:
        try:
            return fs.read_text(path, encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError):
            return None

    params_text = read("params.yaml")
    if params_text is None:
        return None
    experiment = Experiment(name, normalised_params(yaml.safe_load(params_text) or {}))
    for dataset, model in runs:
        run_dir = f"{live_dir}/{dataset}/{model}"
        summary = read(f"{run_dir}/{tracking.METRICS_FILE}")
        try:
            source = f"{revision}:{run_dir}"
            accuracy = (tracking.parse_summary(summary, source).test_accuracy
                        if summary else None)
            history = tracking.parse_history(lambda rel, d=run_dir: read(f"{d}/{rel}"),
                                             source)
        except (ValueError, KeyError, TypeError, ArtifactError):  # older layout or damaged
            continue
        if isinstance(accuracy, (int, float)):
            experiment.accuracy[(dataset, model)] = accuracy
            experiment.histories[(dataset, model)] = history
        if evaluation_dir is not None:
            correct = _read_correct(fs, f"{evaluation_dir}/{dataset}/{model}.pkl",
                                    f"{revision}:{evaluation_dir}")
            if correct is not None:
                experiment.correct[(dataset, model)] = correct
    return experiment if experiment.accuracy else None


@dataclass(frozen=True)
class Revision:
    name: str      # as the report and TensorBoard show it
    rev: str       # what git and `dvc.api.DVCFileSystem` resolve
    committed: bool


def list_revisions(repo: Path, limit: int | None = None) -> list[Revision]:
    """The committed baseline and up to `limit` finished experiments derived from it, as
    `dvc exp show` lists them; empty outside a git/DVC repository or before the first commit."""
    import dvc.api
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    try:
        rows = dvc.api.exp_show(repo=str(repo))
    except (DvcException, SCMError, OSError):
        return []
    baselines = [r for r in rows if r["typ"] == "baseline" and r["rev"] != "workspace"]
    children = [r for r in rows if r["typ"] != "baseline" and r.get("Experiment")
                and r.get("State") in FINISHED][:limit]
    return ([Revision(f"{r['rev']} (committed)", r["rev"], True) for r in baselines[:1]]
            + [Revision(r["Experiment"], r["rev"], False) for r in children])


def _read_correct(fs, path: str, source: str) -> np.ndarray | None:
    """Which test images a revision's model got right, from its evaluation record (a DVC
    output, read from the cache); None when it is not there (not pulled, older layout)."""
    from dvc.exceptions import DvcException

    try:
        record = load_foreign_arrays(fs.read_bytes(path), source)
        return np.asarray(record["logits"][0]).argmax(1) == np.asarray(record["labels"])
    except (FileNotFoundError, IsADirectoryError, DvcException, ArtifactError, KeyError,
            IndexError, TypeError, ValueError, OSError):
        return None


def list_experiments(repo: Path, runs: list[tuple[str, str]], live_dir: str,
                     limit: int = 8, evaluation_dir: str | None = None) -> list[Experiment]:
    """The committed baseline and up to `limit` finished experiments with their results."""
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    found = []
    for revision in list_revisions(repo, limit):
        try:
            experiment = read_revision(repo, revision.rev, revision.name, runs, live_dir,
                                       evaluation_dir)
        except (DvcException, SCMError, OSError):
            continue
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


def against_baseline(experiment: Experiment, committed: Experiment | None, run: tuple[str, str]
                     ) -> dict | None:
    """McNemar's exact test of an experiment's model against the committed one on the same test
    images: images only it / only the baseline got right, the p-value, and "better" / "worse"
    when p < 0.05. None when either side's predictions are missing or differ in test set."""
    from pipeline.evidence import ALPHA, mcnemar

    if committed is None or experiment is committed:
        return None
    mine, theirs = experiment.correct.get(run), committed.correct.get(run)
    if mine is None or theirs is None or mine.shape != theirs.shape:
        return None
    only_mine, only_theirs, p_value = mcnemar(mine, theirs)
    verdict = None
    if p_value < ALPHA and only_mine != only_theirs:
        verdict = "better" if only_mine > only_theirs else "worse"
    return {"wins": (only_mine, only_theirs), "p_value": p_value, "verdict": verdict}
