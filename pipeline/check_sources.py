"""Ask the servers whether the files the run's datasets were downloaded from have changed.

    pipeline-check-sources --params params.yaml --sources data/sources

DVC's own `dvc update` does this for `dvc import-url`: it compares the ETag (else Last-Modified,
else the size, else a fresh hash) with what was recorded at download time. Here the records are
the `<label>.url.json` files the download stage keeps in `data/sources/<dataset>/`, a DVC
output: a file that changed upstream gets its record marked, so `dvc status` reports
`download@<dataset>` changed and `dvc repro` downloads it again and re-runs what follows.
Local files need no check: DVC hashes them through their links on every `dvc status`. Files
pinned by sha256 cannot change unnoticed and are not asked about.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.artifacts import read_json, write_json
from pipeline.params import load_params
from pipeline.sources import DownloadError, upstream_change

UPSTREAM = "upstream"  # the key a changed record gains
NOT_CHECKED = "not checked: "


def check_folder(folder: Path, dataset: str, settings) -> list[str]:
    """Check every downloaded file of one dataset; returns a line per file."""
    lines = []
    for path in sorted(folder.glob("*.url.json")):
        label = path.name.removesuffix(".url.json")
        record = read_json(path)
        if not isinstance(record, dict):
            lines.append(f"{dataset}.{label}: {NOT_CHECKED}{path} is not a source record; run "
                         "`dvc repro` to write it again")
            continue
        recorded = {k: v for k, v in record.items() if k != UPSTREAM}
        if recorded.get("pinned"):
            lines.append(f"{dataset}.{label}: pinned by sha256, nothing to check")
            continue
        try:
            reason = upstream_change(recorded, settings)
        except DownloadError as error:  # this file cannot be checked; the others still can
            lines.append(f"{dataset}.{label}: {NOT_CHECKED}{error}")
            continue
        updated = {**recorded, **({UPSTREAM: reason} if reason else {})}
        if updated != record:  # rewrite only on a change, so DVC sees exactly that
            write_json(path, updated)
        lines.append(f"{dataset}.{label}: " + (
            f"changed on the server ({reason}); `dvc repro` will download it again"
            if reason else "unchanged"))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--sources", required=True, type=Path,
                        help="the download stage's sources folder (data/sources in dvc.yaml)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    unchecked = 0
    for dataset in params.run.datasets:
        folder = args.sources / dataset
        if not folder.is_dir():
            print(f"{dataset}: not downloaded yet ({folder} is missing); run `dvc repro`")
            continue
        lines = check_folder(folder, dataset, params.download)
        print("\n".join(lines) if lines else f"{dataset}: no downloaded files to check")
        unchecked += sum(NOT_CHECKED in line for line in lines)
    if unchecked:
        raise DownloadError(f"{unchecked} downloaded file(s) could not be checked (see above)")


def cli() -> None:
    from pipeline.cli import run_stage

    run_stage(main)


if __name__ == "__main__":
    cli()
