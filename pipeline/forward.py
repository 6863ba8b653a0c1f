"""The forward pass training and evaluation share: uint8 images into the model's inputs, and a
split's logits in batches, under bf16 autocast where asked. One place, so the evaluate stage
computes the same bits training measured without importing the training engine (an edit of the
training loop re-runs training, not evaluation)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pipeline.datasets import PIXEL_MAX

EVAL_BATCH = 1024  # images per forward pass when only logits are wanted


def model_inputs(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 images (N x C x H x W, 0-255) as the float inputs every model takes."""
    x = images.to(torch.float32).div_(float(PIXEL_MAX))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def logits(model: nn.Module, images: torch.Tensor, device_type: str, bf16: bool,
           channels_last: bool,
           transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """`transform`: applied to the float inputs, in fp32 (training's augmentation)."""
    if transform is None:
        x = model_inputs(images, channels_last)
    else:
        x = transform(model_inputs(images, channels_last=False))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        return model(x).float()


@torch.no_grad()
def batched_logits(model: nn.Module, images: torch.Tensor, device_type: str, bf16: bool,
                   channels_last: bool) -> torch.Tensor:
    """The logits of every image, EVAL_BATCH at a time (an empty split still runs once)."""
    return torch.cat([logits(model, images[start : start + EVAL_BATCH], device_type, bf16,
                             channels_last)
                      for start in range(0, max(len(images), 1), EVAL_BATCH)])
