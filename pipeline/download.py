"""Stage 1: fetch a dataset's files and leave them in data/raw/<dataset>/ as CSV.

A file comes from a URL (or a list of mirrors), a local path, or a resource inside an installed
package (the default `digits` set ships inside scikit-learn). Downloads stream into `<name>.part`
while hashing, are checked for size, sha256 and content (gzip magic, IDX headers) and only then
renamed; a cached download is re-verified by hash on every run. IDX datasets (MNIST, Fashion-MNIST)
are converted to the Kaggle CSV layout so every later stage reads one format.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import importlib.resources
import os
import random
import shutil
import struct
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.artifacts import (
    atomic_write,
    fresh_directory,
    load_foreign_arrays,
    sha256_of,
    write_json,
)
from pipeline.params import (
    AnyDataset,
    CifarDataset,
    CsvDataset,
    DownloadParams,
    FileSource,
    load_params,
)

GZIP_MAGIC = b"\x1f\x8b"
IDX_LABELS_MAGIC = 2049
IDX_IMAGES_MAGIC = 2051
USER_AGENT = "pipeline-downloader/0.1 (+https://dvc.org)"


class DownloadError(RuntimeError):
    """No source produced a file that passed every check."""


class _RetryableError(Exception):
    """A failure worth retrying on the same mirror (timeout, reset, 5xx, truncated body)."""


class _MirrorRejected(Exception):
    """A failure that retrying the same mirror cannot fix (404, 403, wrong content)."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    source: str
    sha256: str
    size: int


def candidate_urls(source: FileSource, mirrors: list[str]) -> list[str]:
    if source.url is not None:
        return [source.url]
    if source.name is not None:
        if not mirrors:
            raise DownloadError(
                f"file {source.name!r} is given by name but the dataset lists no mirrors; "
                "add `mirrors:` to the dataset or give a full `url:`"
            )
        return [mirror + source.name for mirror in mirrors]
    return []


def check_content(path: Path, file_name: str) -> None:
    """Reject content that cannot be what the file name promises (e.g. an HTML error page)."""
    if file_name.endswith(".gz"):
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head != GZIP_MAGIC:
            raise _MirrorRejected(
                f"not gzip data (starts with {head!r}, expected {GZIP_MAGIC!r}); "
                "the server probably sent an error page"
            )


def verify(path: Path, expected_sha256: str | None, expected_size: int | None) -> str:
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise _MirrorRejected(f"size {size:,} bytes, expected {expected_size:,}")
    digest = sha256_of(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise _MirrorRejected(f"sha256 {digest}, expected {expected_sha256}")
    return digest


def _stream_once(url: str, part: Path, settings: DownloadParams, show_progress: bool) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=settings.timeout_s)
    except urllib.error.HTTPError as error:
        if error.code >= 500 or error.code == 429:
            raise _RetryableError(f"HTTP {error.code} {error.reason}") from None
        raise _MirrorRejected(f"HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise _RetryableError(f"cannot connect: {reason}") from None
    with response:
        declared = response.headers.get("Content-Length")
        total = int(declared) if declared and declared.isdigit() else None
        received = 0
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=Path(url).name, disable=not show_progress, leave=False)
        try:
            with open(part, "wb") as handle:
                while True:
                    try:
                        block = response.read(settings.chunk_bytes)
                    except TimeoutError:
                        raise _RetryableError(f"read timed out after {received:,} bytes") from None
                    except (http.client.IncompleteRead, ConnectionError, OSError) as error:
                        raise _RetryableError(
                            f"connection dropped after {received:,} bytes ({type(error).__name__})"
                        ) from None
                    if not block:
                        break
                    handle.write(block)
                    received += len(block)
                    bar.update(len(block))
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            bar.close()
    if total is not None and received != total:
        raise _RetryableError(f"truncated body: {received:,} of {total:,} bytes")


def download(
    urls: list[str],
    dest: Path,
    sha256: str | None,
    size: int | None,
    settings: DownloadParams,
    show_progress: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> Fetched:
    """Fetch the first mirror whose bytes pass every check into `dest` (atomically)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempts: list[str] = []
    started = time.monotonic()
    try:
        for url in urls:
            for attempt in range(settings.retries + 1):
                try:
                    _stream_once(url, part, settings, show_progress)
                    check_content(part, dest.name)
                    digest = verify(part, sha256, size)
                except _RetryableError as error:
                    attempts.append(f"{url}: attempt {attempt + 1}: {error}")
                    elapsed = time.monotonic() - started
                    if attempt == settings.retries or elapsed >= settings.max_total_s:
                        break
                    delay = settings.backoff_s * (2**attempt) * (0.5 + random.random())
                    sleep(min(delay, max(0.0, settings.max_total_s - elapsed)))
                    continue
                except _MirrorRejected as error:
                    attempts.append(f"{url}: {error}")
                    break
                os.replace(part, dest)
                return Fetched(dest, url, digest, dest.stat().st_size)
            if time.monotonic() - started >= settings.max_total_s:
                attempts.append(f"gave up: total time limit of {settings.max_total_s:g} s reached")
                break
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    tried = "\n  ".join(attempts) or "(no URL to try)"
    raise DownloadError(
        f"could not fetch {dest.name}; every source failed:\n  {tried}\n"
        "Check the URL and your connection, or download the file yourself and point the "
        "dataset's `path:` at it."
    )


def _resource_path(resource: str) -> Path:
    package, _, name = resource.partition(":")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise DownloadError(
            f"resource {resource!r}: package {package!r} is not installed"
        ) from None
    path = Path(str(root / name))
    if not path.is_file():
        raise DownloadError(f"resource {resource!r}: {name!r} not found in package {package!r}")
    return path


def fetch(
    source: FileSource,
    mirrors: list[str],
    cache_dir: Path,
    settings: DownloadParams,
    show_progress: bool = False,
) -> Fetched:
    """Make one verified local copy of `source` in `cache_dir` and return where it is."""
    if source.path is not None or source.resource is not None:
        origin = Path(source.path) if source.path is not None else _resource_path(source.resource)
        if not origin.is_file():
            raise DownloadError(f"{origin}: no such file (from the dataset's `path:`)")
        try:
            digest = verify(origin, source.sha256, source.size)
        except _MirrorRejected as error:
            raise DownloadError(
                f"{origin}: {error}; the file changed since its sha256 was pinned"
            ) from None
        label = str(origin) if source.path is not None else f"resource:{source.resource}"
        return Fetched(origin, label, digest, origin.stat().st_size)

    urls = candidate_urls(source, mirrors)
    dest = cache_dir / Path(urls[0].split("?")[0]).name
    if dest.exists() and source.sha256 is not None:
        try:
            digest = verify(dest, source.sha256, source.size)
            return Fetched(dest, f"cache:{dest}", digest, dest.stat().st_size)
        except _MirrorRejected as error:
            print(f"cached {dest} failed verification ({error}); downloading again")
    return download(urls, dest, source.sha256, source.size, settings, show_progress)


def read_idx(path: Path, expected_magic: int, expected_dims: tuple[int, ...] | None) -> np.ndarray:
    """Read a gzipped IDX file, checking its magic number and dimensions."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DownloadError(f"{path}: not a readable gzip file ({error})") from None
    if len(data) < 8:
        raise DownloadError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise DownloadError(f"{path}: IDX magic {magic}, expected {expected_magic}")
    ndims = magic & 0xFF
    dims = struct.unpack(f">{ndims}I", data[4 : 4 + 4 * ndims])
    if expected_dims is not None and tuple(dims[1:]) != expected_dims:
        raise DownloadError(f"{path}: IDX item shape {dims[1:]}, expected {expected_dims}")
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndims)
    if body.size != int(np.prod(dims)):
        raise DownloadError(
            f"{path}: IDX body has {body.size:,} bytes, header promises {int(np.prod(dims)):,}"
        )
    return body.reshape(dims)


def write_kaggle_csv(path: Path, images: np.ndarray, labels: np.ndarray) -> int:
    """Write `label,pixel1..pixelN` rows, the layout of Kaggle's Fashion-MNIST CSVs."""
    if len(images) != len(labels):
        raise DownloadError(
            f"{path.name}: {len(images):,} images but {len(labels):,} labels; "
            "the images and labels files do not belong together"
        )
    flat = images.reshape(len(images), -1)
    as_text = np.array([str(v).encode() for v in range(256)], dtype=object)
    header = "label," + ",".join(f"pixel{i}" for i in range(1, flat.shape[1] + 1))
    with atomic_write(path) as handle:
        handle.write(header.encode() + b"\n")
        for label, row in zip(labels, flat, strict=True):
            handle.write(str(int(label)).encode() + b"," + b",".join(as_text[row]) + b"\n")
    return len(labels)


def _idx_split_to_csv(
    pair_images: Fetched, pair_labels: Fetched, shape: tuple[int, int, int], out: Path
) -> int:
    images = read_idx(pair_images.path, IDX_IMAGES_MAGIC, tuple(shape[1:]))
    labels = read_idx(pair_labels.path, IDX_LABELS_MAGIC, ())
    return write_kaggle_csv(out, images, labels)


def read_cifar_batches(archive: Path, names: list[str], shape: tuple[int, int, int],
                       num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, C*H*W) and labels (N,) from the named batches of a CIFAR python tarball."""
    pixels = int(np.prod(shape))
    images, labels = [], []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in names:
                if name not in members:
                    raise DownloadError(
                        f"{archive.name}: no batch {name!r} in the archive (it holds "
                        f"{', '.join(sorted(members)) or 'no files'}); check the dataset's "
                        "train_batches / test_batches")
                where = f"{archive.name}:{members[name].name}"
                batch = load_foreign_arrays(tar.extractfile(members[name]).read(), where)
                data = batch.get(b"data") if isinstance(batch, dict) else None
                targets = batch.get(b"labels", batch.get(b"fine_labels")) \
                    if isinstance(batch, dict) else None
                if not isinstance(data, np.ndarray) or data.dtype != np.uint8 \
                        or data.ndim != 2 or data.shape[1] != pixels:
                    raise DownloadError(f"{where}: expected b'data' as uint8 rows of {pixels} "
                                        f"pixels (shape {list(shape)})")
                targets = np.asarray(targets if targets is not None else [], dtype=np.int64)
                if len(targets) != len(data) or targets.min() < 0 \
                        or targets.max() >= num_classes:
                    raise DownloadError(f"{where}: expected {len(data):,} labels in "
                                        f"0..{num_classes - 1}")
                images.append(data)
                labels.append(targets)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DownloadError(f"{archive.name}: not a readable tar archive ({error})") from None
    return np.concatenate(images), np.concatenate(labels)


def _csv_name(split: str, fetched: Fetched) -> str:
    return f"{split}.csv.gz" if fetched.path.name.endswith(".gz") else f"{split}.csv"


def _record(fetched: Fetched) -> dict:
    return {"source": fetched.source, "sha256": fetched.sha256, "bytes": fetched.size}


def materialise(
    name: str,
    dataset: AnyDataset,
    out_dir: Path,
    cache_dir: Path,
    settings: DownloadParams,
    show_progress: bool = False,
) -> dict:
    """Produce data/raw/<name>/ (CSV files + source.json) for one dataset. Returns the record."""
    files: dict[str, dict] = {}
    with fresh_directory(out_dir) as staging:
        if isinstance(dataset, CsvDataset):
            for split in ("train", "test"):
                source = getattr(dataset, split)
                if source is None:
                    continue
                fetched = fetch(source, dataset.mirrors, cache_dir, settings, show_progress)
                target = staging / _csv_name(split, fetched)
                shutil.copyfile(fetched.path, target)
                files[target.name] = _record(fetched)
                if source.sha256 is None:
                    print(f"{name}.{split}: sha256 {fetched.sha256} "
                          f"(pin it as datasets.{name}.{split}.sha256 in params.yaml)")
        elif isinstance(dataset, CifarDataset):
            archive = fetch(dataset.archive, dataset.mirrors, cache_dir, settings, show_progress)
            for split, batches in (("train", dataset.train_batches),
                                   ("test", dataset.test_batches)):
                images, labels = read_cifar_batches(archive.path, batches, dataset.shape,
                                                    len(dataset.classes))
                target = staging / f"{split}.csv"
                rows = write_kaggle_csv(target, images, labels)
                files[target.name] = {"archive": _record(archive), "batches": batches,
                                      "rows": rows, "sha256": sha256_of(target)}
        else:
            for split in ("train", "test"):
                pair = getattr(dataset, split)
                got_images = fetch(pair.images, dataset.mirrors, cache_dir, settings, show_progress)
                got_labels = fetch(pair.labels, dataset.mirrors, cache_dir, settings, show_progress)
                target = staging / f"{split}.csv"
                rows = _idx_split_to_csv(got_images, got_labels, dataset.shape, target)
                files[target.name] = {
                    "images": _record(got_images),
                    "labels": _record(got_labels),
                    "rows": rows,
                    "sha256": sha256_of(target),
                }
        record = {"dataset": name, "format": dataset.format, "files": files}
        write_json(staging / "source.json", record)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--dataset", required=True, help="name under `datasets:`")
    parser.add_argument("--out", required=True, type=Path, help="data/raw/<dataset>")
    parser.add_argument("--cache", required=True, type=Path, help="folder for verified downloads")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    record = materialise(
        args.dataset,
        params.dataset(args.dataset),
        args.out,
        args.cache / args.dataset,
        params.download,
        show_progress=sys.stderr.isatty(),
    )
    for file_name in record["files"]:
        size = (args.out / file_name).stat().st_size
        print(f"{args.dataset}: wrote {args.out / file_name} ({size:,} bytes)")


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage(main)
