"""The README's Experiments section, run as written in a temp clone (small epochs)."""

from __future__ import annotations

import re

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.experiments import changed_params, list_experiments, param_text
from tests.conftest import ROOT, copy_repository, run_slots, sh

pytestmark = pytest.mark.e2e

RUNS = [("digits", "cnn")]


def readme_block(heading: str) -> list[str]:
    """The command lines of the first ```bash block under a README heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(f"\n## {heading}\n"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"no bash block under '## {heading}'"
    return [line for line in block.group(1).splitlines() if line.strip()]


def plain(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", "", html).split())


def test_the_experiments_section_runs_as_written(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repository(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["run"] = {"datasets": ["digits"], "models": ["cnn"]}
    params["train"]["epochs"] = 1           # small epochs; the README sets 3 in one experiment
    params["models"]["cnn"]["seeds"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "config", "user.name", "readme"], repo)
    sh(["git", "config", "user.email", "readme@example.org"], repo)
    sh(["dvc", "repro"], repo)
    sh(["bash", "-c", "git add -A && git commit -qm baseline"], repo)  # as the README says

    outputs = {}
    for line in readme_block("Experiments"):
        command = line
        if "<" in command:  # placeholders: the experiments made so far
            found = list_experiments(repo, RUNS, "reports/live", limit=100)[1:]
            best = max(found, key=lambda e: e.accuracy[RUNS[0]])
            command = (command.replace("<exp-a>", found[0].name)
                       .replace("<exp-b>", found[1].name).replace("<best-exp>", best.name))
        outputs[line] = sh(["bash", "-c", command], repo)
        if line.startswith("dvc exp run -S train.epochs=3"):
            # the report makes the changed workspace obvious
            assert "train.epochs=3 (committed 1)" in plain(run_slots(repo)["drift"])

    found = list_experiments(repo, RUNS, "reports/live", limit=100)
    committed, experiments = found[0], found[1:]
    assert committed.committed and committed.params["train.epochs"] == 1
    def canonical(change: dict) -> str:
        return str(sorted(change.items()))

    changes = sorted((changed_params(e, committed.params) for e in experiments), key=canonical)
    # each experiment changed only what its command set: no value leaked from the one before
    assert changes == sorted([
        {"train.epochs": 3},
        {"models.cnn.train.lr": 0.003, "train.batch_size": 64},
        *({"models.cnn.train.lr": lr, "execution.tensorboard": True} for lr in (0.01, 0.02, 0.1)),
    ], key=canonical)

    # the terminal comparison: a row per run, accuracy with a McNemar mark against the commit
    compared = next(out for line, out in outputs.items() if line.startswith("pipeline-compare"))
    for experiment in experiments:
        row = next(line for line in compared.splitlines() if line.startswith(experiment.name))
        assert re.search(r"\d+\.\d\d% [+=-]$", row), row
        # --flips: what each changed image by image
        assert re.search(rf"^{experiment.name} vs .*\n  digits/cnn: \d+ fixed, \d+ broken",
                         compared, re.M), compared
    # the clean start put the commit's results back: the workspace row is the commit's own
    workspace = next(line for line in compared.splitlines() if line.startswith("workspace"))
    assert "stale" not in compared and workspace.split()[1] == "-", compared

    # every experiment's TensorBoard logs side by side, one run per experiment and seed
    sweep = [e.name for e in experiments if e.params.get("execution.tensorboard")]
    gathered = repo / "reports" / "tensorboard-runs"
    shown = next(out for line, out in outputs.items() if line.startswith("pipeline-tensorboard"))
    assert "tensorboard --logdir reports/tensorboard-runs" in shown
    for name in sweep:
        assert re.search(rf"^{name}: [1-9]\d* event files$", shown, re.M), shown
        runs = [p.parent for p in (gathered / name / "digits" / "cnn").rglob("events.*")]
        assert sorted(p.name for p in set(runs)) == ["seed0"]
        events = EventAccumulator(str(runs[0]))
        events.Reload()
        assert [e.step for e in events.Scalars("valid/accuracy")] == [1]
    assert not list((gathered / "workspace").rglob("events.*"))  # the baseline logs none

    # after `dvc exp apply` and the refresh: the banner names the applied experiment's values
    slots = run_slots(repo)
    best = max(experiments, key=lambda e: e.accuracy[RUNS[0]])
    banner = plain(slots["drift"])
    for key, value in changed_params(best, committed.params).items():
        assert f"{key}={param_text(value)} (committed {param_text(committed.params[key])})" \
            in banner
    assert all(e.name in slots["experiments"] for e in experiments)
    assert (repo / "dvc_plots" / "index.html").is_file()
