"""Crash-safe writing and safe reading of the files the stages hand to each other.

Everything is written to a temporary name in the target folder, flushed, fsynced and renamed
over the final name, so a killed stage never leaves an output that looks complete. Pickled
arrays are read back through an unpickler that resolves only numpy's array reconstruction
helpers: a pickle that names any other global (an `os.system` payload, say) is refused before
anything in it runs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipeline.errors import PipelineError


class ArtifactError(PipelineError, ValueError):
    """An input file between stages is missing, corrupt, tampered with or of the wrong shape."""


# Staging names carry the writer's process id: `.<name>.<pid>.<random>.tmp`, so a later run can
# tell a temporary left by a killed process (SIGKILL skips every cleanup) from one in use.
# `.<name>.pipeline-<host>-<pid>.<random>.tmp`: the marker tells this pipeline's temporaries
# from a user's files, and the host tells whose process id it is (a project folder shared by
# several machines holds other hosts' live writers, whose ids mean nothing here)
_STAGING = re.compile(r"\..+\.pipeline-([A-Za-z0-9-]{1,64})-(\d+)\.[^.]+\.tmp\Z")
_NOT_SWEPT = {".git", ".dvc", ".venv", "venv", "node_modules", "__pycache__"}


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"


def staging_prefix(path: Path) -> str:
    return f".{path.name}.pipeline-{host_name()}-{os.getpid()}."


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether the process runs: not gone, and not a zombie (killed, its exit not yet collected,
    as a killed process's children are in a container without an init that reaps them)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or too large to be a process id
        return False
    except PermissionError:  # alive, another user's
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux): what kill(0) said
        return True
    return state != "Z"


def _left_by_dead_writer(name: str) -> bool:
    """Whether `name` is a temporary this pipeline wrote on this host, whose writer is gone."""
    match = _STAGING.match(name)
    return match is not None and match.group(1) == host_name() \
        and not process_alive(int(match.group(2)))


def _remove_leftovers(path: Path) -> None:
    """Delete temporaries of `path` that an earlier, killed run on this host left."""
    for stale in path.parent.glob(f".{path.name}.pipeline-*.tmp"):
        if _left_by_dead_writer(stale.name):
            _remove(stale)


def sweep_stale_staging(root: Path, max_depth: int = 6) -> list[Path]:
    """Remove every staging file or folder under `root` that this pipeline wrote on this host
    and whose writer is gone: a stage killed mid-write leaves one, and DVC will not re-run that
    stage while its old outputs are intact, so every stage run sweeps the whole project (hidden
    folders and the venv excepted). A user's file is never touched: only names with the
    pipeline's marker and this host's name match."""
    removed = []
    root = Path(root)
    for folder, subfolders, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        for name in [*files, *subfolders]:
            if _left_by_dead_writer(name):
                _remove(Path(folder) / name)
                removed.append(Path(folder) / name)
        subfolders[:] = [] if depth >= max_depth else [
            d for d in subfolders if d not in _NOT_SWEPT and not d.startswith(".")
            and not (Path(folder) / d).is_symlink()]
    return removed


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


# The modes a plain open() or mkdir() would give, for what is built under a private temporary
# name (mkstemp and mkdtemp make it readable by its owner only).
FILE_MODE, FOLDER_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()


def _refuse_to_replace(path: Path, expected: str) -> None:
    """Refuse to write over something that is not this kind of output: a device, a FIFO, a
    socket (`--out /dev/null` must not replace the device node), or a link where a folder goes."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) and expected == "folder":
        raise ArtifactError(
            f"{path}: is a symbolic link (to {os.readlink(path)}), where this stage writes its "
            "output folder; it replaces the folder whole and does not follow links out of the "
            f"project: remove the link (rm {path}) and run again")
    wanted = stat.S_ISDIR if expected == "folder" else stat.S_ISREG
    if not stat.S_ISLNK(info.st_mode) and not wanted(info.st_mode):
        what = "a file" if stat.S_ISREG(info.st_mode) else "a folder" \
            if stat.S_ISDIR(info.st_mode) else "a device, pipe or socket"
        raise ArtifactError(f"{path}: is {what}, not a {expected} this pipeline may replace; "
                            "give another path, or move it away and run again")


class DiskFullError(ArtifactError):
    pass


_NEARLY_FULL_BYTES = 1 << 20


def _size(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def disk_full(error: BaseException, path: Path, written: int,
              stream_errors: bool = False) -> DiskFullError | None:
    """The one-line error for a write to `path` that failed because its disk is full (ENOSPC or
    a quota), or None. torch.save reports a full disk as a RuntimeError about stream positions:
    with `stream_errors`, a RuntimeError with under 1 MB left on the file system counts too."""
    if not isinstance(error, Exception) or isinstance(error, PipelineError):
        return None
    try:
        usage = shutil.disk_usage(path.parent)
    except OSError:
        return None
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
        stream_errors and isinstance(error, RuntimeError) and usage.free < _NEARLY_FULL_BYTES)
    if not full:
        return None
    return DiskFullError(
        f"{path}: the disk is full after {_size(written)} of it were written ({_size(usage.free)}"
        f" free of {_size(usage.total)} on the file system holding {path.parent}); free some "
        "space (`dvc gc --workspace` drops cached outputs this workspace no longer uses) and "
        "run again")


def _bytes_under(folder: Path) -> int:
    return sum(entry.lstat().st_size for entry in folder.rglob("*") if entry.is_file())


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", torch_save: bool = False) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync it and rename it to `path` (a link
    there is replaced, not followed; anything but a regular file is refused). `torch_save`: the
    body is a torch.save, whose full disk shows as a RuntimeError (see `disk_full`)."""
    path = Path(path)
    _refuse_to_replace(path, "file")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=staging_prefix(path), suffix=".tmp")
    try:
        with (os.fdopen(fd, mode) if "b" in mode else
              os.fdopen(fd, mode, encoding="utf-8")) as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        full = disk_full(error, path, os.stat(tmp_name).st_size if os.path.exists(tmp_name)
                         else 0, stream_errors=torch_save)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if full:
            raise full from None
        raise


def sha256_of(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | Path, data: Any) -> None:
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; run the stage that writes it (dvc repro)") from None
    except json.JSONDecodeError as error:
        raise ArtifactError(
            f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}; "
            "delete it and run `dvc repro` again"
        ) from None


@contextlib.contextmanager
def fresh_directory(path: str | Path) -> Iterator[Path]:
    """Build a whole output folder beside `path` and swap it in only when complete (refused up
    front where `path` is a link or not a folder)."""
    path = Path(path)
    _refuse_to_replace(path, "folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=staging_prefix(path), suffix=".tmp"))
    os.chmod(staging, FOLDER_MODE)
    try:
        yield staging
        for entry in staging.rglob("*"):
            if entry.is_file():
                with open(entry, "rb") as handle:
                    os.fsync(handle.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException as error:
        if isinstance(error, DiskFullError):  # one of its files: named where it was to go
            full: DiskFullError | None = DiskFullError(str(error).replace(str(staging), str(path)))
        else:
            full = disk_full(error, path, _bytes_under(staging)) if staging.is_dir() else None
        shutil.rmtree(staging, ignore_errors=True)
        if full:
            raise full from None
        raise


_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes; it only re-encodes a string
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: Path | str, encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise ArtifactError(
                f"{self._source}: refused to load: the pickle references {module}.{name}, but "
                "only numpy arrays and plain containers are allowed. The file was not written "
                "by this pipeline or was tampered with; delete it and run `dvc repro`."
            )
        return super().find_class(module, name)


def load_foreign_arrays(data: bytes, source: str) -> Any:
    """Unpickle a file someone else wrote (e.g. CIFAR's Python 2 batches: strings come back as
    bytes), resolving nothing but numpy array globals."""
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(data), source, encoding="bytes").load()
    except ArtifactError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as error:
        raise ArtifactError(f"{source}: corrupt or truncated pickle ({error})") from None


def save_arrays(path: str | Path, payload: dict[str, Any]) -> None:
    """Pickle a dict of numpy arrays and plain values (protocol 5, crash-safe)."""
    with atomic_write(path) as handle:
        pickle.dump(payload, handle, protocol=5)


def load_arrays(path: str | Path) -> dict[str, Any]:
    """Load a pickle written by `save_arrays`, resolving nothing but numpy array globals."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; run the stage that writes it (dvc repro)") from None
    return parse_arrays(data, str(path))


def parse_arrays(data: bytes, source: str) -> dict[str, Any]:
    """`load_arrays` on bytes already read (e.g. another revision's file); `source` names them."""
    try:
        payload = _ArrayOnlyUnpickler(io.BytesIO(data), source).load()
    except ArtifactError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, RecursionError) as error:
        raise ArtifactError(
            f"{source}: corrupt or truncated pickle ({type(error).__name__}: {error}); "
            "delete it and run `dvc repro` again"
        ) from None
    if not isinstance(payload, dict):
        raise ArtifactError(f"{source}: expected a dict of arrays, found {type(payload).__name__}")
    for key, value in payload.items():
        if isinstance(value, np.ndarray) and value.dtype.hasobject:
            raise ArtifactError(f"{source}: array {key!r} has object dtype; refusing to use it")
    return payload
