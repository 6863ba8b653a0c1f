"""The experiments DVC knows, read for the report's comparison section.

`dvc exp run` stores each experiment as a git commit under `refs/exps/...`; since this project
commits params.yaml, reports/metrics and reports/history to git, every experiment's parameters,
metrics and learning curves can be read straight from that commit with `git show`, which works
while `dvc repro` holds its lock (calling `dvc exp show` from inside a stage would not).
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.params import ParamsError, parse_params

# refs/exps/<first 2 hex of the baseline commit>/<other 38>/<experiment name>; DVC keeps its own
# bookkeeping refs (refs/exps/exec/...) beside them
EXPERIMENT_REF = re.compile(r"^refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+$")


@dataclass
class Experiment:
    name: str
    params: dict[str, object]  # flattened: "train.lr" -> 0.02
    accuracy: dict[tuple[str, str], float] = field(default_factory=dict)  # (dataset, model)
    histories: dict[tuple[str, str], list[dict]] = field(default_factory=dict)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _git(repo: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def normalised_params(raw: dict) -> dict[str, object]:
    """Flattened params with the schema's defaults filled in, so revisions compare fairly."""
    try:
        return flatten(parse_params(raw).model_dump(mode="json"))
    except ParamsError:  # written under an older schema: compare what is there
        return flatten(raw)


def _history(text: str) -> list[dict]:
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(io.StringIO(text))]


def read_revision(repo: Path, revision: str, name: str, runs: list[tuple[str, str]],
                  metrics_dir: str, history_dir: str) -> Experiment | None:
    params_text = _git(repo, "show", f"{revision}:params.yaml")
    if params_text is None:
        return None
    experiment = Experiment(name, normalised_params(yaml.safe_load(params_text) or {}))
    for dataset, model in runs:
        metrics = _git(repo, "show", f"{revision}:{metrics_dir}/{dataset}/{model}.json")
        history = _git(repo, "show", f"{revision}:{history_dir}/{dataset}/{model}.csv")
        if metrics is not None:
            experiment.accuracy[(dataset, model)] = json.loads(metrics)["test_accuracy"]
        if history is not None:
            experiment.histories[(dataset, model)] = _history(history)
    return experiment if experiment.accuracy else None


def list_experiments(repo: Path, runs: list[tuple[str, str]], metrics_dir: str,
                     history_dir: str, limit: int = 8) -> list[Experiment]:
    """The committed baseline (HEAD) and the newest `limit` experiments, newest first."""
    found: list[Experiment] = []
    head = read_revision(repo, "HEAD", "HEAD (committed)", runs, metrics_dir, history_dir)
    if head is not None:
        found.append(head)
    refs = _git(repo, "for-each-ref", "--sort=-committerdate", "--format=%(refname)",
                "refs/exps") or ""
    for ref in [line for line in refs.splitlines() if EXPERIMENT_REF.match(line)][:limit]:
        experiment = read_revision(repo, ref, ref.rsplit("/", 1)[-1], runs, metrics_dir,
                                   history_dir)
        if experiment is not None:
            found.append(experiment)
    return found


def changed_params(experiment: Experiment, reference: dict[str, object]) -> dict[str, object]:
    """The parameters whose value differs from the reference (the workspace's)."""
    keys = set(experiment.params) | set(reference)
    return {key: experiment.params.get(key) for key in sorted(keys)
            if experiment.params.get(key) != reference.get(key)}
