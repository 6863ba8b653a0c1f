"""Stage evaluate: run every trained model of one dataset (every seed copy) on its test split,
once, and store everything the report draws about each. One process for all of a dataset's
models: the start-up (Python, torch, scikit-learn) was most of a per-model stage's time."""

from __future__ import annotations

import gc

if __name__ == "__main__":  # DVC's process: no collections while importing (see run_stage)
    gc.disable()

import argparse
from pathlib import Path

import torch

from pipeline.artifacts import fresh_directory
from pipeline.checkpoint import load_checkpoint
from pipeline.cli import run_stage
from pipeline.cores import threads_for
from pipeline.evaluation import save_evaluation
from pipeline.inference import evaluate
from pipeline.layout import checkpoint_file, evaluation_file
from pipeline.params import load_params
from pipeline.splits import load_split


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--checkpoints", required=True, type=Path,
                        help="the dataset's checkpoint folder: <model>.pt for each run.models")
    parser.add_argument("--test", required=True, type=Path, help="data/prepared/<dataset>/test.pkl")
    parser.add_argument("--out", required=True, type=Path,
                        help="the dataset's evaluation folder: <model>.pkl for each model")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    models = params.run.models
    torch.set_num_threads(threads_for(params.execution.threads))
    test = load_split(args.test)
    with fresh_directory(args.out) as staging:
        for model in models:
            checkpoint = load_checkpoint(args.checkpoints / checkpoint_file(model))
            evaluation = evaluate(checkpoint, test, torch.get_num_threads())
            save_evaluation(staging / evaluation_file(model), evaluation)
            accuracy = float((evaluation.logits[0].argmax(1) == evaluation.labels).mean())
            copies = len(evaluation.logits)
            print(f"{checkpoint.dataset}/{checkpoint.model}: test accuracy {accuracy:.4f} over "
                  f"{len(evaluation.labels):,} images, {copies} seed cop"
                  f"{'y' if copies == 1 else 'ies'}")
    print(f"evaluations written to {args.out}")


if __name__ == "__main__":
    run_stage(main, sweep=True)
