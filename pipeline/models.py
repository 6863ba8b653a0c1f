"""The architectures: one registry entry per architecture, its params schema beside its builder.

Each entry is a config class (the fields a `models:` entry in params.yaml may set, with their
defaults) whose `build()` returns the torch module for any C x H x W input and class count, and
which says whether it is convolutional (channels-last and the report's filter views apply).
`ARCHITECTURES` is the registry: the params `arch` choices and the checkpoint format derive from
it, so a new architecture is one class here plus a params.yaml entry. torch is imported only
when a model is built, so reading params stays fast.

Parameter counts at 1x28x28 with 10 classes, as in the tutorials these come from: `linearnet`
218,058 (LinearNet), `cnn` 26,194 (the 4-block CNN), `convnet` with channels [32, 64] 50,186 (the
Keras MNIST example; 60,362 at 3x32x32) and with [32, 64, 128] + hidden [625] 1,379,557 (the
3-conv + FC625 net), `simple_convnet` 433,890 ("Deep Learning from Scratch" SimpleConvNet),
`deep_mnist` 3,274,634 (TensorFlow's "deep MNIST" CNN).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, cast

from pydantic import Field, field_validator

from pipeline.errors import PipelineError
from pipeline.schema import PositiveInt, Strict

if TYPE_CHECKING:
    from torch import nn

Shape = tuple[int, int, int]  # C, H, W


class ModelError(PipelineError, ValueError):
    """An architecture cannot be built for the data it is given."""


class Architecture(Strict):
    """Fields every architecture has; subclasses add theirs and `arch`, their registry name."""

    convolutional: ClassVar[bool] = False
    arch: str
    activation: Literal["leaky_relu", "relu"] = "leaky_relu"
    negative_slope: Annotated[float, Field(ge=0)] = 0.01  # LeakyReLU's default, as in the tutorials

    def act(self) -> nn.Module:
        from torch import nn

        return nn.ReLU() if self.activation == "relu" else nn.LeakyReLU(self.negative_slope)

    def layers(self, input_shape: Shape, num_classes: int) -> list[tuple[str, nn.Module]]:
        raise NotImplementedError

    def build(self, input_shape: Shape, num_classes: int) -> nn.Module:
        from torch import nn

        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ModelError(f"input shape must be (C, H, W) with sizes >= 1, got {input_shape}")
        if num_classes < 2:
            raise ModelError(f"a classifier needs at least 2 classes, got {num_classes}")
        return nn.Sequential(OrderedDict(self.layers(cast(Shape, tuple(input_shape)),
                                                     num_classes)))


class _SameConvStack(Architecture):
    """[Conv "same" -> activation -> MaxPool2] per entry of `channels`, pooling while the map is
    at least 2x2."""

    channels: list[PositiveInt]
    kernel_size: PositiveInt

    def conv_blocks(self, input_shape: Shape, ceil_mode: bool
                    ) -> tuple[list[tuple[str, nn.Module]], Shape]:
        from torch import nn

        in_channels, height, width = input_shape
        layers: list[tuple[str, nn.Module]] = []
        for i, out_channels in enumerate(self.channels, start=1):
            layers += [(f"conv{i}", nn.Conv2d(in_channels, out_channels, self.kernel_size,
                                              padding=self.kernel_size // 2)),
                       (f"act{i}", self.act())]
            if min(height, width) >= 2:
                layers.append((f"pool{i}", nn.MaxPool2d(2, ceil_mode=ceil_mode)))
                rounding = -(-height // 2), -(-width // 2)
                height, width = rounding if ceil_mode else (height // 2, width // 2)
            in_channels = out_channels
        return layers, (in_channels, height, width)


def _odd(kernel_size: int) -> int:
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd so 'same' padding keeps the size (got {kernel_size})")
    return kernel_size


class Linear(Architecture):
    """Softmax regression, the baseline: Flatten -> Linear."""

    arch: Literal["linear"] = "linear"

    def layers(self, input_shape: Shape, num_classes: int) -> list[tuple[str, nn.Module]]:
        from torch import nn

        c, h, w = input_shape
        return [("flatten", nn.Flatten()), ("fc", nn.Linear(c * h * w, num_classes))]


class LinearNet(Architecture):
    """The tutorial's fully connected net: [Linear -> activation] per hidden size, Linear."""

    arch: Literal["linearnet"] = "linearnet"
    hidden: list[PositiveInt] = [256, 64]

    def layers(self, input_shape: Shape, num_classes: int) -> list[tuple[str, nn.Module]]:
        from torch import nn

        c, h, w = input_shape
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        width = c * h * w
        for i, size in enumerate(self.hidden, start=1):
            layers += [(f"fc{i}", nn.Linear(width, size)), (f"act{i}", self.act())]
            width = size
        return layers + [(f"fc{len(self.hidden) + 1}", nn.Linear(width, num_classes))]


class Cnn(Architecture):
    """The tutorial's CNN: [Conv "same" -> MaxPool2 -> activation] blocks (pooling while the map
    is at least 2x2), global average pool, then Linear -> activation -> Linear."""

    convolutional: ClassVar[bool] = True
    arch: Literal["cnn"] = "cnn"
    channels: list[PositiveInt] = Field([8, 16, 32, 64], min_length=1)
    kernel_size: PositiveInt = 3
    head_hidden: PositiveInt = 24

    _kernel = field_validator("kernel_size")(lambda cls, k: _odd(k))

    def layers(self, input_shape: Shape, num_classes: int) -> list[tuple[str, nn.Module]]:
        from torch import nn

        in_channels, height, width = input_shape
        layers: list[tuple[str, nn.Module]] = []
        for i, out_channels in enumerate(self.channels, start=1):
            layers.append((f"conv{i}", nn.Conv2d(in_channels, out_channels, self.kernel_size,
                                                 padding=self.kernel_size // 2)))
            if min(height, width) >= 2:
                layers.append((f"pool{i}", nn.MaxPool2d(2)))
                height, width = height // 2, width // 2
            layers.append((f"act{i}", self.act()))
            in_channels = out_channels
        return layers + [
            ("gap", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(in_channels, self.head_hidden)),
            ("act_fc1", self.act()),
            ("fc2", nn.Linear(self.head_hidden, num_classes)),
        ]


class ConvNet(_SameConvStack):
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

    def layers(self, input_shape: Shape, num_classes: int) -> list[tuple[str, nn.Module]]:
        from torch import nn

        layers, (in_channels, height, width) = self.conv_blocks(input_shape, ceil_mode=True)
        layers.append(("flatten", nn.Flatten()))
        size = in_channels * height * width
        for i, hidden in enumerate(self.hidden, start=1):
            layers += [(f"drop{i}", nn.Dropout(self.dropout)), (f"fc{i}", nn.Linear(size, hidden)),
                       (f"act_fc{i}", self.act())]
            size = hidden
        last = len(self.hidden) + 1
        return layers + [(f"drop{last}", nn.Dropout(self.dropout)),
                         (f"fc{last}", nn.Linear(size, num_classes))]


class SimpleConvNet(Architecture):
    """"Deep Learning from Scratch"'s SimpleConvNet: one Conv (no padding, stride 1) ->
    activation -> MaxPool2, then Linear -> activation -> Linear."""

    convolutional: ClassVar[bool] = True
    arch: Literal["simple_convnet"] = "simple_convnet"
    activation: Literal["leaky_relu", "relu"] = "relu"
    filters: PositiveInt = 30
    kernel_size: PositiveInt = 5
    hidden: PositiveInt = 100

    def layers(self, input_shape: Shape, num_classes: int) -> list[tuple[str, nn.Module]]:
        from torch import nn

        in_channels, height, width = input_shape
        if self.kernel_size > min(height, width):
            raise ModelError(
                f"simple_convnet: kernel_size {self.kernel_size} is larger than the {height}x"
                f"{width} images; use a kernel of at most {min(height, width)}")
        height, width = height - self.kernel_size + 1, width - self.kernel_size + 1
        layers: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(in_channels, self.filters, self.kernel_size)),
            ("act1", self.act())]
        if min(height, width) >= 2:
            layers.append(("pool1", nn.MaxPool2d(2)))
            height, width = height // 2, width // 2
        return layers + [
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(self.filters * height * width, self.hidden)),
            ("act_fc1", self.act()),
            ("fc2", nn.Linear(self.hidden, num_classes)),
        ]


class DeepMnist(_SameConvStack):
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

    def layers(self, input_shape: Shape, num_classes: int) -> list[tuple[str, nn.Module]]:
        from torch import nn

        layers, (in_channels, height, width) = self.conv_blocks(input_shape, ceil_mode=False)
        return layers + [
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(in_channels * height * width, self.hidden)),
            ("act_fc1", self.act()),
            ("drop", nn.Dropout(self.dropout)),
            ("fc2", nn.Linear(self.hidden, num_classes)),
        ]


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


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


def layer_summary(model: nn.Module, input_shape: Shape) -> list[LayerRow]:
    """Per leaf layer: output shape for a batch of one and parameter count (like torchsummary)."""
    import torch

    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        if list(module.children()):
            continue

        def record(mod: nn.Module, _inputs, output, name: str = name) -> None:
            rows.append(LayerRow(name, type(mod).__name__, tuple(output.shape),
                                 sum(p.numel() for p in mod.parameters(recurse=False))))

        hooks.append(module.register_forward_hook(record))
    try:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return rows
