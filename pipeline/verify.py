"""Did this workspace reproduce a revision's results? One verdict per dataset x model.

    pipeline-verify                 # against the committed results (HEAD)
    pipeline-verify --rev v1.0      # against any revision: a tag of a published result, a branch
    pipeline-verify --json

Each model is *reproduced* (its accuracy difference is shown to lie inside the margin),
*differs* (shown to lie outside it) or *inconclusive* (the test set is too small to tell), from
the strongest evidence both sides have (pipeline/reproduction.py): per-image predictions from
the evaluation records or from dvclive's files in git, else the seed means or the accuracies.
The margin is `verify.margin` in params.yaml, widened by the reference model's seed spread.
Exits 0 when no model differs, 1 when one does (a CI gate), 2 when it cannot tell: the
workspace's results are stale (`dvc status` lists a stage; run `dvc repro` first), or the
revision is unknown or has no results.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from pipeline import experiments, reproduction
from pipeline.errors import PipelineError
from pipeline.machine import describe
from pipeline.params import load_params
from pipeline.revisions import commit_of, dvc_yaml_paths, stale_stages

REPORT_STAGE = "report"  # reads the results; a stale report leaves them current
EXIT_DIFFERS, EXIT_ERROR = 1, 2


def table(verdicts: list[reproduction.Verdict]) -> str:
    header = ["dataset/model", "verdict", "difference [interval]", "margin", "evidence"]
    rows = [header]
    for v in verdicts:
        interval = ("-" if math.isnan(v.difference) else
                    f"{v.difference:+.2f} pts [{v.low:+.2f}, {v.high:+.2f}] {v.level:.0%}")
        rows.append([f"{v.dataset}/{v.model}", v.verdict, interval, f"±{v.margin:.2f}",
                     v.evidence])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--rev", default="HEAD",
                        help="the revision whose results to compare with (default: HEAD)")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    repo = args.params.resolve().parent
    live, evaluation, prepared = dvc_yaml_paths(repo, "live", "evaluation", "prepared")
    runs = [(d, m) for d in params.run.datasets for m in params.run.models]
    commit = commit_of(repo, args.rev)
    stale = [s for s in stale_stages(repo) if s != REPORT_STAGE]
    if stale:
        shown = ", ".join(stale[:4]) + (f" and {len(stale) - 4} more" if len(stale) > 4 else "")
        raise PipelineError(f"the workspace's results are not those of its code, params and "
                            f"data (`dvc status`: {shown} changed or not run); run `dvc repro` "
                            "(or `dvc exp run`) first, then verify")
    ours = experiments.read_revision(repo, None, "workspace", runs, live, evaluation, prepared)
    if ours is None:
        raise PipelineError(f"the workspace has no results under {live}; run `dvc repro` first")
    reference = commit[:7] if commit.startswith(args.rev) else f"{args.rev} ({commit[:7]})"
    theirs = experiments.read_revision(repo, commit, reference, runs, live, evaluation,
                                       prepared, strict=True)
    if theirs is None:
        wanted = ", ".join(f"{d}/{m}" for d, m in runs)
        raise PipelineError(f"revision {reference} has no results for {wanted} under {live}; "
                            "compare with a revision that has them")
    verdicts = reproduction.compare(ours, theirs, runs, params.verify)
    missing = experiments.missing_comparisons([theirs, ours])
    failed = any(v.verdict == reproduction.DIFFERS for v in verdicts)
    if args.json:
        print(json.dumps({"reference": reference, "commit": commit,
                          "verdicts": [v.as_dict() for v in verdicts],
                          "evaluation_records_missing": missing}, indent=1))
    else:
        machines = sorted({describe(m) for m in theirs.made_on.values()})
        print(f"this workspace vs {reference}"
              + (f", made on {'; '.join(machines)}" if machines else ""))
        print(table(verdicts))
        print()
        for v in verdicts:
            print(f"{v.dataset}/{v.model}: {v.verdict}: {v.reason}")
        if missing:
            print("\nNot compared from the evaluation records (dvclive's files in git used):")
            for line in missing:
                print(f"  {line}")
        counts = {name: sum(v.verdict == name for v in verdicts)
                  for name in reproduction.VERDICTS}
        print("\n" + ", ".join(f"{count} {name}" for name, count in counts.items()))
    if failed:
        sys.exit(EXIT_DIFFERS)


def cli() -> None:
    from pipeline.cli import run_stage

    run_stage(main, error_status=EXIT_ERROR)


if __name__ == "__main__":
    cli()
