"""pipeline-sweep: the schema, the trial's link to its storage, pruning, the verdict, the report
section, and whole sweeps run as a user runs them (README: Sweeps)."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from pipeline.architectures import Linear
from pipeline.engine import fit
from pipeline.evidence import holm
from pipeline.params import ParamsError, TrainSettings, parse_params
from pipeline.plots import FigureQueue
from pipeline.report import _environment, collect_sweeps
from pipeline.sweep import yaml_value
from pipeline.sweep_record import (
    ScoreOnTest,
    SweepSummary,
    SweepTrial,
    Verdict,
    parse_summary,
    summary_path,
)
from pipeline.trial import STORAGE_ENV, make_pruner, open_storage, open_trial
from tests.conftest import CPU, ROOT, copy_repository, free_port, sh, toy_splits

SWEEP = {"dataset": "digits", "model": "cnn",
         "space": {"train.lr": {"low": 0.001, "high": 0.1, "log": True},
                   "dropout": {"low": 0.0, "high": 0.5}}}


def params_with(sweep: dict) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {**raw, "sweep": sweep}


def refusal(sweep: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(params_with(sweep))
    return str(caught.value)


def test_a_sweep_section_is_checked_by_the_model_schema():
    params = parse_params(params_with(SWEEP))
    assert params.sweep is not None and params.sweep.study == "digits-cnn"
    assert "droput" in refusal({**SWEEP, "space": {"droput": {"low": 0, "high": 0.5}}})
    assert "did you mean 'dropout'" in refusal(
        {**SWEEP, "space": {"droput": {"low": 0, "high": 0.5}}})
    # the model's own bounds: dropout must be below 1
    message = refusal({**SWEEP, "space": {"dropout": {"low": 0.0, "high": 1.0}}})
    assert "sweep.space.dropout" in message and "less than 1" in message
    assert "log scale needs low > 0" in refusal(
        {**SWEEP, "space": {"train.lr": {"low": 0, "high": 0.1, "log": True}}})
    assert "below high" in refusal({**SWEEP, "space": {"train.lr": {"low": 0.1, "high": 0.1}}})
    assert "continuous range" in refusal({**SWEEP, "sampler": "grid"})
    assert "not defined under 'models:'" in refusal({**SWEEP, "model": "cnnn"})
    assert "sets models.cnn.trial itself" in refusal(
        {**SWEEP, "fixed": {"trial": "x/1"}})
    assert "sweep.fixed.train.epochs" in refusal({**SWEEP, "fixed": {"train.epochs": 0}})
    assert "whole numbers" in refusal(
        {**SWEEP, "space": {"head_hidden": {"low": 8, "high": 32.5, "type": "int"}}})
    assert "give its range `type: int`" in refusal(
        {**SWEEP, "space": {"head_hidden": {"low": 8, "high": 32}}})


def test_values_are_written_as_dvc_set_param_reads_them():
    assert [yaml_value(v) for v in (0.1, 1e-05, True, "sgd", [8, 16], 3)] == \
        ["0.1", "1.0e-05", "true", "sgd", "[8, 16]", "3"]
    for value in (0.1, 1e-05, True, "sgd", [8, 16], 3, 0.012345678901234):
        assert yaml.safe_load(yaml_value(value)) == value


def test_holm_adjusts_for_the_number_of_comparisons():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.6, 0.7]) == [1.0, 1.0]


def test_a_stop_check_ends_training_like_early_stopping():
    seen = []

    def stop_check(row):
        seen.append(row.epoch)
        return "pruned at epoch 3 by test" if row.epoch == 3 else None

    result = fit(Linear(), TrainSettings(epochs=10, lr=0.05), toy_splits(), CPU, seed=0,
                 log=lambda _: None, stop_check=stop_check)
    assert len(result.history) == 3 and seen == [1, 2, 3]
    assert result.stop_reason == "pruned at epoch 3 by test"


def test_a_trial_reports_to_its_storage_and_is_pruned_behind_the_others(tmp_path, monkeypatch):
    address = str(tmp_path / "sweep.journal")
    study = optuna.create_study(study_name="toy", storage=open_storage(address),
                                direction="maximize",
                                pruner=make_pruner("median", 2, 1, 10))
    study.set_user_attr("objective", "valid_accuracy")
    study.set_user_attr("pruner", {"kind": "median", "warmup_epochs": 2, "startup_trials": 1})
    study.set_user_attr("token", "0a1b2c3d")
    good = study.ask()
    for epoch in range(1, 6):
        good.report(0.5 + 0.1 * epoch, epoch)
    study.tell(good, 0.99)
    weak = study.ask()

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert open_trial(f"toy/{weak.number}/0a1b2c3d", 10) is None  # no storage: trains as usual
    monkeypatch.setenv(STORAGE_ENV, address)
    link = open_trial(f"toy/{weak.number}/0a1b2c3d", 10)
    assert link is not None
    link.record(1, 0.2, 2.0)
    assert link.prune_reason(1) is None  # within the 2-epoch warm-up: never pruned
    link.record(2, 0.2, 1.9)  # the same accuracy at a lower loss: these weights are kept
    reason = link.prune_reason(2)
    assert reason is not None and reason.startswith("pruned at epoch 2")
    link.finish()
    frozen = optuna.load_study(study_name="toy", storage=open_storage(address)).trials[1]
    assert frozen.user_attrs["pruned_at_epoch"] == 2
    assert frozen.user_attrs["objective"] == pytest.approx(0.2)  # the kept weights' accuracy
    assert frozen.intermediate_values == {1: 0.2, 2: 0.2}
    with pytest.raises(Exception, match="no trial 9"):
        open_trial("toy/9/0a1b2c3d", 10)
    with pytest.raises(Exception, match="holds another sweep named 'toy'"):
        open_trial(f"toy/{weak.number}/ffffffff", 10)  # a sweep started again under its name
    study.tell(weak, state=optuna.trial.TrialState.PRUNED)
    assert open_trial(f"toy/{weak.number}/0a1b2c3d", 10) is None  # finished: an applied one

    # valid_loss: the loss of the weights training keeps (the best accuracy), not the lowest
    loss_link = open_trial(f"toy/{study.ask().number}/0a1b2c3d", 10)
    loss_link.objective = "valid_loss"
    loss_link.record(1, 0.5, 1.0)
    loss_link.record(2, 0.4, 0.8)
    assert loss_link.value == 1.0


def synthetic_summary() -> SweepSummary:
    curve = [(e, 0.5 + 0.04 * e) for e in range(1, 11)]
    trials = [
        SweepTrial(number=0, state="complete", params={"train.lr": 0.01, "dropout": 0.1},
                   value=0.90, curve=curve, experiment="digits-cnn-000",
                   test=ScoreOnTest(accuracy=0.9, low=0.87, high=0.93)),
        SweepTrial(number=1, state="complete", params={"train.lr": 0.03, "dropout": 0.2},
                   value=0.95, curve=curve, experiment="digits-cnn-001",
                   test=ScoreOnTest(accuracy=0.94, low=0.91, high=0.96)),
        SweepTrial(number=2, state="pruned", params={"train.lr": 0.001, "dropout": 0.4},
                   curve=curve[:4], pruned_at_epoch=4, experiment="digits-cnn-002"),
        SweepTrial(number=3, state="complete", params={"train.lr": 0.05, "dropout": 0.0},
                   value=0.93, curve=curve, experiment="digits-cnn-003"),
        SweepTrial(number=4, state="failed", params={"train.lr": 0.09, "dropout": 0.3},
                   note="training diverged"),
    ]
    verdict = Verdict(chosen=1, crowned=False, seeds=3, text="trial 1 (lr 0.03, dropout 0.2): "
                      "94.0 % on test; not distinguishable from trial 3 (p = 0.41). No winner "
                      "is crowned.", apply="dvc exp apply digits-cnn-001-seeds3")
    return SweepSummary(name="digits-cnn", dataset="digits", model="cnn",
                        objective="valid_accuracy", sampler="tpe", pruner="median",
                        space={"train.lr": {"low": 0.001, "high": 0.1, "log": True},
                               "dropout": {"low": 0.0, "high": 0.5}},
                        fixed={"train.epochs": 10}, trials=trials,
                        importance={"train.lr": 0.8, "dropout": 0.2}, verdict=verdict)


def test_the_report_draws_a_sweep_summary(tmp_path):
    summary = synthetic_summary()
    path = summary_path(tmp_path, summary.name)
    path.write_text(summary.model_dump_json())
    assert [t.number for t in parse_summary(path.read_bytes(), str(path)).finished()] == [1, 3, 0]
    with FigureQueue(workers=1) as queue:
        sweeps = collect_sweeps(tmp_path, queue)
        queue.draw()
    html = _environment().get_template("sweeps.html.j2").render(sweeps=sweeps)
    assert 'id="digits-sweep"' in html and 'id="digits-cnn-sweep"' in html
    images = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]+)"', html)
    assert images == ["digits-cnn: optimisation history", "digits-cnn: parameter importance",
                      "digits-cnn: parallel coordinates of the trials"]
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    assert "5 trials: 3 finished, 1 pruned, 1 failed" in text
    assert "No winner is crowned" in text
    assert "dvc exp apply digits-cnn-001-seeds3" in text
    assert re.search(r"1 0.03 0.2 0.9500 94.0 % \[91.0, 96.0\] digits-cnn-001", text)

    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps({"name": "x"}))
    with pytest.raises(Exception, match="broken.json: not a sweep summary"), \
            FigureQueue(workers=1) as queue:
        collect_sweeps(tmp_path, queue)


# --- whole sweeps, as a user runs them ------------------------------------------------------

GRID = {"dataset": "digits", "model": "cnn",
        "space": {"train.lr": {"choices": [0.03, 0.0003]},
                  "dropout": {"choices": [0.0, 0.1, 0.2]}},
        "fixed": {"train.epochs": 12}, "trials": 6, "sampler": "grid", "pruner": "median",
        "warmup_epochs": 6, "startup_trials": 1}


def readme_block(heading: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(f"\n## {heading}\n"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"no bash block under '## {heading}'"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines()
            if line.strip() and not line.startswith("#")]


def project(tmp_path: Path, sweep: dict) -> Path:
    """A fresh clone with a small baseline committed (the cnn only, 6 epochs, 2 seeds)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repository(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["run"] = {"datasets": ["digits"], "models": ["cnn"]}
    params["train"]["epochs"] = 6
    params["models"]["cnn"]["seeds"] = 2
    params["execution"]["threads"] = 2
    params["sweep"] = sweep
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "config", "user.name", "sweep"], repo)
    sh(["git", "config", "user.email", "sweep@example.org"], repo)
    sh(["dvc", "repro", "-q"], repo)
    sh(["bash", "-c", "git add -A && git commit -qm baseline"], repo)
    return repo


def experiment_rows(repo: Path) -> list[dict]:
    import dvc.api

    return [row for row in dvc.api.exp_show(repo=str(repo)) if row.get("Experiment")]


def trials_of(storage: str, name: str) -> list:
    return optuna.load_study(study_name=name, storage=open_storage(storage)).trials


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.e2e
def test_the_readme_sweep_runs_prunes_survives_a_kill_and_reports(tmp_path):
    repo = project(tmp_path, GRID)
    journal = repo / "data" / "sweeps" / "digits-cnn.journal"
    sweep = [str(Path(sys.executable).with_name("pipeline-sweep")), "--workers", "2"]

    # Killed hard (a lost machine) while two trials run: the storage keeps what finished.
    log = (tmp_path / "killed.log").open("w")
    killed = subprocess.Popen(sweep, cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_for(lambda: journal.exists() and sum(t.state.name == "COMPLETE" for t in
                                                  trials_of(str(journal), "digits-cnn")) >= 1,
                 240, "a first finished trial")
        wait_for(lambda: any(t.state.name == "RUNNING" for t in
                             trials_of(str(journal), "digits-cnn")), 60, "a running trial")
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    interrupted = {t.number for t in trials_of(str(journal), "digits-cnn")
                   if t.state.name == "RUNNING"}
    assert interrupted

    outputs = {}
    for line in readme_block("Sweeps"):
        command = line
        if "<" in command:  # the command the sweep printed
            summary = json.loads((repo / "reports" / "sweeps" / "digits-cnn.json").read_text())
            command = summary["verdict"]["apply"]
            assert command.startswith("dvc exp apply digits-cnn-")
        outputs[line] = sh(["bash", "-c", command], repo)
        if line.startswith("dvc repro"):
            html = (repo / "reports" / "index.html").read_text()
    sweep_output = next(out for line, out in outputs.items() if line.startswith("pipeline-sweep"))
    assert "interrupted: queued to run again" in sweep_output
    assert re.search(r"pruned at epoch \d+", sweep_output), sweep_output
    verdict = re.search(r"^trial (\d+) \(lr [\d.e-]+, dropout [\d.]+\): [\d.]+ % \[[\d.]+, "
                        r"[\d.]+\] on test, 2-seed ensemble; .*(wins\.|No winner is crowned)",
                        sweep_output, re.M)
    assert verdict, sweep_output

    trials = trials_of(str(journal), "digits-cnn")
    counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    grid = {(lr, dropout) for lr in (0.03, 0.0003) for dropout in (0.0, 0.1, 0.2)}
    assert sorted((t.params["train.lr"], t.params["dropout"]) for t in counted) == sorted(grid)
    assert any(t.state.name == "PRUNED" for t in counted)
    assert {t.number for t in trials if t.state.name == "FAIL"} == interrupted
    # two at once: some trials overlapped in time
    spans = sorted((t.datetime_start, t.datetime_complete) for t in counted)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))

    rows = experiment_rows(repo)
    names = {row["Experiment"] for row in rows}
    assert {f"digits-cnn-{t.number:03d}" for t in counted} <= names
    pruned_column = next(key for row in rows for key in row if key.endswith("pruned.epoch"))
    marked = {row["Experiment"] for row in rows
              if isinstance(row.get(pruned_column), int | float)}  # else absent: 'None'
    assert marked == {f"digits-cnn-{t.number:03d}" for t in counted if t.state.name == "PRUNED"}
    assert not [row for row in rows if row.get("State") not in (None, "Success")]
    chosen = int(verdict.group(1))
    assert f"digits-cnn-{chosen:03d}-seeds2" in names

    part = html[html.index('id="digits-sweep"'):html.index('id="run-info"')]
    assert part.count("<img ") >= 2 and "optimisation history" in part
    assert "parallel coordinates" in part and f"digits-cnn-{chosen:03d}-seeds2" in part
    # `dvc exp apply` brought the chosen trial's values into the workspace
    applied = yaml.safe_load((repo / "params.yaml").read_text())["models"]["cnn"]
    assert (applied["train"]["lr"], applied["dropout"]) == next(
        (t.params["train.lr"], t.params["dropout"]) for t in trials if t.number == chosen)
    assert applied["seeds"] == 2 and applied.get("trial") is None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's package, which `make test` installs),
    started for the test and removed after it."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed: `make test` installs Debian's package where "
                    "apt-get can run as root")
    bindir = Path(found[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: as Debian's postgres user
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(folder / "data"), "-A", "trust",
                    "-U", "postgres", "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-w", "-l",
                    str(folder / "server.log"), "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m",
                        "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_sweep_processes_share_one_database_without_duplicates(tmp_path, request, database):
    sweep = {"dataset": "digits", "model": "cnn", "name": "shared",
             "space": {"train.lr": {"low": 0.005, "high": 0.05, "log": True}},
             "fixed": {"train.epochs": 3, "seeds": 1}, "trials": 4, "sampler": "random",
             "pruner": "none"}
    repo = project(tmp_path, sweep)
    url = f"sqlite:///{tmp_path / 'shared.db'}" if database == "sqlite" else \
        request.getfixturevalue("postgres_url")
    command = [str(Path(sys.executable).with_name("pipeline-sweep")), "--storage", url]
    processes = [subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs

    trials = trials_of(url, "shared")
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) >= 4 and len(trials) == len(done)  # each may start one more at the end
    assert len({t.number for t in done}) == len(done)
    assert len({t.params["train.lr"] for t in done}) == len(done)
    assert len({t.user_attrs["pid"] for t in done}) == 2  # both processes ran trials
    names = {row["Experiment"] for row in experiment_rows(repo)}
    assert {f"shared-{t.number:03d}" for t in done} <= names
    assert all(f"storage {url}" in out for out in outputs)  # no password in this URL
    assert sum("the verdict waits" in out for out in outputs) <= 1

    # --summary judges what a storage holds; a storage without the sweep is refused, not started
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    refused = subprocess.run([*command[:-1], empty, "--summary"], cwd=repo, capture_output=True,
                             text=True)
    assert refused.returncode == 1 and "holds no sweep 'shared'" in refused.stderr, refused
    assert optuna.get_all_study_summaries(open_storage(empty)) == []
    summary = sh([*command, "--summary"], repo)
    assert re.search(r"^trial \d+ \(lr [\d.e-]+\): [\d.]+ % .* on test", summary, re.M), summary
