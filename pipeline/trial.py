"""A sweep trial as the train stage sees it (README: Sweeps): each epoch's validation score goes
to the trial's Optuna storage, and the sweep's pruner may stop the run there.

`pipeline-sweep` runs each trial as `dvc exp run` with `models.<m>.trial:
<sweep>/<number>/<token>` and the storage's address in the environment (PIPELINE_SWEEP_STORAGE),
so the train stage finds its trial; the storage is the only channel between them. Optuna is
imported only for a trial.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError
from pipeline.tracking import keeps

STORAGE_ENV = "PIPELINE_SWEEP_STORAGE"
STORAGE_ATTEMPTS = 5
# What a trial leaves in its user attributes, and the study's settings the stage reads.
OBJECTIVE_ATTR = "objective"      # the finished run's objective value
PRUNED_ATTR = "pruned_at_epoch"   # set when the pruner stopped the run
STUDY_OBJECTIVE_ATTR = "objective"  # the study's: valid_accuracy or valid_loss
STUDY_PRUNER_ATTR = "pruner"  # the study's: make_pruner's settings (a loaded study has none)
# The study's random token, in every trial's marker: a sweep started again under an old name
# (its storage removed) marks its trials differently, so DVC's run cache never stands in for one.
STUDY_TOKEN_ATTR = "token"


def trial_marker(study: str, number: int, token: str) -> str:
    """`models.<model>.trial` of a trial: `<sweep>/<number>/<token>`."""
    return f"{study}/{number}/{token}"


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
    """The running trial: `record` each epoch, ask `prune_reason`, `finish` with the outputs."""

    trial: Any  # optuna.trial.Trial
    objective: str
    name: str
    kept: tuple[float, float] | None = None  # (valid accuracy, loss) of the weights kept so far
    pruned_at: int | None = None  # the epoch the pruner stopped the run at

    @property
    def value(self) -> float | None:
        """The objective of the weights training keeps (those the sweep judges on test)."""
        if self.kept is None:
            return None
        return self.kept[0] if self.objective == "valid_accuracy" else self.kept[1]

    def record(self, epoch: int, valid_accuracy: float, valid_loss: float) -> None:
        """Report an epoch (every one, the last included) to the trial."""
        if keeps(valid_accuracy, valid_loss, self.kept):
            self.kept = (valid_accuracy, valid_loss)
        self.trial.report(self.value, epoch)

    def prune_reason(self, epoch: int) -> str | None:
        """Why the pruner stops the run after this (reported) epoch, or None."""
        if not self.trial.should_prune():
            return None
        self.trial.set_user_attr(PRUNED_ATTR, epoch)
        self.pruned_at = epoch
        return (f"pruned at epoch {epoch} by sweep trial {self.name}: its "
                f"{self.objective.replace('_', ' ')}, {self.value:.4f}, is behind the other "
                "trials' at this epoch")

    def finish(self) -> None:
        """The run's objective (its outputs are written): what the sweep ranks it by."""
        if self.value is not None:
            self.trial.set_user_attr(OBJECTIVE_ATTR, self.value)


def open_trial(name: str, epochs: int) -> TrialLink | None:
    """The trial `<sweep>/<number>/<token>` in the storage the environment names; None (and the
    run trains as usual, reporting nothing) when no storage is given or the trial has finished: a
    trial's params applied to the workspace with `dvc exp apply` and trained again."""
    address = os.environ.get(STORAGE_ENV)
    if not address:
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parts = name.split("/")
    if len(parts) != 3 or not parts[1].isdigit():
        raise SweepError(f"models.<model>.trial = {name!r}: expected <sweep>/<number>/<token>, "
                         "as pipeline-sweep sets it; set it to null to train outside a sweep")
    study_name, number, token = parts
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
    if study.user_attrs.get(STUDY_TOKEN_ATTR) != token:
        raise SweepError(f"sweep trial {name}: the storage {redacted(address)} holds another "
                         f"sweep named {study_name!r} (its token is not {token}); set the "
                         "trial to null to train outside that sweep")
    if found[0].state.is_finished():  # an applied trial's marker, re-trained by hand
        return None
    pruner = study.user_attrs.get(STUDY_PRUNER_ATTR)
    if isinstance(pruner, dict):
        study.pruner = make_pruner(**pruner, epochs=epochs)
    trial = optuna.trial.Trial(study, found[0]._trial_id)
    return TrialLink(trial, str(study.user_attrs.get(STUDY_OBJECTIVE_ATTR, "valid_accuracy")),
                     name)
