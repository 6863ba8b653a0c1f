"""The prepare stage's work: clean and split one dataset into pickled uint8 arrays.

`prepare()` reads data/raw/<dataset>/{train,test}.csv[.gz] with full validation
(pipeline.ingest), splits off a stratified validation set (and a test set when the dataset has
no test file), and writes data/prepared/<dataset>/{train,valid,test}.pkl plus quality.json with
every count the report shows. The later stages read the splits back with
pipeline/splits.py, which does not import the CSV parser.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.artifacts import fresh_directory, save_arrays, sha256_of, write_json
from pipeline.datasets import AnyDataset
from pipeline.ingest import DataError, duplicate_count, read_image_csv, row_digests
from pipeline.layout import QUALITY_FILE, raw_csv, split_file
from pipeline.params import PrepareParams


def find_raw_file(raw_dir: Path, split: str) -> Path | None:
    for name in (raw_csv(split), raw_csv(split, gzipped=True)):
        if (raw_dir / name).is_file():
            return raw_dir / name
    return None


def stratified_split(
    images: np.ndarray, labels: np.ndarray, fraction: float, seed: int, what: str,
    source: str = "the data", classes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split off `fraction` of the rows, keeping class proportions; (rest_x, rest_y, x, y).
    `source` (the file) and `classes` (the names) are for the error messages."""
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    held_out = int(np.ceil(fraction * len(labels)))
    smallest = int(present[np.argmin(counts[present])])
    if counts[smallest] < 2:
        name = classes[smallest] if classes else str(smallest)
        raise DataError(
            f"{source}: class {name!r} has {counts[smallest]} row; a stratified {what} split "
            "needs at least 2 rows of every class: add rows of that class, or remove its rows "
            "and its name from the dataset's `classes`")
    if held_out < len(present) or len(labels) - held_out < len(present):
        raise DataError(
            f"{source}: a {what} set of {fraction:.0%} of {len(labels)} rows would hold "
            f"{held_out} rows and leave {len(labels) - held_out}, but each side needs one row "
            f"of each of the {len(present)} classes: add rows or change the split fraction "
            "(prepare.valid_fraction / prepare.test_fraction)")
    rest, held = stratified_indices(labels, held_out, seed)
    return images[rest], labels[rest], images[held], labels[held]


def stratified_indices(labels: np.ndarray, held_out: int, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (rest, held out) of scikit-learn's `train_test_split(..., test_size=
    held_out, random_state=seed, stratify=labels)`, the tutorials' split, drawn the same way
    from the same random stream (its StratifiedShuffleSplit: each class's share rounded by
    `_approximate_mode`, each class shuffled, then both sides). Written out to spare the
    prepare stage scikit-learn's import (docs/performance.md); tests/test_prepare.py
    checks the indices against scikit-learn's over many sizes, fractions, seeds and class
    balances."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_class = np.split(np.argsort(inverse.ravel(), kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    kept = _approximate_mode(counts, len(labels) - held_out, rng)
    held = _approximate_mode(counts - kept, held_out, rng)
    rest_rows: list[int] = []
    held_rows: list[int] = []
    for rows, count, keep, hold in zip(by_class, counts, kept, held, strict=True):
        shuffled = rows.take(rng.permutation(count), mode="clip")
        rest_rows.extend(shuffled[:keep])
        held_rows.extend(shuffled[keep:keep + hold])
    return rng.permutation(rest_rows), rng.permutation(held_rows)


def _approximate_mode(class_counts: np.ndarray, draws: int, rng: np.random.RandomState
                      ) -> np.ndarray:
    """How many of `draws` rows each class gets: its share rounded down, the rows left over
    going to the largest remainders, ties broken at random (scikit-learn's
    `utils.extmath._approximate_mode`)."""
    continuous = class_counts / class_counts.sum() * draws
    floored = np.floor(continuous)
    missing = int(draws - floored.sum())
    if missing > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            added = min(len(tied), missing)
            floored[rng.choice(tied, size=added, replace=False)] += 1
            missing -= added
            if missing == 0:
                break
    return floored.astype(int)


def split_dataset(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test: tuple[np.ndarray, np.ndarray] | None,
    settings: PrepareParams,
    source: str = "the train file",
    classes: list[str] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if test is None:
        train_images, train_labels, test_x, test_y = stratified_split(
            train_images, train_labels, settings.test_fraction, settings.seed, "test", source,
            classes)
        test = (test_x, test_y)
    train_x, train_y, valid_x, valid_y = stratified_split(
        train_images, train_labels, settings.valid_fraction, settings.seed, "validation",
        source, classes)
    return {"train": (train_x, train_y), "valid": (valid_x, valid_y), "test": test}


def prepare(
    raw_dir: Path, out_dir: Path, dataset: AnyDataset, settings: PrepareParams
) -> dict:
    """Read, validate, split and write one dataset. Returns the quality record."""
    layout = dataset.csv_layout()
    train_file = find_raw_file(raw_dir, "train")
    if train_file is None:
        raise DataError(f"{raw_dir}: no {raw_csv('train')} or {raw_csv('train', gzipped=True)}; "
                        "run the download stage first")
    tables = {"train": read_image_csv(train_file, layout, settings.on_bad_row,
                                      settings.max_bad_fraction)}
    test_file = find_raw_file(raw_dir, "test")
    if test_file is not None:
        tables["test"] = read_image_csv(test_file, layout, settings.on_bad_row,
                                        settings.max_bad_fraction)

    classes = list(dataset.classes)
    missing = [classes[i] for i in np.flatnonzero(
        np.bincount(tables["train"].labels, minlength=len(classes)) == 0)]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:10]) + (", ..." if len(missing) > 10
                                                                   else "")
        raise DataError(
            f"{train_file}: no rows of {len(missing)} of the {len(classes)} declared classes "
            f"({shown}); a model cannot learn a class it never sees: add rows of those classes, "
            "or remove them from the dataset's `classes` (labels index that list, from 0)")
    test = (tables["test"].images, tables["test"].labels) if "test" in tables else None
    splits = split_dataset(tables["train"].images, tables["train"].labels, test, settings,
                           str(train_file), classes)

    digests = {name: row_digests(table.images) for name, table in tables.items()}
    shape = tuple(dataset.shape)
    source_sha256 = {
        path.name: sha256_of(path) for path in (train_file, test_file) if path is not None
    }
    quality = {
        "files": {name: table.quality.as_dict() for name, table in tables.items()},
        "duplicates_within": {name: duplicate_count(d) for name, d in digests.items()},
        # after the split, so a dataset without a test file is checked too (an image the train
        # file holds twice can land on both sides); against everything training saw
        "test_images_also_in_train": int(np.isin(
            row_digests(splits["test"][0]),
            row_digests(np.concatenate([splits["train"][0], splits["valid"][0]]))).sum()),
        "split_sizes": {name: int(len(y)) for name, (_, y) in splits.items()},
        "class_counts": {
            name: np.bincount(y, minlength=len(dataset.classes)).tolist()
            for name, (_, y) in splits.items()
        },
        "classes": list(dataset.classes),
        "shape": list(shape),
        "source_sha256": source_sha256,
        "settings": settings.model_dump(),
    }
    with fresh_directory(out_dir) as staging:
        for name, (x, y) in splits.items():
            save_arrays(staging / split_file(name), {
                "images": np.ascontiguousarray(x.reshape(len(x), *shape)),
                "labels": y.astype(np.int64),
                "classes": list(dataset.classes),
                "split": name,
                "source_sha256": source_sha256,
            })
        write_json(staging / QUALITY_FILE, quality)
    return quality
