"""How every stage's `main()` is run: the process set up for a short life of large arrays (the
collector's view of the imports frozen, freed memory kept for reuse), stale temporaries swept,
known failures printed as one clear message, no traceback, and nothing printed that a terminal
would take as a command.

With PIPELINE_PROFILE=<file> in the environment each stage also appends one JSON line to that
file: when its process started, when its imports were done, when it finished, and the seconds
of any named `phase` (the benchmark's first-run breakdown reads it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.artifacts import sweep_stale_staging
from pipeline.errors import PipelineError

PROFILE_ENV = "PIPELINE_PROFILE"
# What a terminal or a reader could take for something else: C0 and C1 controls (escape
# sequences retitle the terminal, clear the screen, move the cursor; a carriage return overwrites
# the line), line and paragraph separators, and the bidirectional overrides that reorder text.
# Newline and tab stay.
_UNPRINTABLE = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
                if code not in (0x09, 0x0A)}
_UNPRINTABLE.update({code: f"\\u{code:04x}" for code in (0x2028, 0x2029, *range(0x202A, 0x202F),
                                                          *range(0x2066, 0x206A))})
COLLECT_EVERY = 10_000  # allocations between the collector's young-generation passes
_phases: dict[str, float] = {}


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a part of a stage for the profile (summed if entered again)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        _phases[name] = _phases.get(name, 0.0) + time.perf_counter() - started


def _write_profile(path: str, imported: float) -> None:
    import psutil  # a dependency of DVC; only needed when profiling

    record = {"stage": Path(sys.argv[0]).stem, "argv": sys.argv[1:],
              "started": psutil.Process().create_time(), "imported": imported,
              "finished": time.time(), "phases": _phases}
    with open(path, "a") as log:
        log.write(json.dumps(record) + "\n")


def printable(text: str) -> str:
    """`text` with every control character written as an escape (`\\x1b`), for a terminal."""
    return text.translate(_UNPRINTABLE)


class _PrintableStream:
    """A text stream that writes what it is given through `printable`: class names, file
    names, CSV headers and params values reach the terminal as text, never as commands."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(printable(text))

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next allocation instead of handing it
    back to the OS and faulting it in again, zeroed, moments later: the stages allocate and free
    arrays of 0.1-2 MB per block or batch (docs/performance.md, "Process set-up"). Arrays over
    32 MB still get their own mapping. False where the C library has no mallopt (not glibc)."""
    m_trim_threshold, m_mmap_threshold = -1, -3
    try:  # the process's own C library; Windows has no such handle (TypeError)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 2**30))


def run_stage(main: Callable[[], None], error_status: int = 1, sweep: bool = False) -> None:
    """Run a stage or tool (DVC runs stages from the project root): for a stage (`sweep`),
    first remove what killed runs of any stage left half-written; then run it and print an
    expected failure as one line (exit status `error_status`)."""
    imported = time.time()
    if getattr(signal.getsignal(signal.SIGINT), "__module__", "") == "pipeline.stages":
        signal.signal(signal.SIGINT, signal.default_int_handler)  # imports done: as usual
    # progress bars write to the original stream (their carriage returns are theirs)
    sys.stdout, sys.stderr = _PrintableStream(sys.stdout), _PrintableStream(sys.stderr)
    # Each stage module turns the collector off before its imports (they build hundreds of
    # thousands of objects that live until exit). What is alive now is frozen out of the
    # collector's sight, which then runs on what the stage builds, every 10,000 allocations
    # instead of 700; frozen again at the end, because interpreter shutdown collects whatever
    # is not. Measurements: docs/performance.md, "Process set-up".
    gc.freeze()
    gc.set_threshold(COLLECT_EVERY, *gc.get_threshold()[1:])
    gc.enable()
    keep_freed_memory()
    if sweep and Path("dvc.yaml").is_file():
        sweep_stale_staging(Path.cwd())
    try:
        main()
        if os.environ.get(PROFILE_ENV):
            _write_profile(os.environ[PROFILE_ENV], imported)
        gc.freeze()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error_status)
    except KeyboardInterrupt:
        print("interrupted; no partial outputs were kept", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`pipeline-verify | head`): stop quietly,
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)  # with the status a shell gives a command it cut off
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f"{error.filename}: no space left on its disk" if error.filename else \
            "no space left on a disk being written"
        print(f"error: {where} ({error.strerror}); free some space and run again",
              file=sys.stderr)
        sys.exit(error_status)
