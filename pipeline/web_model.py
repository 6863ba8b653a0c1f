"""A trained model as plain layer records for the report's in-browser forward pass
(pipeline/templates/draw.js runs them): kind, shapes and float32 weights per layer, in order.

Only the layers the project's architectures use are described (conv, max and adaptive-average
pooling, ReLU/LeakyReLU, flatten, linear, dropout as identity); anything else makes the model
"not exportable" (None), and the report says so instead of guessing.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from pipeline.forward import model_inputs

SELFTEST_IMAGES = 8  # test images the page re-classifies with #selftest


def _pair(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, tuple | list) else [int(value)] * 2


def _weights(tensor) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().float().cpu().numpy().ravel().copy()


def describe_layer(module: nn.Module) -> dict | None:
    if isinstance(module, nn.Conv2d):
        if _pair(module.dilation) != [1, 1] or module.groups != 1:
            return None
        left, right, top, bottom = (int(v) for v in module._reversed_padding_repeated_twice)
        return {"kind": "conv2d", "out": module.out_channels, "in": module.in_channels,
                "kernel": _pair(module.kernel_size), "stride": _pair(module.stride),
                "padding": [top, bottom, left, right], "weight": _weights(module.weight),
                "bias": _weights(module.bias)}
    if isinstance(module, nn.MaxPool2d):
        if _pair(module.dilation) != [1, 1]:
            return None
        return {"kind": "maxpool", "kernel": _pair(module.kernel_size),
                "stride": _pair(module.stride or module.kernel_size),
                "padding": _pair(module.padding), "ceil": bool(module.ceil_mode)}
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return {"kind": "adaptiveavgpool", "size": _pair(module.output_size)}
    if isinstance(module, nn.Linear):
        return {"kind": "linear", "out": module.out_features, "in": module.in_features,
                "weight": _weights(module.weight), "bias": _weights(module.bias)}
    if isinstance(module, nn.LeakyReLU):
        return {"kind": "leakyrelu", "slope": float(module.negative_slope)}
    if isinstance(module, nn.ReLU):
        return {"kind": "relu"}
    if isinstance(module, nn.Flatten):
        return {"kind": "flatten"}
    if isinstance(module, nn.Dropout):
        return {"kind": "identity"}
    return None


def export(model: nn.Module) -> list[dict] | None:
    """The model's layers in order, or None when one of them has no description."""
    layers = []
    for module in model.children():
        described = describe_layer(module)
        if described is None:
            return None
        layers.append(described)
    return layers


def reference_probabilities(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """PyTorch's fp32 class probabilities for uint8 images, what the page's selftest matches."""
    import torch

    with torch.no_grad():
        logits = model.eval()(model_inputs(torch.from_numpy(images), channels_last=False))
        return torch.softmax(logits.double(), dim=1).numpy()
