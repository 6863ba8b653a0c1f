"""Experiments x models in the terminal: test accuracy, and whether each experiment's model is
significantly better or worse than the committed one on the same test images.

    pipeline-compare            the table
    pipeline-compare --flips    and, per experiment and model, the test images it fixed and broke

`dvc exp show` lists every metric of every model under its full file path; this prints one
compact table: a row per run (the commit, every finished experiment `dvc exp show` lists, the
workspace), the parameters it changed from the commit, and per dataset/model the test accuracy
with McNemar's exact test against the commit's model (+ better, - worse, = no significant
difference at p < evidence.ALPHA), the same marks as the report's Experiments section. A row
shows only the models its own params.yaml ran; a model one experiment added gets a column.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import experiments
from pipeline.errors import PipelineError
from pipeline.evidence import ALPHA
from pipeline.params import load_params
from pipeline.revisions import (
    dvc_yaml_paths,
    experiments_of_other_commits,
    stages_not_made_here,
)

MARKS = {"better": "+", "worse": "-", None: "="}
WORKSPACE = "workspace"
REPORT_STAGE = "report"  # reads the results; a stale report leaves them current


def read_runs(repo: Path, runs: list[tuple[str, str]], live: str, evaluation: str,
              prepared: str) -> list[experiments.Experiment]:
    """The commit, every finished experiment and the workspace, in that order."""
    found = experiments.list_experiments(repo, runs, live, limit=1000, evaluation_dir=evaluation,
                                         prepared_dir=prepared)
    workspace = experiments.read_revision(repo, None, WORKSPACE, runs, live, evaluation,
                                          prepared)
    return [*found, *([workspace] if workspace is not None else [])]


def rows(every: list[experiments.Experiment], runs: list[tuple[str, str]],
         stale: bool = False) -> list[list[str]]:
    """The table: a header, then a row per run; the workspace's name says when its outputs are
    not those of its params and code (`stale`)."""
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
        name = f"{row.name} (stale*)" if stale and row.name == WORKSPACE else row.name
        table.append([name, shown or "-", *cells])
    return table


def render(table: list[list[str]], max_changed: int = 48) -> str:
    clipped = [[row[0], row[1] if len(row[1]) <= max_changed else row[1][: max_changed - 1] + "…",
                *row[2:]] for row in table]
    widths = [max(len(row[i]) for row in clipped) for i in range(len(clipped[0]))]
    lines = ["  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in clipped]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def stale_note(repo: Path) -> str | None:
    """Why the workspace row's results are not its params' (`dvc status` names stages whose
    code, params or data changed since they ran, or whose outputs were replaced), or None
    when they are."""
    try:
        stale = [stage for stage in stages_not_made_here(repo) if stage != REPORT_STAGE]
    except PipelineError as error:
        return f"* {error}"
    if not stale:
        return None
    shown = ", ".join(stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
    return ("* stale: the workspace's results were not made from its params.yaml and code "
            f"(`dvc status`: {shown} changed or replaced since): its row mixes what the last "
            "run left with what was checked out since (an experiment's results after `git "
            "checkout -- params.yaml`, or its outputs after `git checkout -- .` alone). "
            "`dvc checkout` restores the outputs dvc.lock names, `dvc repro` makes them.")


def flips_report(every: list[experiments.Experiment], runs: list[tuple[str, str]],
                 shown: int) -> list[str]:
    """Per experiment (and the workspace) and model: the test images it fixed (wrong in the
    commit, right here) and broke, with the labels and both predictions where dvclive's files
    have them; images the workspace's models flag as suspected label errors are marked."""
    committed = next((e for e in every if e.committed), None)
    if committed is None:
        return ["No committed results to compare with: commit a run first."]
    workspace = next((e for e in every if e.name == WORKSPACE), None)
    suspects = {d: experiments.suspected_label_errors(workspace, d) if workspace else None
                for d in dict(runs)}
    flagged = []
    for dataset, suspected in suspects.items():
        if suspected is None:
            flagged.append(f"{dataset}: suspected label errors are not marked, the workspace's "
                           "evaluation records are not here (`dvc repro` or `dvc pull` brings "
                           "them)")
        elif isinstance(suspected, str):
            flagged.append(f"{dataset}: no image is marked as a suspected label error: {suspected}")
        else:
            flagged.append(f"{dataset}: '!' marks a suspected label error (the workspace's "
                           "models dispute the label, as in the report)")
    lines = [f"Test images each run fixed (wrong in {committed.name}, right in the run) and broke "
             "(right there, wrong here). Numbers are positions in the test split, counting from "
             "0 (the order of the evaluate stage's records and dvclive's confusion file).",
             *(f"{line}." for line in flagged)]
    for experiment in every:
        if experiment is committed:
            continue
        lines.append(f"\n{experiment.name} vs {committed.name}")
        for run in runs:
            if run not in experiment.accuracy:
                continue
            label = f"  {run[0]}/{run[1]}"
            if run not in committed.accuracy:
                lines.append(f"{label}: the commit did not train it; nothing to compare")
                continue
            found = experiments.flips(experiment, committed, run)
            if not isinstance(found, experiments.Flips):
                lines.append(f"{label}: not compared image by image: "
                             f"{found or 'a side has no per-image results'}")
                continue
            lines.append(f"{label}: {len(found.fixed)} fixed, {len(found.broken)} broken "
                         f"(from the {found.evidence})")
            for what, images in (("fixed", found.fixed), ("broke", found.broken)):
                if len(images):
                    marks = suspects[run[0]] if workspace is not None and \
                        experiments.same_test_split(experiment, workspace, run[0]) else None
                    described = [_image(i, experiment, committed, run, marks)
                                 for i in images[:shown]]
                    more = f", and {len(images) - shown} more" if len(images) > shown else ""
                    lines.append(f"    {what}: {', '.join(described)}{more}")
    return lines


def _image(index: int, ours: experiments.Experiment, theirs: experiments.Experiment,
           run: tuple[str, str], suspects: set[int] | str | None) -> str:
    mine, other = ours.predictions.get(run), theirs.predictions.get(run)
    text = f"#{index}"
    if mine and other and index < len(mine[0]):
        text += f" ({mine[0][index]}: was {other[1][index]}, now {mine[1][index]})"
    return text + (" !" if isinstance(suspects, set) and index in suspects else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--flips", action="store_true",
                        help="also list, per experiment and model, the test images it fixed "
                             "and broke against the commit")
    parser.add_argument("--shown", type=int, default=20, metavar="N",
                        help="with --flips: at most N images per list (default 20)")
    args = parser.parse_args(argv)
    if args.shown < 1:
        parser.error(f"--shown must be at least 1 (got {args.shown})")

    params = load_params(args.params)
    repo = args.params.resolve().parent
    live, evaluation, prepared = dvc_yaml_paths(repo, "live", "evaluation", "prepared")
    runs = [(d, m) for d in params.run.datasets for m in params.run.models]
    every = read_runs(repo, runs, live, evaluation, prepared)
    columns = experiments.all_runs(every, runs)
    stale = stale_note(repo) if any(e.name == WORKSPACE for e in every) else None
    print(render(rows(every, columns, stale=stale is not None)))
    print("\n+ / - : significantly better / worse than the commit's model on the same test "
          f"images (McNemar's exact test, p < {ALPHA}); = : no significant difference; "
          "- in place of a figure: that run did not train the model")
    if stale:
        print(stale)
    older = experiments_of_other_commits(repo)
    if older:
        print(f"{older} experiment{'s' if older > 1 else ''} of other commits not shown "
              "(`dvc exp show -A` lists them; `git checkout` their commit to compare them here)")
    missing = experiments.missing_comparisons(every)
    if missing:
        print("\nEvaluation records missing (the marks then come from dvclive's per-image "
              "predictions in git):")
        for line in missing:
            print(f"  {line}")
    if args.flips:
        print("\n" + "\n".join(flips_report(every, columns, args.shown)))


def cli() -> None:
    from pipeline.cli import run_stage

    run_stage(main)


if __name__ == "__main__":
    cli()
