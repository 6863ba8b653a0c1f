"""What a `models:` entry in params.yaml may say about its architecture: one schema per
architecture, with its defaults and checks.

A leaf of the import graph (pydantic only): the torch code that builds each architecture
(pipeline/models.py) imports these classes, never the reverse, so editing a model's layers
re-runs training and what follows it, not the data stages. `ARCHITECTURES` is the registry: the
params `arch` choices, the builders and the checkpoint format derive from it, so a new
architecture is one class here, one builder there and a params.yaml entry.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from pipeline.errors import PipelineError
from pipeline.schema import PositiveInt, Strict

Shape = tuple[int, int, int]  # C, H, W


class ModelError(PipelineError, ValueError):
    """An architecture is unknown or cannot be built for the data it is given."""


def _odd(kernel_size: int) -> int:
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd so 'same' padding keeps the size (got {kernel_size})")
    return kernel_size


class Architecture(Strict):
    """Fields every architecture has; subclasses add theirs and `arch`, their registry name.
    `convolutional`: channels-last memory and the report's filter views apply."""

    convolutional: ClassVar[bool] = False
    arch: str
    activation: Literal["leaky_relu", "relu"] = "leaky_relu"
    negative_slope: Annotated[float, Field(ge=0)] = 0.01  # LeakyReLU's default, as in the tutorials


class Linear(Architecture):
    """Softmax regression, the baseline: Flatten -> Linear."""

    arch: Literal["linear"] = "linear"


class LinearNet(Architecture):
    """The tutorial's fully connected net: [Linear -> activation] per hidden size, Linear."""

    arch: Literal["linearnet"] = "linearnet"
    hidden: list[PositiveInt] = [256, 64]


class Cnn(Architecture):
    """The tutorial's CNN: [Conv "same" -> MaxPool2 -> activation] blocks (pooling while the map
    is at least 2x2), global average pool, then Linear -> activation -> Linear (with Dropout
    before the last Linear when `dropout` > 0)."""

    convolutional: ClassVar[bool] = True
    arch: Literal["cnn"] = "cnn"
    channels: list[PositiveInt] = Field([8, 16, 32, 64], min_length=1)
    kernel_size: PositiveInt = 3
    head_hidden: PositiveInt = 24
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0

    _kernel = field_validator("kernel_size")(lambda cls, k: _odd(k))


class ConvNet(Architecture):
    """[Conv "same" -> activation -> MaxPool2 (ceil mode)] blocks, flatten, then a head of
    [Dropout -> Linear -> activation] per hidden size and Dropout -> Linear. Ceil-mode pooling
    is what the 3-conv tutorial's padded last pool does (7x7 -> 4x4)."""

    convolutional: ClassVar[bool] = True
    arch: Literal["convnet"] = "convnet"
    channels: list[PositiveInt] = Field([32, 64], min_length=1)
    kernel_size: PositiveInt = 3
    hidden: list[PositiveInt] = []
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0

    _kernel = field_validator("kernel_size")(lambda cls, k: _odd(k))


class SimpleConvNet(Architecture):
    """"Deep Learning from Scratch"'s SimpleConvNet: one Conv (no padding, stride 1) ->
    activation -> MaxPool2, then Linear -> activation -> Linear."""

    convolutional: ClassVar[bool] = True
    arch: Literal["simple_convnet"] = "simple_convnet"
    activation: Literal["leaky_relu", "relu"] = "relu"
    filters: PositiveInt = 30
    kernel_size: PositiveInt = 5
    hidden: PositiveInt = 100


class DeepMnist(Architecture):
    """TensorFlow's "deep MNIST" CNN: [Conv "same" -> activation -> MaxPool2] blocks, flatten,
    Linear -> activation -> Dropout -> Linear."""

    convolutional: ClassVar[bool] = True
    arch: Literal["deep_mnist"] = "deep_mnist"
    activation: Literal["leaky_relu", "relu"] = "relu"
    channels: list[PositiveInt] = Field([32, 64], min_length=1)
    kernel_size: PositiveInt = 5
    hidden: PositiveInt = 1024
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5

    _kernel = field_validator("kernel_size")(lambda cls, k: _odd(k))


ARCHITECTURES: dict[str, type[Architecture]] = {
    cls.model_fields["arch"].default: cls
    for cls in (Linear, LinearNet, Cnn, ConvNet, SimpleConvNet, DeepMnist)
}


def architecture_from_dict(data: dict) -> Architecture:
    """The architecture a checkpoint recorded (its `arch` names the registry entry)."""
    name = data.get("arch") if isinstance(data, dict) else None
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name].model_validate(data)
