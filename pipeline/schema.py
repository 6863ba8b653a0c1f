"""The building blocks of the params.yaml schema that library modules declare beside their code.

Settings live next to what they configure (a dataset format's fields in `formats`, an
architecture's in `models`, download settings in `sources`); `params` assembles them.
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
