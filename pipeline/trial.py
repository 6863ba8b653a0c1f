"""A sweep trial as the train stage sees it (README: Sweeps): each epoch's validation score goes
to the trial's Optuna storage, and the sweep's pruner may stop the run there.

`pipeline-sweep` runs each trial as `dvc exp run` with `models.<m>.trial: <sweep>/<number>` and
the storage's address in the environment (PIPELINE_SWEEP_STORAGE), so the train stage finds its
trial; the storage is the only channel between them. Optuna is imported only for a trial.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError

STORAGE_ENV = "PIPELINE_SWEEP_STORAGE"
STORAGE_ATTEMPTS = 5
# What a trial leaves in its user attributes, and the study's settings the stage reads.
OBJECTIVE_ATTR = "objective"      # the finished run's objective value
PRUNED_ATTR = "pruned_at_epoch"   # set when the pruner stopped the run
STUDY_OBJECTIVE_ATTR = "objective"  # the study's: valid_accuracy or valid_loss
STUDY_PRUNER_ATTR = "pruner"  # the study's: make_pruner's settings (a loaded study has none)


class SweepError(PipelineError):
    """A sweep cannot start or go on: the message says why and what to do."""


def open_storage(address: str) -> Any:
    """An Optuna storage: a database URL (`sqlite:///sweeps.db`, `postgresql://user@host/db`)
    or the path of a journal file (the local default; several processes may share one)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" in address:
        for attempt in range(STORAGE_ATTEMPTS):
            try:
                return optuna.storages.RDBStorage(
                    address, engine_kwargs={"connect_args": {"timeout": 60}}
                    if address.startswith("sqlite") else {})
            except ImportError as error:
                raise SweepError(f"no database driver for {redacted(address)}: "
                                 f"{' '.join(str(error).split())[:200]} (PostgreSQL: "
                                 "pip install 'psycopg[binary]')") from None
            except Exception as error:  # noqa: BLE001 (SQLAlchemy and the drivers raise many
                # types; two processes creating the tables at once: one loses, and retries)
                if attempt == STORAGE_ATTEMPTS - 1:
                    raise SweepError(f"cannot open the sweep storage {redacted(address)}: "
                                     f"{' '.join(str(error).split())[:200]}") from None
                time.sleep(0.5 + random.random())
    return JournalStorage(JournalFileBackend(address))


def make_pruner(kind: str, warmup_epochs: int, startup_trials: int, epochs: int) -> Any:
    """The sweep's pruner (`sweep.pruner`), built the same in the sweep and in each trial."""
    import optuna

    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup_epochs),
                                              max_resource=max(epochs, 2))
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                       n_warmup_steps=warmup_epochs)


def redacted(address: str) -> str:
    """A storage URL without its password (printed in messages, never the secret)."""
    scheme, sep, rest = address.partition("://")
    if not sep or "@" not in rest:
        return address
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else address


@dataclass
class TrialLink:
    """The running trial: `report` each epoch, `finish` with the run's result."""

    trial: Any  # optuna.trial.Trial
    objective: str
    name: str
    best: float | None = None

    def report(self, epoch: int, valid_accuracy: float, valid_loss: float,
               may_prune: bool = True) -> str | None:
        """Report the run's best score so far at this epoch; why the pruner stops it, or None
        (always None unless `may_prune`: the workers of a data-parallel run must agree)."""
        value = valid_accuracy if self.objective == "valid_accuracy" else valid_loss
        if self.best is None or (value > self.best if self.objective == "valid_accuracy"
                                 else value < self.best):
            self.best = value
        self.trial.report(self.best, epoch)
        if not may_prune or not self.trial.should_prune():
            return None
        self.trial.set_user_attr(PRUNED_ATTR, epoch)
        return (f"pruned at epoch {epoch} by sweep trial {self.name}: its best "
                f"{self.objective.replace('_', ' ')} so far, {self.best:.4f}, is behind the "
                "other trials' at this epoch")

    def finish(self) -> None:
        """The run's objective (its outputs are written): what the sweep ranks it by."""
        if self.best is not None:
            self.trial.set_user_attr(OBJECTIVE_ATTR, self.best)


def open_trial(name: str, epochs: int) -> TrialLink | None:
    """The trial `<sweep>/<number>` in the storage the environment names; None (and the run
    trains as usual, reporting nothing) when no storage is given: a trial's params applied
    to the workspace with `dvc exp apply` re-run by hand."""
    address = os.environ.get(STORAGE_ENV)
    if not address:
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_name, _, number = name.rpartition("/")
    if not study_name or not number.isdigit():
        raise SweepError(f"models.<model>.trial = {name!r}: expected <sweep>/<number>, as "
                         "pipeline-sweep sets it; set it to null to train outside a sweep")
    storage = open_storage(address)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise SweepError(f"sweep trial {name}: the storage {redacted(address)} has no sweep "
                         f"{study_name!r}") from None
    found = [t for t in study.get_trials(deepcopy=False) if t.number == int(number)]
    if not found:
        raise SweepError(f"sweep trial {name}: the storage {redacted(address)} has no trial "
                         f"{number} in sweep {study_name!r}")
    pruner = study.user_attrs.get(STUDY_PRUNER_ATTR)
    if isinstance(pruner, dict):
        study.pruner = make_pruner(**pruner, epochs=epochs)
    trial = optuna.trial.Trial(study, found[0]._trial_id)
    return TrialLink(trial, str(study.user_attrs.get(STUDY_OBJECTIVE_ATTR, "valid_accuracy")),
                     name)
