"""The DVC graph cannot go stale: every stage's deps are exactly the code it runs.

A stage runs `python -m pipeline.stages.X`; the modules that command imports (found with `ast`,
every import anywhere in a module, package `__init__`s included) are its import closure. Each
must be covered by the stage's `deps:` in dvc.yaml (a folder dep covers what is under it), and
no code dep may be listed that the stage does not run, so editing any module re-runs exactly
the stages that run it. No module outside tests/ imports a stage entry point.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_repository, dvc_status

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "pipeline"


def module_file(name: str) -> Path | None:
    """The file of a project module (`pipeline.x` -> pipeline/x.py or pipeline/x/__init__.py)."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Project modules a file imports, at the top or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
    return {name for name in found
            if name.split(".")[0] == PACKAGE and module_file(name) is not None}


def import_closure(module: str) -> set[Path]:
    """Every project file that running `python -m <module>` executes."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        todo.extend(imported_modules(module_file(name)))
    return {module_file(name).relative_to(ROOT) for name in seen}


def stage_definitions() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def stage_module(stage: dict) -> str:
    match = re.search(r"python3? -m ([\w.]+)", stage["cmd"])
    assert match, f"stage command does not run a module: {stage['cmd']}"
    return match.group(1)


def code_deps(stage: dict) -> list[Path]:
    """The deps that are project code (files and folders under pipeline/)."""
    return [Path(dep) for dep in stage.get("deps", []) if str(dep).startswith(f"{PACKAGE}/")]


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == dep or dep in path.parents for dep in deps)


@pytest.mark.parametrize("name", list(stage_definitions()))
def test_stage_deps_are_its_import_closure(name: str) -> None:
    stage = stage_definitions()[name]
    module = stage_module(stage)
    assert module.startswith(f"{PACKAGE}.stages."), f"{name}: runs {module}, not a stage module"
    closure = import_closure(module)
    deps = code_deps(stage)
    missing = sorted(str(p) for p in closure if not covered(p, deps))
    assert not missing, f"stage {name!r} runs {missing} but dvc.yaml does not list them as deps"
    extra = sorted(str(d) for d in deps
                   if d.suffix == ".py" and d not in closure)
    assert not extra, f"stage {name!r} lists {extra} as deps but never imports them"
    for folder in (d for d in deps if (ROOT / d).is_dir()):
        assert not any(p.suffix == ".py" for p in (ROOT / folder).rglob("*.py")), (
            f"stage {name!r}: folder dep {folder} holds code; list modules one by one")


def test_every_stage_module_is_a_stage() -> None:
    run = {stage_module(stage) for stage in stage_definitions().values()}
    modules = {f"{PACKAGE}.stages.{p.stem}" for p in (ROOT / PACKAGE / "stages").glob("*.py")
               if p.stem != "__init__"}
    assert modules == run


def test_nothing_imports_a_stage() -> None:
    offenders = []
    for path in [*ROOT.joinpath(PACKAGE).rglob("*.py"), *ROOT.joinpath("benchmarks").rglob("*.py")]:
        for name in imported_modules(path):
            if name.startswith(f"{PACKAGE}.stages.") and name != f"{PACKAGE}.stages":
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders


def test_closure_finds_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function counts."""
    closure = import_closure("pipeline.stages.evaluate")
    assert Path("pipeline/forward.py") in closure  # via pipeline.inference
    assert Path("pipeline/engine.py") not in closure  # evaluation runs without the training loop
    assert Path("pipeline/report.py") not in closure
    assert Path("pipeline/stages/__init__.py") in closure


# A file of each layer, and the stages whose work it is: the CSV parser is the prepare stage's,
# an architecture's torch code is training's and evaluation's, the training loop is
# training's, the report template is the report's.
EDITS = {
    "pipeline/ingest.py": {"prepare"},
    "pipeline/models.py": {"train", "evaluate"},
    "pipeline/engine.py": {"train"},
    "pipeline/templates/report.html.j2": {"report"},
}


def test_dvc_reruns_only_the_stages_an_edit_touches(tmp_path: Path) -> None:
    """What `dvc status` says after editing each file in a copy of the project: the stages
    that list it as changed are the ones whose work it is, not every stage that loads params."""
    copy_repository(tmp_path, keep_lock=True)
    for name, expected in EDITS.items():
        path = tmp_path / name
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        status = dvc_status(tmp_path)
        path.write_bytes(original)
        marked = {stage.split("@")[0] for stage, changes in status.items() for change in changes
                  if isinstance(change, dict) and any(
                      covered(Path(name), [Path(dep)]) for dep in change.get("changed deps", {}))}
        assert marked == expected, f"editing {name} marks {sorted(marked)} changed"


def test_editing_a_drawing_recipe_marks_only_the_report_changed(tmp_path: Path) -> None:
    """The recipes are inference's: no download, preparation or training depends on them."""
    copy_repository(tmp_path, keep_lock=True)
    params = tmp_path / "params.yaml"
    text = params.read_text()
    assert "    supersample: 4\n" in text
    params.write_text(text.replace("    supersample: 4\n", "    supersample: 2\n"))
    marked = {stage for stage, changes in dvc_status(tmp_path).items() for change in changes
              if isinstance(change, dict) and "params.yaml" in change.get("changed deps", {})}
    assert marked == {"report"}


if __name__ == "__main__":  # python -m tests.test_dvc_graph: each stage's closure, for dvc.yaml
    for stage_name, definition in stage_definitions().items():
        print(stage_name)
        for path in sorted(import_closure(stage_module(definition))):
            print(f"      - {path}")
