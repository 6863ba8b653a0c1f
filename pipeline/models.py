"""The architectures' torch code: one builder per architecture of pipeline/architectures.py.

`build(architecture, input_shape, num_classes)` returns the torch module for any C x H x W input
and class count. Each builder returns named layers, so checkpoints, the report's layer table and
its filter views name them the same way.

Parameter counts at 1x28x28 with 10 classes, as in the tutorials these come from: `linearnet`
218,058 (LinearNet), `cnn` 26,194 (the 4-block CNN), `convnet` with channels [32, 64] 50,186 (the
Keras MNIST example; 60,362 at 3x32x32) and with [32, 64, 128] + hidden [625] 1,379,557 (the
3-conv + FC625 net), `simple_convnet` 433,890 ("Deep Learning from Scratch" SimpleConvNet),
`deep_mnist` 3,274,634 (TensorFlow's "deep MNIST" CNN).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from torch import nn

from pipeline.architectures import (
    Architecture,
    Cnn,
    ConvNet,
    DeepMnist,
    Linear,
    LinearNet,
    ModelError,
    Shape,
    SimpleConvNet,
)

Layers = list[tuple[str, nn.Module]]


def _activation(architecture: Architecture) -> nn.Module:
    return (nn.ReLU() if architecture.activation == "relu"
            else nn.LeakyReLU(architecture.negative_slope))


def _same_conv_blocks(architecture: ConvNet | DeepMnist, input_shape: Shape, ceil_mode: bool
                      ) -> tuple[Layers, Shape]:
    """[Conv "same" -> activation -> MaxPool2] per entry of `channels`, pooling while the map is
    at least 2x2."""
    in_channels, height, width = input_shape
    layers: Layers = []
    for i, out_channels in enumerate(architecture.channels, start=1):
        layers += [(f"conv{i}", nn.Conv2d(in_channels, out_channels, architecture.kernel_size,
                                          padding=architecture.kernel_size // 2)),
                   (f"act{i}", _activation(architecture))]
        if min(height, width) >= 2:
            layers.append((f"pool{i}", nn.MaxPool2d(2, ceil_mode=ceil_mode)))
            rounding = -(-height // 2), -(-width // 2)
            height, width = rounding if ceil_mode else (height // 2, width // 2)
        in_channels = out_channels
    return layers, (in_channels, height, width)


def linear_layers(architecture: Linear, input_shape: Shape, num_classes: int) -> Layers:
    c, h, w = input_shape
    return [("flatten", nn.Flatten()), ("fc", nn.Linear(c * h * w, num_classes))]


def linearnet_layers(architecture: LinearNet, input_shape: Shape, num_classes: int) -> Layers:
    c, h, w = input_shape
    layers: Layers = [("flatten", nn.Flatten())]
    width = c * h * w
    for i, size in enumerate(architecture.hidden, start=1):
        layers += [(f"fc{i}", nn.Linear(width, size)), (f"act{i}", _activation(architecture))]
        width = size
    return layers + [(f"fc{len(architecture.hidden) + 1}", nn.Linear(width, num_classes))]


def cnn_layers(architecture: Cnn, input_shape: Shape, num_classes: int) -> Layers:
    in_channels, height, width = input_shape
    layers: Layers = []
    for i, out_channels in enumerate(architecture.channels, start=1):
        layers.append((f"conv{i}", nn.Conv2d(in_channels, out_channels, architecture.kernel_size,
                                             padding=architecture.kernel_size // 2)))
        if min(height, width) >= 2:
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
            height, width = height // 2, width // 2
        layers.append((f"act{i}", _activation(architecture)))
        in_channels = out_channels
    return layers + [
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(in_channels, architecture.head_hidden)),
        ("act_fc1", _activation(architecture)),
        *([("drop_fc1", nn.Dropout(architecture.dropout))] if architecture.dropout else []),
        ("fc2", nn.Linear(architecture.head_hidden, num_classes)),
    ]


def convnet_layers(architecture: ConvNet, input_shape: Shape, num_classes: int) -> Layers:
    layers, (in_channels, height, width) = _same_conv_blocks(architecture, input_shape,
                                                             ceil_mode=True)
    layers.append(("flatten", nn.Flatten()))
    size = in_channels * height * width
    for i, hidden in enumerate(architecture.hidden, start=1):
        layers += [(f"drop{i}", nn.Dropout(architecture.dropout)),
                   (f"fc{i}", nn.Linear(size, hidden)),
                   (f"act_fc{i}", _activation(architecture))]
        size = hidden
    last = len(architecture.hidden) + 1
    return layers + [(f"drop{last}", nn.Dropout(architecture.dropout)),
                     (f"fc{last}", nn.Linear(size, num_classes))]


def simple_convnet_layers(architecture: SimpleConvNet, input_shape: Shape, num_classes: int
                          ) -> Layers:
    in_channels, height, width = input_shape
    kernel = architecture.kernel_size
    if kernel > min(height, width):
        raise ModelError(
            f"simple_convnet: kernel_size {kernel} is larger than the {height}x{width} images; "
            f"use a kernel of at most {min(height, width)}")
    height, width = height - kernel + 1, width - kernel + 1
    layers: Layers = [("conv1", nn.Conv2d(in_channels, architecture.filters, kernel)),
                      ("act1", _activation(architecture))]
    if min(height, width) >= 2:
        layers.append(("pool1", nn.MaxPool2d(2)))
        height, width = height // 2, width // 2
    return layers + [
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(architecture.filters * height * width, architecture.hidden)),
        ("act_fc1", _activation(architecture)),
        ("fc2", nn.Linear(architecture.hidden, num_classes)),
    ]


def deep_mnist_layers(architecture: DeepMnist, input_shape: Shape, num_classes: int) -> Layers:
    layers, (in_channels, height, width) = _same_conv_blocks(architecture, input_shape,
                                                             ceil_mode=False)
    return layers + [
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(in_channels * height * width, architecture.hidden)),
        ("act_fc1", _activation(architecture)),
        ("drop", nn.Dropout(architecture.dropout)),
        ("fc2", nn.Linear(architecture.hidden, num_classes)),
    ]


# Each architecture's layers, by the names of pipeline/architectures.py (a test checks they agree).
BUILDERS: dict[str, Callable[[Any, Shape, int], Layers]] = {
    "linear": linear_layers, "linearnet": linearnet_layers, "cnn": cnn_layers,
    "convnet": convnet_layers, "simple_convnet": simple_convnet_layers,
    "deep_mnist": deep_mnist_layers,
}


def build(architecture: Architecture, input_shape: tuple[int, ...], num_classes: int
          ) -> nn.Module:
    """The architecture's torch module for C x H x W inputs and `num_classes` outputs."""
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ModelError(f"input shape must be (C, H, W) with sizes >= 1, got {input_shape}")
    if num_classes < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got {num_classes}")
    layers = BUILDERS[architecture.arch](architecture, cast(Shape, tuple(input_shape)),
                                         num_classes)
    return nn.Sequential(OrderedDict(layers))


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
