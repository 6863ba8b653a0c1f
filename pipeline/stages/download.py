"""Stage download: fetch a dataset's files and leave them in data/raw/<dataset>/ as CSV."""

from __future__ import annotations

import gc

if __name__ == "__main__":  # DVC's process: no collections while importing (see run_stage)
    gc.disable()

import argparse
import sys
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.formats import materialise
from pipeline.params import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--dataset", required=True, help="name under `datasets:`")
    parser.add_argument("--out", required=True, type=Path, help="data/raw/<dataset>")
    parser.add_argument("--cache", required=True, type=Path, help="folder for verified downloads")
    parser.add_argument("--sources", required=True, type=Path,
                        help="folder of links to the dataset's local files, for DVC to hash")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    record = materialise(
        args.dataset,
        params.dataset(args.dataset),
        args.out,
        args.cache / args.dataset,
        params.download,
        sources_dir=args.sources,
        show_progress=sys.stderr.isatty(),
    )
    for file_name in record["files"]:
        size = (args.out / file_name).stat().st_size
        print(f"{args.dataset}: wrote {args.out / file_name} ({size:,} bytes)")


if __name__ == "__main__":
    run_stage(main, sweep=True)
