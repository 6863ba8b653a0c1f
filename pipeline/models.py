"""The models: a config object, the architectures, parameter counts and a layer table.

For a 1x28x28 input and 10 classes, `linearnet` and `cnn` are exactly the tutorials' LinearNet
(218,058 parameters) and CNN (26,194 parameters); `convnet` with channels [32, 64] and no hidden
layer is the Keras MNIST example (50,186; 60,362 at 3x32x32) and with channels [32, 64, 128] and
hidden [625] the 3-conv + FC625 tutorial net. Every architecture is built for any C x H x W input:
convolutions keep the size ("same" padding) and pooling stops once the map is 1 pixel high or wide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

ARCHITECTURES = ("linear", "linearnet", "cnn", "convnet")
CONV_ARCHITECTURES = ("cnn", "convnet")
ACTIVATIONS = ("leaky_relu", "relu")


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    hidden: tuple[int, ...] = (256, 64)  # linearnet
    channels: tuple[int, ...] = (8, 16, 32, 64)  # cnn
    kernel_size: int = 3  # cnn
    head_hidden: int = 24  # cnn
    negative_slope: float = 0.01  # LeakyReLU's default, as in the tutorials
    activation: str = "leaky_relu"  # linearnet, cnn, convnet
    dropout: float = 0.0  # convnet: before every Linear layer of the head

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch {self.arch!r} is not one of {', '.join(ARCHITECTURES)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of "
                             f"{', '.join(ACTIVATIONS)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) with sizes >= 1: {self.input_shape}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")

    def to_dict(self) -> dict:
        return asdict(self)

    def act(self) -> nn.Module:
        if self.activation == "relu":
            return nn.ReLU()
        return nn.LeakyReLU(self.negative_slope)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        fields = dict(data)
        for key in ("input_shape", "hidden", "channels"):
            fields[key] = tuple(fields[key])
        return cls(**fields)


class SoftmaxRegression(nn.Module):
    """The linear baseline: one affine map from pixels to class logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c, h, w = config.input_shape
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c * h * w, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(x))


class LinearNet(nn.Module):
    """The tutorial's fully connected net: Linear-LeakyReLU blocks, then a Linear to classes."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c, h, w = config.input_shape
        layers: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        for size in config.hidden:
            layers += [nn.Linear(width, size), config.act()]
            width = size
        layers.append(nn.Linear(width, config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """The tutorial's CNN: [Conv -> MaxPool2 -> LeakyReLU] blocks, global average pool, MLP head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        in_channels, height, width = config.input_shape
        blocks: list[nn.Module] = []
        for out_channels in config.channels:
            blocks.append(nn.Conv2d(in_channels, out_channels, config.kernel_size,
                                    padding=config.kernel_size // 2))
            if min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            blocks.append(config.act())
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels, config.head_hidden),
            config.act(),
            nn.Linear(config.head_hidden, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


class ConvNet(nn.Module):
    """[Conv ("same") -> activation -> MaxPool2] blocks, flatten, then a dropout + Linear head.

    Pooling rounds up (ceil mode), as the 3-conv tutorial's padded last pool does (7x7 -> 4x4).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        in_channels, height, width = config.input_shape
        blocks: list[nn.Module] = []
        for out_channels in config.channels:
            blocks += [nn.Conv2d(in_channels, out_channels, config.kernel_size,
                                 padding=config.kernel_size // 2), config.act()]
            if min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
                height, width = -(-height // 2), -(-width // 2)
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten()]
        size = in_channels * height * width
        for hidden in config.hidden:
            head += [nn.Dropout(config.dropout), nn.Linear(size, hidden), config.act()]
            size = hidden
        head += [nn.Dropout(config.dropout), nn.Linear(size, config.num_classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


_BUILDERS = {"linear": SoftmaxRegression, "linearnet": LinearNet, "cnn": CNN, "convnet": ConvNet}


def build_model(config: ModelConfig) -> nn.Module:
    return _BUILDERS[config.arch](config)


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    extra: dict = field(default_factory=dict)


def layer_summary(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerRow]:
    """Per leaf layer: output shape for a batch of one and parameter count (like torchsummary)."""
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


def format_summary(rows: list[LayerRow]) -> str:
    lines = [f"{'Layer (type)':<32}{'Output Shape':<24}{'Param #':>12}", "=" * 68]
    for row in rows:
        shape = "[" + ", ".join(["-1", *map(str, row.output_shape[1:])]) + "]"
        lines.append(f"{row.name + ' (' + row.kind + ')':<32}{shape:<24}{row.params:>12,}")
    lines += ["=" * 68, f"Total params: {sum(r.params for r in rows):,}"]
    return "\n".join(lines)
