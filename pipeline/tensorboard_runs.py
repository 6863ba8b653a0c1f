"""Put the TensorBoard logs of the workspace and of every experiment side by side.

    pipeline-tensorboard            # then: tensorboard --logdir reports/tensorboard-runs

With `execution.tensorboard: true` the train stage writes `<dataset>/<model>/seed<k>/` event logs
into its TensorBoard folder, a DVC output: every `dvc exp run` (in the workspace or queued) keeps
its own copy in DVC's cache, and the workspace holds only the latest. This gathers the
workspace's logs, the committed baseline's and those of every finished experiment
`dvc exp show` lists into one folder, one TensorBoard run per experiment, dataset, model and
seed (`exp-1a2b3/digits/cnn/seed42`), so its run selector and HParams tab compare them. Both
folders are the `tensorboard` and `tensorboard_runs` entries of dvc.yaml's `vars`; the gathered
folder is rebuilt whole on every call and is not tracked.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from pipeline.artifacts import fresh_directory
from pipeline.errors import PipelineError
from pipeline.revisions import RevisionFiles, dvc_yaml_paths, list_revisions

WORKSPACE = "workspace"
NOTE_FILE = "README.txt"  # the train stage's note in every model folder; not a log


def _run_name(name: str) -> str:
    """A revision's name as one folder name: `main (committed)` -> `main-committed`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


def _copy_workspace(source: Path, target: Path) -> int:
    copied = 0
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.name != NOTE_FILE:
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
            copied += 1
    return copied


def _copy_revision(repo: Path, rev: str, source: str, target: Path) -> int | str:
    """The event logs of one revision, read from DVC's cache: how many were copied, or why
    they could not be read."""
    files = RevisionFiles(repo, rev)
    found = files.find(source)
    if found is None:
        return f"not readable: {files.missing[source]}"
    copied = 0
    for path in found:
        relative = path[len(source):].lstrip("/")
        if not relative or relative.rsplit("/", 1)[-1] == NOTE_FILE:
            continue
        data = files.read_bytes(path)
        if data is None:
            return f"not readable: {relative} {files.missing[path]}"
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)
        copied += 1
    return copied


def gather(repo: Path, source: str, out: Path) -> dict[str, int | str]:
    """Rebuild `out` with one folder per revision; returns the event files copied per run
    name, or why a revision's logs could not be read."""
    result: dict[str, int | str] = {}
    with fresh_directory(out) as staging:
        result[WORKSPACE] = _copy_workspace(repo / source, staging / WORKSPACE)
        for revision in list_revisions(repo):
            name = _run_name(revision.name)
            result[name] = _copy_revision(repo, revision.rev, source, staging / name)
            if isinstance(result[name], str):
                shutil.rmtree(staging / name, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the project root")
    args = parser.parse_args(argv)

    source, out = dvc_yaml_paths(args.repo, "tensorboard", "tensorboard_runs")
    result = gather(args.repo, source, args.repo / out)
    for name, copied in result.items():
        print(f"{name}: " + (f"{copied} event files" if isinstance(copied, int) else copied))
    if not any(isinstance(c, int) and c for c in result.values()):
        raise PipelineError("no TensorBoard logs in the workspace or any experiment: they are "
                            "written by trainings run with execution.tensorboard true, e.g. "
                            "`dvc exp run --force -S execution.tensorboard=true`")
    print(f"tensorboard --logdir {out}")


def cli() -> None:
    from pipeline.cli import run_stage

    run_stage(main)


if __name__ == "__main__":
    cli()
