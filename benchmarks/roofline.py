"""How close an epoch comes to what the machine can do: FLOPs counted from the layer shapes, and
the machine's measured peak for a large matmul (fp32 and bf16) and for convolutions at the
model's own shapes."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

MATMUL_SIDE = 2048  # 17 GFLOP per product: long enough to time, large enough to reach the peak
PEAK_REPEATS = 5


def train_flops_per_image(model: nn.Module, input_shape: tuple[int, ...], batch: int = 64
                          ) -> float:
    """Forward + backward FLOPs of one training image: torch's FlopCounterMode counts every
    matmul and convolution from its operand shapes (a multiply-add is 2 FLOPs)."""
    was_training = model.training
    model.train()
    images = torch.zeros(batch, *input_shape)
    with FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return counter.get_total_flops() / batch


def _best_seconds(action, device: torch.device) -> float:
    action()  # warm-up: first-call allocation and kernel selection
    best = float("inf")
    for _ in range(PEAK_REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        action()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of the best of several large square matrix products."""
    side = MATMUL_SIDE * (4 if device.type == "cuda" else 1)
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    repeats = 20 if device.type == "cuda" else 1

    def products() -> None:
        for _ in range(repeats):
            torch.mm(a, b)

    return repeats * 2 * side**3 / _best_seconds(products, device) / 1e9


@torch.no_grad()
def conv_peak(model: nn.Module, input_shape: tuple[int, ...], device: torch.device,
              dtype: torch.dtype, batch: int) -> float | None:
    """GFLOP/s of the fastest of the model's own convolutions (forward, channels-last, at the
    training batch size), run alone; None for a model without convolutions."""
    shapes: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    hooks = [module.register_forward_hook(
        lambda module, inputs, _: shapes.append((module, tuple(inputs[0].shape[1:]))))
        for module in model.modules() if isinstance(module, nn.Conv2d)]
    model(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()
    best = None
    for conv, shape in shapes:
        layer = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                          conv.stride, conv.padding).to(device, dtype,
                                                        memory_format=torch.channels_last)
        images = torch.randn(batch, *shape, device=device).to(dtype).contiguous(
            memory_format=torch.channels_last)
        with FlopCounterMode(display=False) as counter:
            layer(images)
        seconds = _best_seconds(lambda layer=layer, images=images: layer(images), device)
        gflops = counter.get_total_flops() / seconds / 1e9
        best = gflops if best is None else max(best, gflops)
    return best
