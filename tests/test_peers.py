"""The benchmark's peers train what the pipeline trains: same weights, same schedule, fair turns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.peers import EpochTurns, keras_copy, one_cycle
from pipeline.architectures import Cnn, LinearNet
from pipeline.models import build
from pipeline.params import TrainSettings

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("architecture", [Cnn(), LinearNet()], ids=["cnn", "linearnet"])
def test_the_keras_copy_computes_what_the_torch_model_computes(architecture, data_format):
    torch.manual_seed(3)
    model = build(architecture, (1, 28, 28), 10).eval()
    images = torch.rand(6, 1, 28, 28)
    copy = keras_copy(model, (1, 28, 28), "float32", data_format)
    inputs = images.numpy() if data_format == "channels_first" \
        else images.permute(0, 2, 3, 1).numpy()
    theirs = np.asarray(copy.predict(inputs, verbose=0))
    with torch.no_grad():
        ours = model(images).numpy()
    np.testing.assert_allclose(theirs, ours, atol=2e-5)
    assert copy.count_params() == sum(p.numel() for p in model.parameters())


def test_a_layer_keras_cannot_copy_is_refused_by_name():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2))
    with pytest.raises(ValueError, match="stride-1 'same' convolutions"):
        keras_copy(model, (1, 8, 8), "float32", "channels_first")


def test_the_keras_one_cycle_schedule_follows_torch_step_by_step():
    settings = TrainSettings(epochs=3, batch_size=10, lr=0.02)
    steps_per_epoch = 7
    schedule = one_cycle(settings, steps_per_epoch)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=settings.lr)
    torch_schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch,
        cycle_momentum=False)
    for step in range(settings.epochs * steps_per_epoch):
        expected = optimizer.param_groups[0]["lr"]
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step
        optimizer.step()
        torch_schedule.step()


def fake_turns(name: str, epochs: int, log: list, fail_at: int | None = None) -> EpochTurns:
    """Turns over a fake fit() that logs each epoch, as a framework calls its callbacks."""
    def fit() -> None:
        for epoch in range(epochs):
            turns.epoch_begin()
            if epoch == fail_at:
                raise OSError("disk full")
            log.append(epoch)
            turns.epoch_end()
        log.append("done")

    turns = EpochTurns(name, fit)
    return turns


def test_epoch_turns_run_one_epoch_at_a_time_and_finish():
    log: list = []
    turns = fake_turns("fake", 3, log)
    assert log == []
    assert turns.run_epoch() >= 0 and log == [0]
    log.append("between")  # the other loops run here, on the same thread
    turns.run_epoch()
    turns.run_epoch()
    assert log == [0, "between", 1, 2]
    turns.finish()
    assert log[-1] == "done" and len(turns.epoch_seconds) == 3


def test_epoch_turns_report_a_failing_or_short_fit():
    failing = fake_turns("fake", 3, [], fail_at=1)
    failing.run_epoch()
    with pytest.raises(OSError, match="disk full"):
        failing.run_epoch()

    short = fake_turns("short", 1, [])
    short.run_epoch()
    with pytest.raises(RuntimeError, match="short: fit\\(\\) ended after 1 epochs"):
        short.run_epoch()

    long = fake_turns("long", 3, [])
    long.run_epoch()
    with pytest.raises(RuntimeError, match="wants more epochs"):
        long.finish()
