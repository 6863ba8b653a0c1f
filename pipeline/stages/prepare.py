"""Stage prepare: clean and split one dataset into pickled uint8 arrays."""

from __future__ import annotations

import gc

if __name__ == "__main__":  # DVC's process: no collections while importing (see run_stage)
    gc.disable()

import argparse
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.params import load_params
from pipeline.preparation import prepare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--raw", required=True, type=Path, help="data/raw/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="data/prepared/<dataset>")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    quality = prepare(args.raw, args.out, params.dataset(args.dataset), params.prepare)
    sizes = ", ".join(f"{k} {v:,}" for k, v in quality["split_sizes"].items())
    dropped = sum(f["rows_dropped"] for f in quality["files"].values())
    print(f"{args.dataset}: {sizes} rows; {dropped} bad rows dropped -> {args.out}")


if __name__ == "__main__":
    run_stage(main, sweep=True)
