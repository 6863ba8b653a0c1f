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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pipeline import models
from pipeline.architectures import Architecture, Shape, architecture_from_dict
from pipeline.artifacts import ArtifactError, atomic_write
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
        with atomic_write(path) as handle:
            handle.write(buffer.getvalue())


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by the train stage; anything else is refused with the reason."""
    import torch

    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; run the train stage (dvc repro)") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path}: is a folder, expected a checkpoint file (.pt)") from None
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
        for state in [*checkpoint.state_dicts, checkpoint.initial_state_dict]:
            checkpoint.build(state)
    except PipelineError as error:
        raise ArtifactError(f"{where}: {error}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise ArtifactError(f"{where}: {type(error).__name__} {reason}; re-run the train "
                            "stage (dvc repro)") from None
    return checkpoint
