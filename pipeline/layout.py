"""The names of the files the stages write inside the folders dvc.yaml gives them.

The folders themselves live in dvc.yaml (`vars:`), the one place for paths; each stage gets its
folders as arguments. What goes inside a folder is named here, once, for the stage that writes
it and every reader after it (the next stages, the report, other revisions' files read through
DVC). tests/test_layout.py checks that dvc.yaml, .gitignore and `make clean` agree.
"""

from __future__ import annotations

RAW_SUFFIXES = (".csv", ".csv.gz")  # data/raw/<dataset>/<split>.csv or .csv.gz (gzip kept)
QUALITY_FILE = "quality.json"  # data/prepared/<dataset>/: what reading and splitting found
SOURCE_RECORD = "source.json"  # data/raw/<dataset>/: what each raw file was made from


def raw_csv(split: str, gzipped: bool = False) -> str:
    """data/raw/<dataset>/<split>.csv[.gz]: one split as the download stage leaves it."""
    return split + RAW_SUFFIXES[gzipped]


def split_file(split: str) -> str:
    """data/prepared/<dataset>/<split>.pkl: one split's images, labels and class names."""
    return f"{split}.pkl"


def checkpoint_file(model: str) -> str:
    """models/<dataset>/<model>.pt: the trained model and its seed copies."""
    return f"{model}.pt"


def evaluation_file(model: str) -> str:
    """reports/evaluation/<dataset>/<model>.pkl: the evaluation record of one model."""
    return f"{model}.pkl"


def timing_file(model: str) -> str:
    """reports/timing/<dataset>/<model>.json: how long training took (not a DVC output)."""
    return f"{model}.json"
