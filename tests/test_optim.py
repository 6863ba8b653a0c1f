"""pipeline/optim.py against the torch.optim classes it stands in for: the same bits."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from pipeline.architectures import Cnn
from pipeline.models import build
from pipeline.optim import FusedAdam, OneCycle
from tests.conftest import ROOT


def train_steps(model: torch.nn.Module, optimizer, schedule, steps: int) -> list[float]:
    """Steps on fixed random batches; the learning rate seen at each step."""
    generator = torch.Generator().manual_seed(5)
    rates = []
    for _ in range(steps):
        images = torch.rand(8, 1, 6, 6, generator=generator)
        labels = torch.randint(0, 3, (8,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return rates


def two_copies() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = build(Cnn(channels=[4, 8], head_hidden=6), (1, 6, 6), 3)
    copy = build(Cnn(channels=[4, 8], head_hidden=6), (1, 6, 6), 3)
    copy.load_state_dict(model.state_dict())
    return model, copy


@pytest.mark.parametrize(("name", "weight_decay", "scheduled"), [
    ("adam", 0.0, True), ("adam", 0.01, False), ("adamw", 0.05, True)])
def test_fused_adam_and_one_cycle_give_torch_optims_weights_bit_for_bit(name, weight_decay,
                                                                        scheduled):
    ours_model, theirs_model = two_copies()
    ours = FusedAdam(ours_model.parameters(), 0.02, weight_decay, decoupled=name == "adamw")
    theirs_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    theirs = theirs_class(theirs_model.parameters(), lr=0.02, weight_decay=weight_decay,
                          fused=True)
    steps = 25
    ours_schedule = OneCycle(ours, 0.02, steps, cycle_momentum=False) if scheduled else None
    theirs_schedule = torch.optim.lr_scheduler.OneCycleLR(
        theirs, max_lr=0.02, total_steps=steps, cycle_momentum=False) if scheduled else None
    ours_rates = train_steps(ours_model, ours, ours_schedule, steps)
    theirs_rates = train_steps(theirs_model, theirs, theirs_schedule, steps)
    assert ours_rates == theirs_rates
    assert len(set(ours_rates)) == (steps if scheduled else 1)
    for (key, value), theirs_value in zip(ours_model.state_dict().items(),
                                          theirs_model.state_dict().values(), strict=True):
        assert torch.equal(value, theirs_value), key
        assert not torch.equal(value, two_copies()[0].state_dict()[key]), f"{key} never moved"


def test_one_cycle_cycles_sgd_momentum_like_torch_and_fills_a_tensor_rate_in_place():
    model, _ = two_copies()
    ours = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ours_schedule = OneCycle(ours, 0.1, 40, cycle_momentum=True)
    theirs_schedule = torch.optim.lr_scheduler.OneCycleLR(theirs, max_lr=0.1, total_steps=40)
    for _ in range(40):
        for key in ("lr", "momentum"):
            assert ours.param_groups[0][key] == theirs.param_groups[0][key], key
        theirs.step()
        theirs_schedule.step()
        ours_schedule.step()
    rate = torch.tensor(0.5)
    holder = FusedAdam(model.parameters(), rate, 0.0, decoupled=False)
    OneCycle(holder, 0.5, 10, cycle_momentum=False).step()
    assert holder.param_groups[0]["lr"] is rate and 0.02 < float(rate) < 0.5


def test_a_cpu_training_run_never_imports_torch_dynamo():
    """torch.optim's classes import torch._dynamo (0.8 s of every train stage process)."""
    script = textwrap.dedent("""
        import sys
        from pipeline.engine import fit
        from pipeline.architectures import Cnn
        from pipeline.params import TrainSettings
        from tests.conftest import CPU, toy_splits
        fit(Cnn(channels=[4], head_hidden=4), TrainSettings(epochs=2, batch_size=16),
            toy_splits(), CPU, seed=0, log=lambda line: None)
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
