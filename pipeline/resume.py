"""A training run's saved state, so a killed train stage continues where it was.

DVC 3 has no checkpoint outputs, so the state is a cache beside DVC's outputs (like the timing
files): `<state folder>/rank<r>.pt`, one file per data-parallel worker, written through a
temporary name and renamed, so a kill during a save leaves the previous state whole. Each file
holds the key of the stage inputs it was made from (the effective settings, the prepared data's
and the stage code's hashes); a state with another key is discarded, and the folder is removed
once the stage has written its outputs. The state itself (weights, optimizer, schedule, random
generators, history, best weights, for every finished and the current seed copy) comes from
`engine.Training.state_dict()`; on the CPU a resumed run ends with the same checkpoint bytes as
an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts import atomic_write, sha256_of
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
    or loaded)."""

    def __init__(self, folder: Path | None, key: str, rank: int = 0, every_s: float = 0.0):
        self.folder, self.key, self.every_s = folder, key, every_s
        self.path = folder / f"rank{rank}.pt" if folder is not None else None
        self.saved_at = time.monotonic()

    def load(self) -> dict | None:
        """The saved state, if there is one for these inputs; a stale or unreadable one is
        removed (the note says why), so the run starts afresh."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - whatever is wrong with it, start afresh
            self.clear()
            print(f"note: {self.path}: an unreadable saved training state was discarded "
                  f"({type(error).__name__})", file=sys.stderr)
            return None
        if not isinstance(state, dict) or state.get("key") != self.key:
            self.clear()
            print(f"note: {self.path}: a saved training state made from other inputs (params, "
                  "data or code) was discarded", file=sys.stderr)
            return None
        return state

    def due(self) -> bool:
        """Whether an epoch's end should save: at most once per `every_s` seconds."""
        return self.path is not None and time.monotonic() - self.saved_at >= self.every_s

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        with atomic_write(self.path) as handle:
            torch.save({"key": self.key, **state}, handle)
        self.saved_at = time.monotonic()

    def clear(self) -> None:
        """Remove this worker's state (and the folder, once no worker's is left)."""
        if self.path is None or self.folder is None:
            return
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty (another worker's state) or not there
            self.folder.rmdir()


def progress(state: dict | None) -> int:
    """How far a saved state got: finished seed copies, then epochs of the current one."""
    if state is None:
        return -1
    current = state.get("current")
    return len(state.get("done", [])) * 1_000_000 + (len(current["history"]) if current else 0)


def agreed_state(state: dict | None, world: World) -> dict | None:
    """The state, when every data-parallel worker saved the same progress (a kill can land
    between two workers' saves); otherwise every worker starts afresh."""
    if not world.distributed:
        return state
    if world.all_equal(progress(state)):
        return state
    if world.main:
        print("note: the workers' saved training states are from different epochs (the run "
              "was stopped while they saved); starting afresh", file=sys.stderr)
    return None
