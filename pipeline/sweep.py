"""pipeline-sweep: search a model's hyperparameters with Optuna, each trial a DVC experiment.

Reads the `sweep:` section of params.yaml (or --config FILE): the dataset and model, the search
space (keys under models.<model>, checked by its schema), the budget, the objective (validation
accuracy or loss, never test), the sampler and the pruner. Each trial runs as
`dvc exp run --temp -n <sweep>-<number> -S ... train@<dataset>-<model>`, so `dvc exp show`,
`dvc exp apply` and `dvc exp push` see it; the train stage reports every epoch's validation
score to the trial and stops when the pruner says so. The trials share one Optuna storage (a
journal file by default; a database URL by --storage or PIPELINE_SWEEP_STORAGE), so several
workers and machines can run one sweep, and a sweep run again continues where it was.

When the budget is spent, the trial the validation score chose is judged once on the test set
against the runner-up and the baseline (the model as params.yaml trains it), re-trained with the
model's seed count when it has seeds: McNemar's exact test with Holm's correction. A winner is
crowned only when it is significantly better than the runner-up. The summary goes to
<sweeps>/<name>.json, which the report's sweep section draws.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from pipeline.artifacts import ArtifactError, host_name, process_alive, write_json
from pipeline.cores import usable_cores
from pipeline.errors import PipelineError
from pipeline.evidence import ALPHA, bootstrap_accuracy, holm, mcnemar
from pipeline.layout import split_file
from pipeline.params import (
    Params,
    SearchDimension,
    SweepParams,
    load_params,
    parse_params,
    read_params_yaml,
)
from pipeline.revisions import RevisionFiles, commit_of, dvc_yaml_paths, experiment_commits
from pipeline.sweep_record import (
    TOP_TRIALS,
    Comparison,
    ScoreOnTest,
    SweepSummary,
    SweepTrial,
    Verdict,
    summary_path,
)
from pipeline.trial import (
    OBJECTIVE_ATTR,
    PRUNED_ATTR,
    STORAGE_ENV,
    STUDY_OBJECTIVE_ATTR,
    STUDY_PRUNER_ATTR,
    STUDY_TOKEN_ATTR,
    SweepError,
    make_pruner,
    open_storage,
    redacted,
    trial_marker,
)

# What the sweep keeps in the storage beside Optuna's own records.
SETUP_ATTR = "setup"          # study: dataset, model, space, fixed (a sweep continues only as is)
HOST_ATTR, PID_ATTR = "host", "pid"  # trial: the process that runs it (a dead one: re-run)
DVC_PID_ATTR = "dvc_pid"      # trial: its `dvc exp run`
HEARTBEAT_ATTR = "heartbeat"  # trial: the time its sweep last said it runs (seconds since 1970)
HEARTBEAT_EVERY_S = 30
STALE_AFTER_S = 600           # no heartbeat for this long: its machine is lost
EXPERIMENT_ATTR = "experiment"
NOTE_ATTR = "note"
INTERRUPTED_ATTR = "interrupted"
MAX_FAILURES_IN_A_ROW = 3  # then the sweep stops: the setup, not the values, is broken


def experiment_name(sweep: str, number: int) -> str:
    return f"{sweep}-{number:03d}"


def experiment_names(repo: Path) -> set[str]:
    return set(experiment_commits(repo))


def yaml_value(value: object) -> str:
    """A value as `dvc exp run -S key=value` reads it (YAML)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip() \
        .removesuffix("\n...").removesuffix("...").strip()


def describe(params: dict[str, Any]) -> str:
    """`lr 0.012, dropout 0.2`: a trial's searched values, short."""
    def shown(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)
    return ", ".join(f"{key.rsplit('.', 1)[-1]} {shown(v)}" for key, v in params.items())


@dataclass
class Setup:
    """Everything a sweep run needs, resolved once."""

    repo: Path
    params: Params
    sweep: SweepParams
    address: str
    summaries: Path
    logs: Path
    checkpoints: str
    live: str
    prepared: str
    workers: int
    threads: int
    dvc: str

    @property
    def seeds(self) -> int:
        fixed = self.sweep.fixed.get("seeds")
        return int(fixed) if isinstance(fixed, int) else self.params.models[self.sweep.model].seeds


def load_setup(args: argparse.Namespace) -> Setup:
    params_path = Path(args.params)
    params = load_params(params_path)
    if args.config is not None:
        try:
            text = Path(args.config).read_text(encoding="utf-8")
        except OSError as error:
            raise SweepError(f"{args.config}: cannot read the sweep file ({error.strerror})") \
                from None
        section = read_params_yaml(text, str(args.config))
        raw = read_params_yaml(params_path.read_text(encoding="utf-8"), str(params_path))
        section = section.get("sweep", section) if isinstance(section, dict) else section
        params = parse_params({**raw, "sweep": section}, f"{params_path} with {args.config}")
    if params.sweep is None:
        raise SweepError(f"{args.config} holds no sweep section: write one (README: Sweeps)"
                         if args.config is not None else
                         f"{params_path} has no `sweep:` section: add one (README: Sweeps) or "
                         "name a file that holds it with --config")
    sweep = params.sweep
    if sweep.dataset not in params.run.datasets:
        raise SweepError(f"sweep.dataset {sweep.dataset!r} is not in run.datasets "
                         f"({', '.join(params.run.datasets)}): add it and run `dvc repro`, so "
                         "the trials and the verdict have its prepared data")
    if args.trials is not None:
        sweep = sweep.model_copy(update={"trials": args.trials})
    repo = params_path.resolve().parent
    summaries, storage_dir, checkpoints, live, prepared = dvc_yaml_paths(
        repo, "sweeps", "sweep_storage", "checkpoints", "live", "prepared")
    address = args.storage or os.environ.get(STORAGE_ENV) or \
        str(repo / storage_dir / f"{sweep.study}.journal")
    # the trials run in other folders: a file's path must not depend on the current one
    if "://" not in address:
        address = str(Path(address).resolve())
        Path(address).parent.mkdir(parents=True, exist_ok=True)
    elif address.startswith("sqlite:///") and not address.startswith("sqlite:////"):
        address = "sqlite:///" + str(Path(address.removeprefix("sqlite:///")).resolve())
    test_split = repo / prepared / sweep.dataset / split_file("test")
    if not test_split.is_file():
        raise SweepError(f"{test_split.relative_to(repo)} is missing: run `dvc repro` first "
                         "(the trials start from this workspace's prepared data)")
    dvc = Path(sys.executable).with_name("dvc")
    return Setup(repo, params, sweep, address, repo / summaries,
                 repo / storage_dir / sweep.study, checkpoints, live, prepared, args.workers,
                 max(1, usable_cores() // args.workers), str(dvc) if dvc.exists() else "dvc")


def distributions(sweep: SweepParams) -> dict[str, Any]:
    """The space as Optuna's distributions (a grid's: its values, so a trial asked for when
    another process just took the queued one still gets a grid point)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    found: dict[str, Any] = {}
    for key, dim in sweep.space.items():
        if sweep.sampler == "grid":
            found[key] = CategoricalDistribution(grid_values(dim))
        elif dim.choices is not None:
            found[key] = CategoricalDistribution(dim.choices)
        elif dim.type == "int":
            found[key] = IntDistribution(int(dim.low or 0), int(dim.high or 0), log=dim.log,
                                         step=int(dim.step or 1))
        else:
            found[key] = FloatDistribution(float(dim.low or 0), float(dim.high or 0),
                                           log=dim.log, step=dim.step)
    return found


def grid_values(dim: SearchDimension) -> list:
    if dim.choices is not None:
        return list(dim.choices)
    low, high, step = float(dim.low or 0), float(dim.high or 0), float(dim.step or 1)
    count = int(np.floor((high - low) / step + 1e-9)) + 1
    values = [low + i * step for i in range(count)]
    return [int(round(v)) for v in values] if dim.type == "int" else \
        [round(v, 12) for v in values]


def missing_grid_values(study: Any, sweep: SweepParams) -> dict[str, Any] | None:
    """The first combination of the grid, in the order written, that no trial has finished,
    runs or waits for (a failed or interrupted one's is run again); None when none is left."""
    from optuna.trial import TrialState

    keys = list(sweep.space)
    taken = set()
    for trial in study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)):
        values = trial.params or trial.system_attrs.get("fixed_params") or {}
        taken.add(tuple(repr(values.get(key)) for key in keys))
    for combination in itertools.product(*(grid_values(sweep.space[k]) for k in keys)):
        if tuple(map(repr, combination)) not in taken:
            return dict(zip(keys, combination, strict=True))
    return None


def grid_size(sweep: SweepParams) -> int:
    return int(np.prod([len(grid_values(d)) for d in sweep.space.values()]))


def make_sampler(sweep: SweepParams, seed: int) -> Any:
    import optuna

    if sweep.sampler in ("grid", "random"):  # a grid's values come from the queue
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: running trials count as bad results, so parallel workers spread out
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, sweep.startup_trials),
                                      constant_liar=True)


def setup_record(sweep: SweepParams) -> dict:
    return {"dataset": sweep.dataset, "model": sweep.model, "objective": sweep.objective,
            "space": {k: d.model_dump(exclude_defaults=True) for k, d in sweep.space.items()},
            "fixed": dict(sweep.fixed), "sampler": sweep.sampler, "pruner": pruner_record(sweep)}


def pruner_record(sweep: SweepParams) -> dict:
    return {"kind": sweep.pruner, "warmup_epochs": sweep.warmup_epochs,
            "startup_trials": sweep.startup_trials}


def trial_epochs(setup: Setup) -> int:
    """The epochs each trial trains (the model's, with `fixed:` applied): hyperband's budget."""
    sweep, params = setup.sweep, setup.params
    spec = params.with_model_values(sweep.model, dict(sweep.fixed))
    return params.model_copy(update={"models": {**params.models, sweep.model: spec}}) \
        .training_for(sweep.model).epochs


def open_study(setup: Setup, create: bool = True) -> Any:
    """The sweep's study, created (unless `create` is false: then it must exist) or continued;
    refuses to continue one set up otherwise."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep = setup.sweep
    storage = open_storage(setup.address)
    direction: Literal["maximize", "minimize"] = \
        "maximize" if sweep.objective == "valid_accuracy" else "minimize"
    pruner = make_pruner(**pruner_record(sweep), epochs=trial_epochs(setup))
    created = False
    if create:
        with contextlib.suppress(optuna.exceptions.DuplicatedStudyError):
            study = optuna.create_study(study_name=sweep.study, storage=storage,
                                        direction=direction, pruner=pruner,
                                        sampler=make_sampler(sweep, sweep.seed))
            created = True
    if not created:  # continuing, or joining another worker: other draws than the first one's
        try:
            joined = len(optuna.load_study(study_name=sweep.study, storage=storage).trials)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise SweepError(f"the storage {redacted(setup.address)} holds no sweep "
                             f"{sweep.study!r} (it holds: {', '.join(names) or 'none'}); "
                             "run pipeline-sweep without --summary to start it") from None
        seed = sweep.seed + joined + zlib.crc32(f"{host_name()}/{os.getpid()}".encode()) % 10_000
        study = optuna.load_study(study_name=sweep.study, storage=storage,
                                  sampler=make_sampler(sweep, seed), pruner=pruner)
    wanted = setup_record(sweep)
    if created:
        study.set_user_attr(STUDY_TOKEN_ATTR, secrets.token_hex(4))
        study.set_user_attr(STUDY_OBJECTIVE_ATTR, sweep.objective)
        study.set_user_attr(STUDY_PRUNER_ATTR, pruner_record(sweep))
        if sweep.sampler == "grid":  # every combination queued once, in the order written:
            keys = list(sweep.space)  # workers and machines take them from the queue
            combinations = itertools.product(*(grid_values(sweep.space[k]) for k in keys))
            for values in itertools.islice(combinations, sweep.trials):
                study.enqueue_trial(dict(zip(keys, values, strict=True)))
        study.set_user_attr(SETUP_ATTR, wanted)  # last: a joining process waits for it
        return study
    deadline = time.monotonic() + 60
    while (recorded := study.user_attrs.get(SETUP_ATTR)) is None:  # another process creates it
        if time.monotonic() > deadline:
            raise SweepError(f"the sweep {sweep.study!r} in {redacted(setup.address)} was "
                             "never set up (its creator stopped at once?): remove it and run "
                             "pipeline-sweep again")
        time.sleep(0.5)
        study = optuna.load_study(study_name=sweep.study, storage=storage,
                                  sampler=study.sampler, pruner=pruner)
    if recorded != wanted:
        changed = [k for k in wanted if wanted[k] != recorded.get(k)]
        raise SweepError(
            f"the storage {redacted(setup.address)} holds a sweep {sweep.study!r} set up with "
            f"another {', '.join(changed)}; a sweep continues only as it began: give this one "
            "another name (sweep.name) or remove the old storage")
    return study


def counted(trial: Any) -> bool:
    """Whether a trial uses up the budget: finished or pruned (a failed one does not, so a
    sweep run again once the cause is fixed still gets its trials)."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def interrupted(trial: Any, now: float) -> bool:
    """Whether a running trial's sweep is gone: its process on this host is, or its heartbeat
    stopped (another machine lost)."""
    attrs = trial.user_attrs
    if attrs.get(HOST_ATTR) == host_name() and not process_alive(int(attrs.get(PID_ATTR, 0))):
        return True
    beat = attrs.get(HEARTBEAT_ATTR)
    return isinstance(beat, int | float) and now - beat > STALE_AFTER_S


def recover_interrupted(study: Any) -> list[Any]:
    """Running trials whose sweep is gone (a killed sweep, a lost machine): marked failed as
    interrupted and queued again with the same values; a `dvc exp run` such a sweep left
    running here is stopped. The trials recovered (by this process only, if several try)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    again, now = [], time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not interrupted(trial, now):
            continue
        if trial.user_attrs.get(HOST_ATTR) == host_name():
            stop_process(int(trial.user_attrs.get(DVC_PID_ATTR, 0)))
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
        storage.set_trial_user_attr(trial._trial_id, NOTE_ATTR,
                                    "interrupted; run again as a new trial")
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another process recovered it first
            continue
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        again.append(trial)
    return again


def stop_process(pid: int) -> None:
    """Stop a process that outlived the sweep which started it (terminate, then kill)."""
    if pid <= 0 or not process_alive(pid):
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


def forget_interrupted_runs(repo: Path, names: set[str]) -> None:
    """DVC's records of killed `dvc exp run --temp` runs of these experiments (their temporary
    clone and run entry, which `dvc exp show` would list as running forever). A DVC detail:
    anything unexpected there is left alone."""
    exps = repo / ".dvc" / "tmp" / "exps"
    for info in (exps / "run").glob("*/*.run"):
        try:
            entry = json.loads(info.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(entry, dict) or entry.get("name") not in names \
                or entry.get("result_hash") is not None:
            continue
        root = Path(str(entry.get("root_dir") or ""))
        if root.is_absolute() and root.is_relative_to(exps) and root.is_dir():
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(info.parent, ignore_errors=True)


def check_names_free(setup: Setup, study: Any) -> None:
    """A new sweep whose experiment names are taken (an earlier sweep's storage was removed):
    say so before any trial runs."""
    if study.get_trials(deepcopy=False):
        return
    prefix = f"{setup.sweep.study}-"
    taken = sorted(name for name in experiment_names(setup.repo)
                   if name.startswith(prefix) and name[len(prefix):][:3].isdigit())
    if taken:
        raise SweepError(
            f"experiments {', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''} exist, but "
            f"the sweep storage {redacted(setup.address)} is new: remove them (`dvc exp remove "
            f"$(dvc exp list -A --name-only | grep '^{prefix}[0-9]')`) or give this sweep "
            "another name (sweep.name)")


def overrides(setup: Setup, values: dict[str, Any], trial: str | None, seeds: int | None
              ) -> list[str]:
    """The `-S` arguments of one run: the values under models.<model>, the trial marker, the
    seed count, this worker's threads, and the model in `run.models` if it is not there."""
    sweep, params = setup.sweep, setup.params
    prefix = f"models.{sweep.model}"
    # `++key=value`: set whether or not params.yaml has the key (Hydra's override syntax)
    found = [f"++{prefix}.{key}={yaml_value(value)}" for key, value in values.items()
             if not (key == "seeds" and seeds is not None)]
    if seeds is not None:
        found.append(f"++{prefix}.seeds={seeds}")
    if trial is not None:
        found.append(f"++{prefix}.trial={trial}")
    found.append(f"++execution.threads={setup.threads}")
    if sweep.model not in params.run.models:  # its train stage exists only then
        found.append(f"++run.models={yaml_value([*params.run.models, sweep.model])}")
    return found


# DVC's experiment locks refuse at once, not wait, when another `dvc exp run` holds them.
BUSY = "is busy, it is being blocked by"
BUSY_RETRIES = 10
STARTED = "Reproducing experiment"  # DVC prints it once the run is stashed and set up
_starting = threading.Lock()  # one `dvc exp run` of this process sets up at a time


def run_experiment(setup: Setup, name: str, settings: list[str], log: Path,
                   stop: threading.Event, trial: Any = None) -> tuple[bool, str]:
    """`dvc exp run --temp` of the sweep's train stage; (succeeded, the output's last line).
    The runs of this process start one at a time; a run refused because another held DVC's
    experiment lock is tried again. A `trial` gets the run's process id and a heartbeat."""
    target = f"train@{setup.sweep.dataset}-{setup.sweep.model}"
    command = [setup.dvc, "exp", "run", "--temp", "-n", name,
               *[arg for s in settings for arg in ("-S", s)], target]
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, STORAGE_ENV: setup.address}
    with log.open("w", encoding="utf-8") as out:
        for attempt in range(BUSY_RETRIES + 1):
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            begun = log.stat().st_size
            with _starting:
                process = subprocess.Popen(command, cwd=setup.repo, env=env, stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                if trial is not None:
                    trial.set_user_attr(DVC_PID_ATTR, process.pid)
                deadline = time.monotonic() + 120
                while process.poll() is None and time.monotonic() < deadline \
                        and not stop.is_set() and STARTED not in _tail(log, begun):
                    time.sleep(0.1)
            beat = time.monotonic()
            while process.poll() is None:
                if stop.wait(0.2):
                    process.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(30)
                    break
                if trial is not None and time.monotonic() - beat > HEARTBEAT_EVERY_S:
                    trial.set_user_attr(HEARTBEAT_ATTR, time.time())
                    beat = time.monotonic()
            if process.returncode == 0 or stop.is_set() or BUSY not in _tail(log, begun) \
                    or attempt == BUSY_RETRIES:
                break
            out.write(f"(DVC's experiment lock was busy: trying again, {attempt + 1} of "
                      f"{BUSY_RETRIES})\n")
            out.flush()
            stop.wait(1 + random.random() * 3)
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "ERROR:"))]
    return process.returncode == 0, (errors or lines or ["no output"])[-1].strip()


def _tail(log: Path, start: int) -> str:
    with log.open("rb") as handle:
        handle.seek(start)
        return handle.read().decode("utf-8", errors="replace")


class Sweeper:
    """Runs the trials: `workers` threads, each asking the study for a trial (one at a time),
    running it as an experiment and telling the study how it ended."""

    def __init__(self, setup: Setup, study: Any):
        self.setup, self.study = setup, study
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.deadline = (time.monotonic() + setup.sweep.timeout_s
                         if setup.sweep.timeout_s else None)
        self.distributions = distributions(setup.sweep)
        self.errors: list[BaseException] = []
        self.failures_in_a_row = 0
        self.budget = setup.sweep.trials
        if setup.sweep.sampler == "grid":
            self.budget = min(self.budget, grid_size(setup.sweep))

    def next_trial(self) -> Any | None:
        from optuna.trial import TrialState

        with self.lock:
            if self.stop.is_set() or (self.deadline and time.monotonic() > self.deadline):
                return None
            trials = self.study.get_trials(deepcopy=False)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if sum(counted(t) for t in trials) + running >= self.budget:
                return None
            if self.setup.sweep.sampler == "grid" and not any(
                    t.state == TrialState.WAITING for t in trials):
                missing = missing_grid_values(self.study, self.setup.sweep)
                if missing is None:
                    return None
                self.study.enqueue_trial(missing)
            trial = self.study.ask(self.distributions)
            trial.set_user_attr(HOST_ATTR, host_name())
            trial.set_user_attr(PID_ATTR, os.getpid())
            trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            trial.set_user_attr(EXPERIMENT_ATTR,
                                experiment_name(self.setup.sweep.study, trial.number))
            return trial

    def run_one(self, trial: Any) -> None:
        from optuna.trial import TrialState

        setup, sweep = self.setup, self.setup.sweep
        name = experiment_name(sweep.study, trial.number)
        values = {**sweep.fixed, **trial.params}
        marker = trial_marker(sweep.study, trial.number, self.study.user_attrs[STUDY_TOKEN_ATTR])
        settings = overrides(setup, values, marker, None if "seeds" in values else 1)
        ok, last = run_experiment(setup, name, settings, setup.logs / f"{name}.log", self.stop,
                                  trial)
        if self.stop.is_set():
            return  # left running: the next sweep run queues it again
        attrs = next(t for t in self.study.get_trials(deepcopy=False)
                     if t.number == trial.number).user_attrs
        what = f"trial {trial.number} ({describe(trial.params)})"
        failure = last if not ok else None
        if ok and attrs.get(PRUNED_ATTR) is None and attrs.get(OBJECTIVE_ATTR) is None:
            failure = "the train stage reported no result to the trial"
        # skip_if_finished: another process may have failed it as interrupted meanwhile
        if failure is not None:
            trial.set_user_attr(NOTE_ATTR, failure)
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            print(f"{what}: failed: {failure} (log: {setup.logs / f'{name}.log'})", flush=True)
            with self.lock:
                self.failures_in_a_row += 1
                if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW and not self.stop.is_set():
                    self.errors.append(SweepError(
                        f"{self.failures_in_a_row} trials in a row failed, the last with: "
                        f"{failure}; fix the cause (its log: {setup.logs / f'{name}.log'}) and "
                        "run pipeline-sweep again: failed trials do not use up the budget"))
                    self.stop.set()
            return
        with self.lock:
            self.failures_in_a_row = 0
        if attrs.get(PRUNED_ATTR) is not None:
            self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            print(f"{what}: pruned at epoch {attrs[PRUNED_ATTR]} [{name}]", flush=True)
        else:
            self.study.tell(trial, float(attrs[OBJECTIVE_ATTR]), skip_if_finished=True)
            print(f"{what}: {sweep.objective.replace('_', ' ')} "
                  f"{float(attrs[OBJECTIVE_ATTR]):.4f} [{name}]", flush=True)

    def work(self) -> None:
        try:
            while (trial := self.next_trial()) is not None:
                self.run_one(trial)
                if self.stop.is_set() and self.errors:  # a failure stop: tell the running one
                    break
        except BaseException as error:  # noqa: BLE001 (reported by the main thread)
            self.errors.append(error)
            self.stop.set()

    def run(self) -> None:
        threads = [threading.Thread(target=self.work, daemon=True)
                   for _ in range(self.setup.workers)]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(0.2)
        except KeyboardInterrupt:
            self.stop.set()
            for thread in threads:
                thread.join(60)
            raise
        if self.errors:
            raise self.errors[0]


# --- the verdict: the chosen trial judged once on the test set --------------------------------

def test_correct(setup: Setup, revision: str | None) -> tuple[np.ndarray, int] | str:
    """Which test images the model of a revision (None: the workspace) gets right, with its
    seed ensemble where the checkpoint holds several copies; or why it cannot be read."""
    from pipeline.checkpoint import load_checkpoint
    from pipeline.inference import seed_logits
    from pipeline.layout import checkpoint_file
    from pipeline.splits import load_split

    sweep = setup.sweep
    files = RevisionFiles(setup.repo, revision)
    path = f"{setup.checkpoints}/{sweep.dataset}/{checkpoint_file(sweep.model)}"
    data = files.read_bytes(path)
    if data is None:
        return f"{path}: {files.missing.get(path, 'missing')}"
    test = load_split(setup.repo / setup.prepared / sweep.dataset / split_file("test"))
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "model.pt"
        local.write_bytes(data)
        checkpoint = load_checkpoint(local)
    logits = seed_logits(checkpoint, test.images)
    return (logits.mean(axis=0).argmax(1) == test.labels), len(logits)


def score(correct: np.ndarray, seeds: int) -> ScoreOnTest:
    interval = bootstrap_accuracy(correct)
    return ScoreOnTest(accuracy=interval.estimate, low=interval.low, high=interval.high,
                     seeds=seeds)


def percent(test: ScoreOnTest) -> str:
    return f"{100 * test.accuracy:.1f} % [{100 * test.low:.1f}, {100 * test.high:.1f}]"


def seeds_experiment(setup: Setup, number: int) -> str:
    return f"{experiment_name(setup.sweep.study, number)}-seeds{setup.seeds}"


def retrain_with_seeds(setup: Setup, trials: list[Any]) -> None:
    """The trials re-trained with the model's seed count, as experiments `<trial's>-seeds<N>`
    (no trial marker: plain runs of those settings), those not made yet."""
    stop = threading.Event()
    missing = [t for t in trials
               if seeds_experiment(setup, t.number) not in experiment_names(setup.repo)]
    if not missing:
        return

    def one(trial: Any) -> str | None:
        name = seeds_experiment(setup, trial.number)
        ok, last = run_experiment(
            setup, name, overrides(setup, {**setup.sweep.fixed, **trial.params}, None,
                                   setup.seeds), setup.logs / f"{name}.log", stop)
        # another process judging at the same moment may have made it first
        return None if ok or name in experiment_names(setup.repo) else f"{name}: {last}"

    print(f"re-training trial{'s' if len(missing) > 1 else ''} "
          f"{' and '.join(str(t.number) for t in missing)} with the model's {setup.seeds} seeds",
          flush=True)
    with ThreadPoolExecutor(max_workers=setup.workers) as pool:
        failures = [f for f in pool.map(one, missing) if f]
    if failures:
        raise SweepError("re-training with seeds failed: " + "; ".join(failures))


def ranked(study: Any, objective: str) -> list[Any]:
    """The finished trials, best first by the objective (ties: the earlier trial)."""
    from optuna.trial import TrialState

    sign = -1 if objective == "valid_accuracy" else 1
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                  key=lambda t: (sign * t.value, t.number))


def judge(setup: Setup, study: Any, retrain: bool = True) -> Verdict | None:
    """Compare the chosen trial with the runner-up and the baseline on the test set, re-trained
    with the model's seeds first (unless not `retrain`: then as the storage's experiments have
    them)."""
    sweep = setup.sweep
    done = ranked(study, sweep.objective)
    if not done:
        return None
    chosen, runner_up = done[0], (done[1] if len(done) > 1 else None)
    candidates = [t for t in (chosen, runner_up) if t is not None]
    names = {t.number: experiment_name(sweep.study, t.number) for t in candidates}
    notes = []
    if setup.seeds > 1 and "seeds" not in sweep.fixed:  # else the trials had the seeds
        if retrain:
            retrain_with_seeds(setup, candidates)
        if all(seeds_experiment(setup, t.number) in experiment_names(setup.repo)
               for t in candidates):
            names = {t.number: seeds_experiment(setup, t.number) for t in candidates}
        else:
            notes.append(f"one copy each: their re-trainings with {setup.seeds} seeds are not "
                         "in this clone; run pipeline-sweep without --summary, or pull them")
    correct: dict[str, tuple[np.ndarray, int]] = {}
    for trial in candidates:
        try:
            found = test_correct(setup, commit_of(setup.repo, names[trial.number]))
        except PipelineError as error:
            found = str(error)
        if isinstance(found, str):
            raise SweepError(f"trial {trial.number}'s model cannot be read: {found}")
        correct[f"trial {trial.number}"] = found
    baseline = test_correct(setup, None)
    if isinstance(baseline, str):
        notes.append(f"no baseline to compare with: {baseline}")
    else:
        correct["the baseline"] = baseline
    ours, seeds = correct[f"trial {chosen.number}"]
    others = [name for name in correct if name != f"trial {chosen.number}"]
    raw = [mcnemar(ours, correct[name][0]) for name in others]
    adjusted = holm([p for _, _, p in raw])
    comparisons = [Comparison(against=name, wins=(a, b), p_value=p, adjusted=adj,
                              better=adj < ALPHA and a > b)
                   for name, (a, b, p), adj in zip(others, raw, adjusted, strict=True)]
    worse = {c.against for c in comparisons if c.adjusted < ALPHA and c.wins[1] > c.wins[0]}
    second = f"trial {runner_up.number}" if runner_up is not None else None
    beats_runner_up = any(c.better for c in comparisons if c.against == second)
    crowned = beats_runner_up and not worse

    def phrase(c: Comparison) -> str:
        if c.better:
            return f"better than {c.against} (p = {c.adjusted:.2g})"
        if c.against in worse:
            return f"worse than {c.against} (p = {c.adjusted:.2g})"
        return f"not distinguishable from {c.against} (p = {c.adjusted:.2g})"

    test = score(ours, seeds)
    text = (f"trial {chosen.number} ({describe(chosen.params)}): {percent(test)} on test"
            + (f", {seeds}-seed ensemble" if seeds > 1 else "")
            + "".join(f"; {phrase(c)}" for c in comparisons))
    if crowned:
        text += f". Trial {chosen.number} wins."
    elif second is None:
        text += ". Only one trial finished: no winner is crowned."
    else:
        reasons = [f"{second} does better on the test set" if second in worse else
                   f"the test set cannot tell it from {second}" if not beats_runner_up else ""]
        if "the baseline" in worse:
            reasons.append("it does worse than the baseline")
        text += (f". No winner is crowned: the validation score chose trial {chosen.number}, "
                 f"but {' and '.join(r for r in reasons if r)}.")
    if notes:
        text += " (" + "; ".join(notes) + ")"
    base = correct.get("the baseline")
    return Verdict(chosen=chosen.number, crowned=crowned, seeds=seeds,
                   comparisons=comparisons, text=text,
                   baseline=score(*base) if base else None,
                   apply=f"dvc exp apply {names[chosen.number]}")


# --- the summary --------------------------------------------------------------------------------

def importance(study: Any) -> tuple[dict[str, float] | None, str | None]:
    import optuna
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 3:
        return None, f"{len(done)} finished trial{'s' if len(done) != 1 else ''}; at least 3 needed"
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as error:
        return None, " ".join(str(error).split())[:200]
    return {k: round(float(v), 6) for k, v in found.items()}, None


def top_scores(setup: Setup, study: Any) -> dict[int, ScoreOnTest]:
    """Test accuracy and interval of the top trials, from their experiments' per-image
    predictions in git (dvclive's confusion file; no DVC cache needed)."""
    from pipeline import tracking

    done = ranked(study, setup.sweep.objective)[:TOP_TRIALS]
    found = {}
    for trial in done:
        name = trial.user_attrs.get(EXPERIMENT_ATTR)
        try:
            files = RevisionFiles(setup.repo, commit_of(setup.repo, name))
        except PipelineError:
            continue  # made on another machine and not pulled
        run_dir = f"{setup.live}/{setup.sweep.dataset}/{setup.sweep.model}"
        text = files.read_text(f"{run_dir}/{tracking.CONFUSION_PATH}")
        try:
            actual, predicted = tracking.parse_predictions(text or "", name)
        except ArtifactError:  # missing or damaged: the table says "not in this clone"
            continue
        found[trial.number] = score(np.array([a == p for a, p in zip(actual, predicted,
                                                                     strict=True)]), 1)
    return found


STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
          "WAITING": "waiting"}


def summarise(setup: Setup, study: Any, verdict: Verdict | None) -> SweepSummary:
    sweep = setup.sweep
    tests = top_scores(setup, study)
    weights, why_not = importance(study)
    trials = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        trials.append(SweepTrial(
            number=trial.number, state=STATES[trial.state.name], params=trial.params,
            value=trial.value if trial.state.name == "COMPLETE" else None,
            curve=sorted((int(k), float(v)) for k, v in trial.intermediate_values.items()),
            pruned_at_epoch=attrs.get(PRUNED_ATTR), experiment=attrs.get(EXPERIMENT_ATTR),
            test=tests.get(trial.number), note=attrs.get(NOTE_ATTR)))
    return SweepSummary(
        name=sweep.study, dataset=sweep.dataset, model=sweep.model, objective=sweep.objective,
        sampler=sweep.sampler, pruner=sweep.pruner,
        space={k: d.model_dump(exclude_defaults=True) for k, d in sweep.space.items()},
        fixed=dict(sweep.fixed), trials=trials, importance=weights,
        importance_note=why_not, verdict=verdict)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="a YAML file holding the sweep section (instead of params.yaml's)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="trials run at once on this machine (threads: cores / N each)")
    parser.add_argument("--storage", metavar="URL",
                        help=f"the Optuna storage: a database URL (postgresql://...) or a "
                             f"journal file; default ${STORAGE_ENV}, else a journal file "
                             "under dvc.yaml's sweep_storage")
    parser.add_argument("--trials", type=int, metavar="N",
                        help="the budget, over sweep.trials (finished trials count)")
    parser.add_argument("--summary", action="store_true",
                        help="run no trial: judge and summarise what the storage holds")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1 (got {args.workers})")
    if args.trials is not None and args.trials < 1:
        parser.error(f"--trials must be at least 1 (got {args.trials})")

    setup = load_setup(args)
    sweep = setup.sweep
    study = open_study(setup, create=not args.summary)
    if not args.summary:
        check_names_free(setup, study)
        again = recover_interrupted(study)
        forget_interrupted_runs(setup.repo, {t.user_attrs.get(EXPERIMENT_ATTR) for t in again
                                             if t.user_attrs.get(HOST_ATTR) == host_name()})
        if again:
            print(f"trial{'s' if len(again) > 1 else ''} "
                  f"{', '.join(str(t.number) for t in again)} "
                  f"{'were' if len(again) > 1 else 'was'} interrupted: queued to run again",
                  flush=True)
        done = sum(counted(t) for t in study.get_trials(deepcopy=False))
        print(f"sweep {sweep.study}: {sweep.dataset}/{sweep.model}, {sweep.sampler} sampler, "
              f"{sweep.pruner} pruner, {setup.workers} worker{'s' if setup.workers > 1 else ''}"
              f" x {setup.threads} threads, storage {redacted(setup.address)}; "
              f"{done} of {sweep.trials} trials done", flush=True)
        try:
            Sweeper(setup, study).run()
        except KeyboardInterrupt:
            print("interrupted: run pipeline-sweep again to continue the sweep", file=sys.stderr)
            raise
    pending = [t.number for t in study.get_trials(deepcopy=False)
               if t.state.name in ("RUNNING", "WAITING")]
    verdict = None
    if pending and not args.summary:  # other workers or machines still run trials
        print(f"trial{'s' if len(pending) > 1 else ''} {', '.join(map(str, pending))} still "
              f"run{'' if len(pending) > 1 else 's'} elsewhere: the verdict waits for them (run "
              "`pipeline-sweep --summary` once they finish)")
    else:
        if pending:
            print(f"note: trial{'s' if len(pending) > 1 else ''} "
                  f"{', '.join(map(str, pending))} have not finished: judging the others")
        verdict = judge(setup, study, retrain=not args.summary)
    summary = summarise(setup, study, verdict)
    path = summary_path(setup.summaries, sweep.study)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, summary.model_dump(mode="json"))
    states = [t.state for t in summary.trials]
    print(f"{len(states)} trials: {states.count('complete')} complete, "
          f"{states.count('pruned')} pruned, {states.count('failed')} failed; "
          f"summary {path.relative_to(setup.repo)} (the report's #{sweep.dataset}-sweep after "
          "`dvc repro`)")
    if verdict is None:
        if not pending:
            print("no trial finished: nothing to judge")
        return
    print(verdict.text)
    print(f"the validation score chose trial {verdict.chosen}; the test set judged it once. "
          f"To use it: {verdict.apply}")


def cli() -> None:
    from pipeline.cli import run_stage

    run_stage(main)


if __name__ == "__main__":
    cli()
