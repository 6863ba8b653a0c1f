"""A training run's saved state, so a killed train stage continues where it was.

DVC 3 has no checkpoint outputs, so the state is a cache beside DVC's outputs (like the timing
files): `<state folder>/rank<r>.pt`, one file per data-parallel worker (and the save before
it), written through a temporary name and renamed, so a kill during a save leaves the previous
state whole. Each file holds the key of the stage inputs it was made from (the effective
settings, the prepared data's and the stage code's hashes, the thread count and device); a
state with another key is discarded, and the folder is removed once the stage has written its
outputs. The state itself (weights, optimizer, schedule, random generators, history, best
weights, for every finished and the current seed copy) comes from
`engine.Training.state_dict()`; on the CPU a resumed run ends with the same checkpoint bytes as
an uninterrupted one (on a GPU, as far as its kernels are deterministic).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts import ArtifactError, atomic_write, sha256_of
from pipeline.distributed import World

FORMAT = 1  # bumped when the state's layout changes: older states are then discarded


def code_files() -> list[Path]:
    """The pipeline's modules this process has imported: the stage's code, as DVC hashes it."""
    package = Path(__file__).resolve().parent
    found = set()
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if name and Path(name).resolve().is_relative_to(package):
            found.add(Path(name).resolve())
    return sorted(found)


def inputs_key(settings: dict[str, Any], files: Iterable[Path]) -> str:
    """One hash of everything a training run's bits depend on but the machine."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT, **settings}, sort_keys=True,
                                       default=str).encode())
    for path in files:
        digest.update(f"{path.name}:{sha256_of(path)}\n".encode())
    return digest.hexdigest()


class ResumeStore:
    """One worker's saved state in `folder`, valid only for `key` (no folder: nothing is saved
    or loaded). The save before the last is kept too (`.previous`): workers save one after
    another, and a kill between two of them leaves each a state of the same epoch."""

    def __init__(self, folder: Path | None, key: str, rank: int = 0, every_s: float = 0.0):
        self.folder, self.key, self.every_s = folder, key, every_s
        self.path = folder / f"rank{rank}.pt" if folder is not None else None
        self.previous = folder / f"rank{rank}.previous.pt" if folder is not None else None
        self.saved_at = time.monotonic()
        self.failed = False

    def _read(self, path: Path) -> dict | None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - whatever is wrong with it, start afresh
            print(f"note: {path}: an unreadable saved training state was discarded "
                  f"({type(error).__name__})", file=sys.stderr)
            return None
        if not isinstance(state, dict) or state.get("key") != self.key:
            print(f"note: {path}: a saved training state made from other inputs (params, "
                  "data, code or device) was discarded", file=sys.stderr)
            return None
        return state

    def load(self) -> list[dict]:
        """The saved states for these inputs, newest first; stale or unreadable ones are
        removed (the note says why)."""
        found = []
        for path in (self.path, self.previous):
            if path is not None and path.is_file():
                state = self._read(path)
                if state is None:
                    path.unlink(missing_ok=True)
                else:
                    found.append(state)
        return found

    def due(self) -> bool:
        """Whether an epoch's end should save: at most once per `every_s` seconds."""
        return (self.path is not None and not self.failed
                and time.monotonic() - self.saved_at >= self.every_s)

    def save(self, state: dict) -> None:
        """Write the state (the last one becomes `.previous`); a disk that cannot take it turns
        saving off for the run, with a note, rather than failing the training."""
        if self.path is None or self.previous is None or self.failed:
            return
        try:
            if self.path.is_file():
                os.replace(self.path, self.previous)
            with atomic_write(self.path, torch_save=True) as handle:
                torch.save({"key": self.key, **state}, handle)
        except (OSError, ArtifactError) as error:
            self.failed = True
            print(f"note: saving the training state failed ({error}); training goes on, but a "
                  "killed run would resume from an earlier epoch or start afresh",
                  file=sys.stderr)
        self.saved_at = time.monotonic()

    def clear(self) -> None:
        """Remove this worker's states (and the folder, once no worker's is left)."""
        if self.path is None or self.previous is None or self.folder is None:
            return
        self.path.unlink(missing_ok=True)
        self.previous.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty (another worker's state) or not there
            self.folder.rmdir()


def progress(state: dict | None) -> int:
    """How far a saved state got: finished seed copies, then epochs of the current one."""
    if state is None:
        return -1
    current = state.get("current")
    return len(state.get("done", [])) * 1_000_000 + (len(current["history"]) if current else 0)


def agreed_state(states: list[dict], world: World) -> dict | None:
    """The newest state every data-parallel worker has (one process: its newest). A kill can
    land between two workers' saves: then the others go back to their previous one."""
    if not world.distributed:
        return states[0] if states else None
    newest = progress(states[0]) if states else -1
    common = world.all_min(newest)
    chosen = next((state for state in states if progress(state) == common), None)
    if world.all_equal(progress(chosen)) and chosen is not None:
        return chosen
    if world.main and newest >= 0:
        print("note: the workers' saved training states have no epoch in common; starting "
              "afresh", file=sys.stderr)
    return None
