"""The files that cannot import pipeline/layout.py agree with it and with dvc.yaml's folders:
dvc.yaml names the files inside its folders as the layout does, `.gitignore` ignores every
output folder git does not track, and `make clean` removes exactly those."""

from __future__ import annotations

import re
import subprocess

import yaml

from pipeline import layout
from tests.conftest import ROOT

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
FOLDERS: dict[str, str] = {name: path for entry in DVC_YAML["vars"]
                           for name, path in entry.items()}


def tracked(path: str) -> bool:
    listed = subprocess.run(["git", "ls-files", "--", path], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    return bool(listed.strip())


def ignored(path: str) -> bool:
    """Whether git ignores the file `path`, or what a folder `path` holds."""
    return any(subprocess.run(["git", "check-ignore", "-q", "--no-index", candidate],
                              cwd=ROOT).returncode == 0 for candidate in (path, f"{path}/x"))


def make_clean_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    (recipe,) = re.findall(r"^clean:.*\n\t(rm -rf [^\n]*)", text, flags=re.MULTILINE)
    return set(recipe.split()[2:])


def test_dvc_yaml_names_the_files_as_the_layout_does():
    text = (ROOT / "dvc.yaml").read_text(encoding="utf-8")
    for name in (layout.checkpoint_file("${item.model}"), layout.split_file("test"),
                 layout.timing_file("${item.model}")):
        assert name in text, f"dvc.yaml does not name {name} as pipeline/layout.py does"


def test_gitignore_and_make_clean_cover_every_output_folder_git_does_not_track():
    in_git = {name for name, path in FOLDERS.items() if tracked(path)}
    # the source records, dvclive's files and the sweeps' summaries
    assert in_git == {"sources", "live", "sweeps"}, in_git
    clean = make_clean_targets()
    for name, path in FOLDERS.items():
        if name in in_git:
            assert not ignored(path), f".gitignore ignores {path}, which git tracks"
            assert path not in clean, f"make clean removes {path}, which git tracks"
        else:
            assert ignored(path), f".gitignore does not ignore {path} (dvc.yaml `{name}`)"
            assert path in clean, f"make clean does not remove {path} (dvc.yaml `{name}`)"
    assert clean - set(FOLDERS.values()) == {"$(VENV)", "$(LOCK_VENV)", "dvc_plots"}
