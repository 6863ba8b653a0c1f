"""The building blocks of the params.yaml schema, at the bottom of the import graph.

The schema modules (pipeline/datasets.py, pipeline/architectures.py, pipeline/params.py) build
on these; the code that implements a setting imports its schema, never the reverse.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Unknown keys are refused; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
