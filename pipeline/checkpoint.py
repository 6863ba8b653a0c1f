"""Checkpoints: what the train stage saves and everything after it loads.

A checkpoint holds the architecture (its registry fields, pipeline/architectures.py), the input
shape and class names, the best-validation weights of every seed copy (the first is the model, the
rest make its seed ensemble), the weights training started from, and a record of how it was
trained. Only tensors and plain values are stored, and loading uses
`torch.load(weights_only=True)`. Nothing in it depends on the clock, so a re-run on the same
machine writes the same bytes.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pipeline import models
from pipeline.architectures import Architecture, Shape, architecture_from_dict
from pipeline.artifacts import ArtifactError, atomic_write
from pipeline.datasets import MAX_CHANNELS, MAX_CLASSES, MAX_PIXELS, MAX_SIDE
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from torch import nn

FORMAT_VERSION = 2


@dataclass
class Checkpoint:
    architecture: Architecture
    input_shape: tuple[int, int, int]
    classes: list[str]
    state_dicts: list[dict]  # the model first, then the rest of its seed ensemble
    initial_state_dict: dict  # the first copy's weights before training
    dataset: str | None = None
    model: str | None = None
    run: dict = field(default_factory=dict)  # seeds, device, bf16, the training settings

    def build(self, state_dict: dict | None = None) -> nn.Module:
        """The model with the given weights (default: the trained model), in eval mode."""
        model = models.build(self.architecture, self.input_shape, len(self.classes))
        model.load_state_dict(self.state_dicts[0] if state_dict is None else state_dict)
        return model.eval()

    def seed_models(self) -> list[nn.Module]:
        """Every trained copy: the model first, then the rest of its seed ensemble."""
        return [self.build(state) for state in self.state_dicts]

    def save(self, path: Path) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save({"format": FORMAT_VERSION,
                    "architecture": self.architecture.model_dump(mode="json"),
                    "input_shape": list(self.input_shape), "classes": list(self.classes),
                    "state_dicts": self.state_dicts,
                    "initial_state_dict": self.initial_state_dict,
                    "dataset": self.dataset, "model": self.model, "run": self.run}, buffer)
        with atomic_write(path, torch_save=True) as handle:
            handle.write(buffer.getvalue())


def _check_archive(path: Path) -> None:
    """Refuse a checkpoint archive whose entries could inflate beyond the file: torch.save
    stores every entry uncompressed, so a compressed one (a zip bomb: 5 MB that unpack to
    gigabytes) is not its work."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return  # not an archive: torch.load names the problem
    packed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    if packed or sum(e.file_size for e in entries) > path.stat().st_size:
        which = ", ".join(packed[:3]) or "larger unpacked than the file"
        raise ArtifactError(
            f"{path}: holds compressed entries ({which}); torch.save writes none, and they could "
            "unpack to far more memory than the file's size, so it is not loaded: use a "
            "checkpoint written by the train stage")


def _names(keys: list[str], shown: int = 5) -> str:
    listed = ", ".join(repr(k[:80]) for k in keys[:shown])
    return (listed + (f" and {len(keys) - shown} more" if len(keys) > shown else "")) or "none"


def _check_declared(checkpoint: Checkpoint, where: str) -> None:
    """The input shape and classes within the bounds params.yaml enforces for a dataset, so a
    crafted checkpoint cannot make a model build allocate gigabytes."""
    c, h, w = checkpoint.input_shape
    if not (1 <= c <= MAX_CHANNELS and 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE
            and c * h * w <= MAX_PIXELS):
        raise ArtifactError(f"{where}: declares input {c}x{h}x{w}, beyond the bounds of any "
                            f"dataset (at most {MAX_CHANNELS} channels, {MAX_SIDE} pixels a "
                            f"side, {MAX_PIXELS:,} values)")
    if not 2 <= len(checkpoint.classes) <= MAX_CLASSES:
        raise ArtifactError(f"{where}: declares {len(checkpoint.classes):,} classes; a dataset "
                            f"has 2 to {MAX_CLASSES:,}")


def _check_weights(checkpoint: Checkpoint, where: str) -> None:
    """Every stored state dict against the architecture's own, built on the meta device (no
    memory): the unexpected and missing keys named first, then any tensor of the wrong shape or
    holding NaN or infinity."""
    import torch

    with torch.device("meta"):
        skeleton = models.build(checkpoint.architecture, checkpoint.input_shape,
                                len(checkpoint.classes))
    expected = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
    copies = [(f"seed copy {i}", s) for i, s in enumerate(checkpoint.state_dicts)]
    for label, state in [*copies, ("the initial weights", checkpoint.initial_state_dict)]:
        if not isinstance(state, dict):
            raise ArtifactError(f"{where}: {label} are not a state dict")
        unexpected = sorted(str(k) for k in set(state) - set(expected))
        missing = sorted(set(expected) - set(state))
        if unexpected or missing:
            raise ArtifactError(
                f"{where}: {label}: unexpected keys {_names(unexpected)}; missing keys "
                f"{_names(missing)} (the {checkpoint.architecture.arch} architecture's weights "
                "are not these)")
        for key, shape in expected.items():
            tensor = state[key]
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
                found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) \
                    else type(tensor).__name__
                raise ArtifactError(f"{where}: {label}: {key} is {found}, the architecture "
                                    f"needs a tensor of shape {shape}")
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ArtifactError(
                    f"{where.split(': ')[0]}: {label}: the weights {key!r} hold NaN or "
                    "infinite values (the training that wrote them diverged); this model cannot "
                    "predict: retrain it, with a lower learning rate")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by the train stage; anything else is refused with the reason,
    before a crafted file can make a model build or a load take the machine's memory."""
    import torch

    path = Path(path)
    try:
        _check_archive(path)
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; run the train stage (dvc repro)") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path}: is a folder, expected a checkpoint file (.pt)") from None
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise ArtifactError(f"{path}: not a checkpoint this pipeline can load (a damaged "
                                "pickle); point at a models/<dataset>/<model>.pt written by "
                                "the train stage") from None
        raise ArtifactError(
            f"{path}: holds Python objects or code besides tensors and plain values, which this "
            "pipeline refuses to load: it reads checkpoints with torch.load(weights_only=True), "
            "which stopped before anything in the file ran, so nothing did; use a checkpoint "
            "written by the train stage") from None
    except ArtifactError:
        raise
    except Exception as error:  # noqa: BLE001 (torch raises many types for corrupt, foreign or
        # unsafe files)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ArtifactError(
            f"{path}: not a checkpoint this pipeline can load ({type(error).__name__}: "
            f"{first_line[:200]}); point at a models/<dataset>/<model>.pt written by the train "
            "stage") from None
    where = f"{path}: not a checkpoint written by this pipeline's train stage"
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{where} (format {FORMAT_VERSION}); re-run the train stage "
                            "(dvc repro)")
    try:
        checkpoint = Checkpoint(
            architecture=architecture_from_dict(payload["architecture"]),
            input_shape=cast(Shape, tuple(int(v) for v in payload["input_shape"])),
            classes=[str(c) for c in payload["classes"]],
            state_dicts=list(payload["state_dicts"]),
            initial_state_dict=payload["initial_state_dict"],
            dataset=payload.get("dataset"),
            model=payload.get("model"),
            run=dict(payload.get("run") or {}),
        )
        if len(checkpoint.input_shape) != 3 or not checkpoint.state_dicts:
            raise ValueError("bad input shape or no weights")
        _check_declared(checkpoint, where)
        _check_weights(checkpoint, where)
        for state in [*checkpoint.state_dicts, checkpoint.initial_state_dict]:
            checkpoint.build(state)
    except ArtifactError:
        raise
    except PipelineError as error:
        raise ArtifactError(f"{where}: {error}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise ArtifactError(f"{where}: {type(error).__name__} {reason}; re-run the train "
                            "stage (dvc repro)") from None
    return checkpoint
