"""Stage evaluate: run one trained model (every seed copy) on the test split, once, and store
everything the report draws about it."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.checkpoint import load_checkpoint
from pipeline.cli import run_stage
from pipeline.evaluation import save_evaluation
from pipeline.inference import evaluate
from pipeline.splits import load_split


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--test", required=True, type=Path, help="data/prepared/<dataset>/test.pkl")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint(args.checkpoint)
    evaluation = evaluate(checkpoint, load_split(args.test))
    save_evaluation(args.out, evaluation)
    accuracy = float((evaluation.logits[0].argmax(1) == evaluation.labels).mean())
    print(f"{checkpoint.dataset}/{checkpoint.model}: test accuracy {accuracy:.4f} over "
          f"{len(evaluation.labels):,} images, {len(evaluation.logits)} seed cop"
          f"{'y' if len(evaluation.logits) == 1 else 'ies'} -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
