"""The dataset formats' converters: one per format of pipeline/datasets.py.

Every format ends as the same thing, `data/raw/<dataset>/` holding `train.csv[.gz]`, optionally
`test.csv[.gz]`, and `source.json`, so the prepare stage reads one layout: a label column and
C*H*W pixel columns in C,H,W order. `csv` files are copied as they are; `idx` (MNIST-family) and
`cifar` (the python tarball) are converted to the Kaggle layout (`label,pixel1..pixelN`).
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import (
    atomic_write,
    fresh_directory,
    load_foreign_arrays,
    sha256_of,
    write_json,
)
from pipeline.datasets import AnyDataset, CifarDataset, CsvDataset, FileSource, IdxDataset
from pipeline.layout import SOURCE_RECORD, raw_csv
from pipeline.params import DownloadParams
from pipeline.sources import (
    DownloadError,
    Fetched,
    PinMismatch,
    fetch,
    local_origin,
    url_record,
)

IDX_LABELS_MAGIC = 2049
IDX_IMAGES_MAGIC = 2051
MAX_IDX_BYTES = 4 << 30  # 60,000 MNIST images are 47 MB
MAX_BATCH_BYTES = 256 << 20  # a CIFAR-10 batch pickle is 31 MB; read whole, so it is bounded

Fetch = Callable[[FileSource], Fetched]


def write_csv(dataset: CsvDataset, staging: Path, get: Fetch) -> dict[str, dict]:
    """The CSV files as they are (`.gz` kept): train, and test when there is one."""
    files = {}
    for split, source in dataset.file_sources().items():
        fetched = get(source)
        target = staging / raw_csv(split, gzipped=fetched.path.name.endswith(".gz"))
        shutil.copyfile(fetched.path, target)
        files[target.name] = _record(fetched)
    return files


def write_idx(dataset: IdxDataset, staging: Path, get: Fetch) -> dict[str, dict]:
    """Each split's IDX images and labels as one Kaggle-layout CSV."""
    files = {}
    for split in ("train", "test"):
        pair = getattr(dataset, split)
        got_images, got_labels = get(pair.images), get(pair.labels)
        images = read_idx(got_images.path, IDX_IMAGES_MAGIC, tuple(dataset.shape[1:]))
        labels = read_idx(got_labels.path, IDX_LABELS_MAGIC, ())
        target = staging / raw_csv(split)
        rows = write_kaggle_csv(target, images, labels)
        files[target.name] = {"images": _record(got_images), "labels": _record(got_labels),
                              "rows": rows, "sha256": sha256_of(target)}
    return files


def write_cifar(dataset: CifarDataset, staging: Path, get: Fetch) -> dict[str, dict]:
    """The tarball's train and test batches as Kaggle-layout CSVs."""
    archive = get(dataset.archive)
    files = {}
    for split, batches in (("train", dataset.train_batches), ("test", dataset.test_batches)):
        images, labels = read_cifar_batches(archive.path, batches, dataset.shape,
                                            len(dataset.classes))
        target = staging / raw_csv(split)
        rows = write_kaggle_csv(target, images, labels)
        files[target.name] = {"archive": _record(archive), "batches": batches,
                              "rows": rows, "sha256": sha256_of(target)}
    return files


# Each format's converter, by the format names of pipeline/datasets.py (a test checks they agree).
CONVERTERS: dict[str, Callable[[Any, Path, Fetch], dict[str, dict]]] = {
    "csv": write_csv, "idx": write_idx, "cifar": write_cifar}


def read_idx(path: Path, expected_magic: int, expected_dims: tuple[int, ...] | None) -> np.ndarray:
    """Read a gzipped IDX file, checking its magic number and dimensions. The body is read
    only up to what the header promises (bounded by MAX_IDX_BYTES), so a gzip bomb or a
    header that lies cannot take the memory."""
    try:
        with gzip.open(path, "rb") as handle:
            head = handle.read(4)
            if len(head) < 4:
                raise DownloadError(f"{path}: too short for an IDX header ({len(head)} bytes)")
            (magic,) = struct.unpack(">I", head)
            if magic != expected_magic:
                raise DownloadError(f"{path}: IDX magic {magic}, expected {expected_magic}")
            ndims = magic & 0xFF
            raw_dims = handle.read(4 * ndims)
            if len(raw_dims) < 4 * ndims:
                raise DownloadError(f"{path}: the IDX header is cut short")
            dims = struct.unpack(f">{ndims}I", raw_dims)
            if expected_dims is not None and tuple(dims[1:]) != expected_dims:
                raise DownloadError(
                    f"{path}: IDX item shape {dims[1:]}, expected {expected_dims}")
            promised = int(np.prod(dims, dtype=np.int64))
            if promised > MAX_IDX_BYTES:
                raise DownloadError(f"{path}: the IDX header promises {promised:,} bytes, more "
                                    f"than {MAX_IDX_BYTES:,}; not an MNIST-style file")
            data = handle.read(promised + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise DownloadError(f"{path}: not a readable gzip file ({error})") from None
    if len(data) != promised:
        raise DownloadError(
            f"{path}: IDX body has {len(data):,}{'+' if len(data) > promised else ''} bytes, "
            f"header promises {promised:,}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


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


def read_cifar_batches(archive: Path, names: list[str], shape: tuple[int, int, int],
                       num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, C*H*W) and labels (N,) from the named batches of a CIFAR python tarball."""
    pixels = int(np.prod(shape))
    images, labels = [], []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members: dict[str, tarfile.TarInfo] = {}
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                name = Path(member.name).name
                if name in members and name in names:
                    raise DownloadError(
                        f"{archive.name}: two members are named {name!r} "
                        f"({members[name].name} and {member.name}); which batch is meant is "
                        "ambiguous, so the archive is refused: use the official tarball")
                members.setdefault(name, member)
            for name in names:
                if name not in members:
                    raise DownloadError(
                        f"{archive.name}: no batch {name!r} in the archive (it holds "
                        f"{', '.join(sorted(members)[:20]) or 'no files'}); check the "
                        "dataset's train_batches / test_batches")
                where = f"{archive.name}:{members[name].name}"
                if members[name].size > MAX_BATCH_BYTES:
                    raise DownloadError(
                        f"{where}: {members[name].size:,} bytes, more than a batch can be "
                        f"({MAX_BATCH_BYTES:,}; CIFAR's are ~31 MB); refusing to read it")
                extracted = tar.extractfile(members[name])
                if extracted is None:
                    raise DownloadError(f"{where}: not a regular file in the archive")
                batch = load_foreign_arrays(extracted.read(), where)
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


def _record(fetched: Fetched) -> dict:
    return {"source": fetched.source, "sha256": fetched.sha256, "bytes": fetched.size}


def record_sources(dataset: AnyDataset, fetched: dict[str, Fetched], folder: Path) -> None:
    """Fill the download stage's `sources/<dataset>` folder, a DVC output kept out of the cache
    and committed to git, so that DVC notices when a source changes:
    - a local file (`path:`), pinned or not, gets a symlink: DVC hashes it through the link,
      so replacing or editing the file shows in `dvc status` and `dvc repro` re-runs the stage
      (which refuses a pinned file that changed, and says how to re-pin it);
    - a pinned file inside an installed package (`resource:`, e.g. the built-in digits) gets a
      record of its pin instead: the download stage verifies it, and the record reads the same
      on every machine (a link would name each machine's site-packages);
    - every downloaded file gets a record of its version (`<label>.url.json`), which
      `pipeline-check-sources` compares with the server's."""
    lines = ["What this dataset is read from. DVC hashes these files (through the links), so a",
             "changed source marks the download stage changed; `pipeline-check-sources` asks",
             "the servers whether downloaded files changed.", ""]
    for label, source in dataset.file_sources().items():
        origin = local_origin(source)
        if origin is None:
            write_json(folder / f"{label}.url.json", url_record(source, fetched[label]))
            lines.append(f"{label}: {label}.url.json, downloaded from {source.url or source.name}")
            continue
        given = f"path: {source.path}" if source.path is not None else \
            f"resource: {source.resource}"
        if source.sha256 is not None and source.resource is not None:
            write_json(folder / f"{label}.local.json",
                       {"source": given, "sha256": source.sha256, "pinned": True})
            lines.append(f"{label}: {label}.local.json, the sha256 pin of `{given}`")
            continue
        link = folder / f"{label}{''.join(origin.suffixes[-2:]) or '.data'}"
        os.symlink(origin.resolve(), link)
        # where the link points stays out of this text: DVC hashes it, and the same data on
        # another machine or in another clone must give the same hash
        lines.append(f"{label}: {link.name}, a link to the file of `{given}`")
    (folder / "README.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def materialise(
    name: str,
    dataset: AnyDataset,
    out_dir: Path,
    cache_dir: Path,
    settings: DownloadParams,
    sources_dir: Path | None = None,
    show_progress: bool = False,
) -> dict:
    """Produce data/raw/<name>/ (CSV files + source.json) for one dataset, and its sources
    record in `sources_dir` (see `record_sources`). Returns the source.json record."""
    labels = {id(source): label for label, source in dataset.file_sources().items()}
    fetched_by_label: dict[str, Fetched] = {}

    def get(source: FileSource) -> Fetched:
        label = labels[id(source)]
        try:
            fetched = fetch(source, dataset.mirrors, cache_dir, settings, show_progress)
        except PinMismatch as error:
            repin = (f"re-pin with sha256 {error.actual_sha256} "
                     f"(`datasets.{name}.{label}.sha256: {error.actual_sha256}` in params.yaml)"
                     if error.actual_sha256 else
                     f"re-pin its size (datasets.{name}.{label}.size in params.yaml)")
            raise DownloadError(f"{error}: if the change is yours, {repin}; otherwise restore "
                                f"the file. {out_dir} was left as it was") from None
        fetched_by_label[label] = fetched
        if source.sha256 is None:
            print(f"{name}.{label}: sha256 {fetched.sha256} "
                  f"(pin it as datasets.{name}.{label}.sha256 in params.yaml)")
        return fetched

    with fresh_directory(out_dir) as staging:
        files = CONVERTERS[dataset.format](dataset, staging, get)
        record = {"dataset": name, "format": dataset.format, "files": files}
        write_json(staging / SOURCE_RECORD, record)
    if sources_dir is not None:
        with fresh_directory(sources_dir) as staging:
            record_sources(dataset, fetched_by_label, staging)
    return record
