"""Experiments x models in the terminal: test accuracy, and whether each experiment's model is
significantly better or worse than the committed one on the same test images.

    pipeline-compare

`dvc exp show` lists every metric of every model under its full file path; this prints one
compact table: a row per run (the commit, every finished experiment `dvc exp show` lists, the
workspace), the parameters it changed from the commit, and per dataset/model the test accuracy
with McNemar's exact test against the commit's model (+ better, - worse, = no significant
difference at p < evidence.ALPHA), the same marks as the report's Experiments section.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import experiments
from pipeline.evidence import ALPHA
from pipeline.params import load_params
from pipeline.revisions import dvc_yaml_paths

MARKS = {"better": "+", "worse": "-", None: "="}


def read_runs(repo: Path, runs: list[tuple[str, str]], live: str, evaluation: str,
              prepared: str) -> list[experiments.Experiment]:
    """The commit, every finished experiment and the workspace, in that order."""
    found = experiments.list_experiments(repo, runs, live, limit=1000, evaluation_dir=evaluation,
                                         prepared_dir=prepared)
    workspace = experiments.read_revision(repo, None, "workspace", runs, live, evaluation,
                                          prepared)
    return [*found, *([workspace] if workspace is not None else [])]


def rows(every: list[experiments.Experiment], runs: list[tuple[str, str]]) -> list[list[str]]:
    committed = next((e for e in every if e.committed), None)
    table = [["run", "changed from the commit", *(f"{d}/{m}" for d, m in runs)]]
    for row in experiments.comparison_rows(every, committed, runs,
                                           committed.params if committed else None):
        cells = []
        for key in runs:
            accuracy, test = row.accuracy.get(key), row.tests[key]
            mark = f" {MARKS[test['verdict']]}" if test else ""
            cells.append("-" if accuracy is None else f"{100 * accuracy:.2f}%{mark}")
        shown = ", ".join(f"{k}={experiments.param_text(v)}" for k, v in row.changed.items())
        table.append([row.name, shown or "-", *cells])
    return table


def render(table: list[list[str]], max_changed: int = 48) -> str:
    clipped = [[row[0], row[1] if len(row[1]) <= max_changed else row[1][: max_changed - 1] + "…",
                *row[2:]] for row in table]
    widths = [max(len(row[i]) for row in clipped) for i in range(len(clipped[0]))]
    lines = ["  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in clipped]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    params = load_params(args.params)
    repo = args.params.resolve().parent
    live, evaluation, prepared = dvc_yaml_paths(repo, "live", "evaluation", "prepared")
    runs = [(d, m) for d in params.run.datasets for m in params.run.models]
    every = read_runs(repo, runs, live, evaluation, prepared)
    print(render(rows(every, runs)))
    print("\n+ / - : significantly better / worse than the commit's model on the same test "
          f"images (McNemar's exact test, p < {ALPHA}); = : no significant difference")
    missing = experiments.missing_comparisons(every)
    if missing:
        print("\nEvaluation records missing (the marks then come from dvclive's per-image "
              "predictions in git):")
        for line in missing:
            print(f"  {line}")


def cli() -> None:
    from pipeline.cli import run_stage

    run_stage(main)


if __name__ == "__main__":
    cli()
