"""Adam and AdamW on CPU, and the one-cycle schedule, without torch.optim's classes.

torch.optim's `Optimizer` imports torch._dynamo the first time one is made and in every `step()`
(both go through dynamo-disabling wrappers), a large share of a short train stage
(docs/performance.md, "Hand-rolled replacements"). `FusedAdam` keeps the state
itself and calls the functional `torch.optim.adam.adam` with the fused kernel, as
`torch.optim.Adam(fused=True)` does, so its updates are the same bits; `OneCycle` sets
`OneCycleLR`'s learning rate (and SGD's cycled momentum) on any optimizer's `param_groups`,
a tensor learning rate included (a CUDA graph reads it from the device). tests/test_optim.py
checks both against torch's classes step by step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.adam import adam


class FusedAdam:
    """Adam (`decoupled=False`) or AdamW on parameters on one CPU or GPU, with torch's defaults:
    betas (0.9, 0.999), eps 1e-8, no amsgrad."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
                 decoupled: bool):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.betas = (0.9, 0.999)
        self.param_groups = [{"lr": lr, "weight_decay": weight_decay}]
        self.decoupled = decoupled
        # per parameter: its step count (a float32 tensor, as the fused kernel wants it),
        # the moving averages of its gradient and of its square
        self.state: dict[torch.nn.Parameter, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        params: list[torch.Tensor] = []
        grads, averages, squares, steps = [], [], [], []
        for p in self.params:
            if p.grad is None:
                continue
            if p not in self.state:
                self.state[p] = (torch.zeros((), dtype=torch.float32, device=p.device),
                                 torch.zeros_like(p, memory_format=torch.preserve_format),
                                 torch.zeros_like(p, memory_format=torch.preserve_format))
            step, average, square = self.state[p]
            params.append(p)
            grads.append(p.grad)
            averages.append(average)
            squares.append(square)
            steps.append(step)
        adam(params, grads, averages, squares, [], steps, fused=True,
             decoupled_weight_decay=self.decoupled, amsgrad=False, beta1=self.betas[0],
             beta2=self.betas[1], lr=group["lr"], weight_decay=group["weight_decay"], eps=1e-8,
             maximize=False)


class OneCycle:
    """torch's `OneCycleLR` with its defaults (cosine, 30 % warm-up from max_lr/25 to max_lr,
    then down to max_lr/25/1e4; with `cycle_momentum`, momentum from 0.95 to 0.85 and back),
    stepped once per batch like it."""

    PCT_START, DIV_FACTOR, FINAL_DIV_FACTOR = 0.3, 25.0, 1e4
    BASE_MOMENTUM, MAX_MOMENTUM = 0.85, 0.95

    def __init__(self, optimizer, max_lr: float, total_steps: int, cycle_momentum: bool):
        self.optimizer = optimizer
        self.cycle_momentum = cycle_momentum
        initial = max_lr / self.DIV_FACTOR
        # (last step of the phase, its learning rates from and to, its momentums from and to)
        self.phases = [
            (float(self.PCT_START * total_steps) - 1, initial, max_lr,
             self.MAX_MOMENTUM, self.BASE_MOMENTUM),
            (total_steps - 1, max_lr, initial / self.FINAL_DIV_FACTOR,
             self.BASE_MOMENTUM, self.MAX_MOMENTUM),
        ]
        self.step_count = 0
        self.apply()

    @staticmethod
    def _anneal(start: float, end: float, fraction: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1)

    def apply(self) -> None:
        """Set the learning rate (and momentum) of the current step."""
        start_step = 0.0
        for index, (end_step, lr_from, lr_to, momentum_from, momentum_to) in enumerate(
                self.phases):
            if self.step_count <= end_step or index == len(self.phases) - 1:
                fraction = (self.step_count - start_step) / (end_step - start_step)
                lr = self._anneal(lr_from, lr_to, fraction)
                momentum = self._anneal(momentum_from, momentum_to, fraction)
                break
            start_step = end_step
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
            if self.cycle_momentum:
                group["momentum"] = momentum

    def step(self) -> None:
        self.step_count += 1
        self.apply()
