"""Stage report: render reports/index.html, one self-contained page comparing every model."""

from __future__ import annotations

import gc

if __name__ == "__main__":  # DVC's process: no collections while importing (see run_stage)
    gc.disable()

import argparse
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.params import load_params
from pipeline.report import Inputs, build_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--prepared", required=True, type=Path)
    parser.add_argument("--evaluation", required=True, type=Path)
    parser.add_argument("--live", required=True, type=Path, help="the train stage's dvclive "
                        "folders, <live>/<dataset>/<model>")
    parser.add_argument("--timing", required=True, type=Path,
                        help="the train stage's timing files, <timing>/<dataset>/<model>.json")
    parser.add_argument("--sweeps", required=True, type=Path,
                        help="pipeline-sweep's summaries, <sweeps>/<sweep>.json")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--run-script", required=True, type=Path,
                        help="sidecar script with what differs between runs (timings, git state, "
                             "experiments), written beside the page")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    inputs = Inputs(args.prepared, args.evaluation, args.live, args.timing, args.sweeps)
    sections = build_report(params, inputs, args.out, args.run_script,
                            Path(args.params).resolve().parent)
    for section in sections:
        best, verdict = section.best, section.evidence["verdict"]
        if verdict["best"] == best.name:
            print(f"{section.name}: best model {best.name} "
                  f"({best.summary.test_accuracy:.2%} test accuracy, "
                  f"{best.summary.params:,} parameters; significantly better than the "
                  "runner-up)")
        else:
            print(f"{section.name}: tied at the top: {', '.join(verdict['tied'])} (no "
                  f"significant difference; highest: {best.name}, "
                  f"{best.summary.test_accuracy:.2%})")
    print(f"report written to {args.out}")


if __name__ == "__main__":
    run_stage(main, sweep=True)
