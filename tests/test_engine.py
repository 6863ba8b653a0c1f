from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.architectures import Cnn, Linear, LinearNet
from pipeline.engine import (
    EarlyStopper,
    Training,
    fit,
    make_optimizer,
    make_schedule,
    native_bf16,
    reset_optimizer_state,
    select_device,
    summarise,
)
from pipeline.models import build
from pipeline.optim import FusedAdam
from pipeline.params import EarlyStopping, ParamsError, TrainSettings
from pipeline.tracking import EpochRow
from tests.conftest import CPU, toy_splits

TOY = {"linear": Linear(), "linearnet": LinearNet(hidden=[16]),
       "cnn": Cnn(channels=[4, 8], head_hidden=8)}


@pytest.mark.parametrize("arch", list(TOY))
def test_fit_learns_a_separable_problem(arch):
    result = fit(TOY[arch], TrainSettings(epochs=8, batch_size=32, lr=0.01), toy_splits(), CPU,
                 seed=0, log=lambda _: None)
    assert len(result.history) == 8 and len(result.epoch_seconds) == 8
    assert result.test_accuracy >= 0.95
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.test_logits.shape == (64, 2)
    assert (result.test_logits.argmax(1) == toy_splits()["test"].labels).mean() == pytest.approx(
        result.test_accuracy)
    assert [row.epoch for row in result.history] == list(range(1, 9))


def test_training_is_deterministic_on_cpu():
    architecture = Cnn(channels=[4], head_hidden=4)
    settings = TrainSettings(epochs=2, batch_size=16)
    first = fit(architecture, settings, toy_splits(), CPU, seed=3, log=lambda _: None)
    second = fit(architecture, settings, toy_splits(), CPU, seed=3, log=lambda _: None)
    assert first.history == second.history
    for key, value in first.state_dict.items():
        assert torch.equal(value, second.state_dict[key])


def test_the_best_validation_epoch_weights_are_kept():
    result = fit(Linear(), TrainSettings(epochs=5, lr=0.05), toy_splits(), CPU, seed=0,
                 log=lambda _: None)
    best = max(result.history, key=lambda h: (h.valid_accuracy, -h.valid_loss))
    assert result.best_epoch == best.epoch


def test_training_keeps_the_weights_it_started_from():
    """Nothing has to re-seed to rebuild the initial weights: Training records them."""
    architecture = Cnn(channels=[4, 8], head_hidden=8)
    torch.manual_seed(3)
    expected = build(architecture, (1, 4, 4), 2).state_dict()
    training = Training(architecture, TrainSettings(epochs=1), toy_splits(), CPU, seed=3)
    training.run_epoch()
    result = training.finish()
    for name, value in expected.items():
        torch.testing.assert_close(result.initial_state_dict[name], value)
    assert not torch.equal(result.state_dict["conv1.weight"],
                           result.initial_state_dict["conv1.weight"])


def test_device_selection():
    assert select_device("cpu") == CPU
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ParamsError, match="no CUDA device"):
            select_device("cuda")


def test_seed_copies_are_summarised_with_their_ensemble():
    settings = TrainSettings(epochs=3, lr=0.05)
    splits = toy_splits()
    results = [fit(Linear(), settings, splits, CPU, seed=seed, log=lambda _: None)
               for seed in (0, 1, 2)]
    labels = splits["test"].labels
    summary = summarise(results, labels, n_params=34)
    assert summary.test_accuracy == round(results[0].test_accuracy, 6)
    assert summary.params == 34 and summary.seeds.count == 3
    accuracies = [r.test_accuracy for r in results]
    assert summary.seeds.test_accuracy_mean == pytest.approx(np.mean(accuracies), abs=1e-6)
    mean_logits = np.mean([r.test_logits for r in results], axis=0)
    assert summary.seeds.ensemble_test_accuracy == pytest.approx(
        (mean_logits.argmax(1) == labels).mean(), abs=1e-6)
    metrics = summary.metrics()
    assert metrics["seeds/count"] == 3 and metrics["test/accuracy"] == summary.test_accuracy
    assert summarise(results[:1], labels, n_params=34).seeds is None


def test_onecycle_warms_up_to_lr_and_anneals_while_constant_stays():
    model = build(Linear(), (1, 2, 2), 2)
    settings = TrainSettings(epochs=2, lr=0.1, schedule="onecycle")
    optimizer = make_optimizer(settings, model, CPU)
    schedule = make_schedule(settings, optimizer, steps_per_epoch=10)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] < 0.01 and max(rates) == pytest.approx(0.1, rel=0.05)
    assert rates.index(max(rates)) in range(4, 8) and rates[-1] < 0.001
    constant = TrainSettings(epochs=2, lr=0.1, schedule="constant")
    assert make_schedule(constant, make_optimizer(constant, model, CPU), 10) is None


def test_cpu_adam_uses_the_fused_kernel_and_bf16_detection_answers():
    model = build(Linear(), (1, 2, 2), 2)
    assert isinstance(make_optimizer(TrainSettings(), model, CPU), FusedAdam)
    assert isinstance(make_optimizer(TrainSettings(optimizer="adamw"), model, CPU), FusedAdam)
    assert isinstance(make_optimizer(TrainSettings(optimizer="sgd"), model, CPU), torch.optim.SGD)
    assert isinstance(native_bf16(CPU), bool)
    assert native_bf16(torch.device("meta")) is False


def test_bf16_autocast_training_on_a_native_bf16_cpu_still_learns():
    if not native_bf16(CPU):
        pytest.skip("this CPU has no native bf16, so training runs in fp32 here")
    result = fit(TOY["cnn"], TrainSettings(epochs=8, batch_size=32, lr=0.01), toy_splits(), CPU,
                 seed=0, amp=True, log=lambda line: None)
    assert result.test_accuracy > 0.9


def test_cuda_graphs_leave_a_cpu_run_as_it_was():
    settings = TrainSettings(epochs=2, batch_size=16)
    plain = Training(TOY["cnn"], settings, toy_splits(), CPU, seed=1)
    asked = Training(TOY["cnn"], settings, toy_splits(), CPU, seed=1, cuda_graphs=True)
    assert asked.runner.graphed is None
    assert not isinstance(asked.optimizer.param_groups[0]["lr"], torch.Tensor)
    for training in (plain, asked):
        training.run_epoch()
    for name, value in plain.runner.model.state_dict().items():
        assert torch.equal(value, asked.runner.model.state_dict()[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device; "
                    "run on one (the device tool) to check them")
@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
@pytest.mark.parametrize("arch", ["cnn", "linearnet"])
def test_cuda_graph_steps_train_as_the_eager_steps_do(arch, optimizer):
    """Replayed full batches and an eager last partial batch (256 = 5 x 48 + 16) give the weights
    and sums the eager loop gives, in fp32, up to float rounding."""
    cuda = torch.device("cuda")
    settings = TrainSettings(epochs=3, batch_size=48, lr=0.01, optimizer=optimizer)
    runs = {graphs: Training(TOY[arch], settings, toy_splits(), cuda, seed=2, amp=False,
                             cuda_graphs=graphs) for graphs in (False, True)}
    assert runs[True].runner.graphed is not None and runs[False].runner.graphed is None
    for training in runs.values():
        for _ in range(settings.epochs):
            training.run_epoch()
    eager, graphed = (runs[graphs] for graphs in (False, True))
    for name, value in eager.runner.model.state_dict().items():
        torch.testing.assert_close(graphed.runner.model.state_dict()[name], value,
                                   atol=1e-4, rtol=1e-4, msg=name)
    for ours, theirs in zip(graphed.history, eager.history, strict=True):
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=1e-4)
        assert ours.train_accuracy == theirs.train_accuracy
        assert ours.lr == pytest.approx(theirs.lr)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device; "
                    "run on one (the device tool) to check them")
def test_sgd_trains_eagerly_on_cuda_even_with_graphs_on():
    settings = TrainSettings(epochs=1, batch_size=48, lr=0.01, optimizer="sgd")
    training = Training(TOY["cnn"], settings, toy_splits(), torch.device("cuda"), seed=0,
                        cuda_graphs=True)
    assert training.runner.graphed is None
    assert training.run_epoch().train_loss > 0


@pytest.mark.parametrize("kind", ["torch.optim.Adam", "FusedAdam"])
def test_resetting_the_optimizer_state_starts_adam_afresh_in_place(kind):
    """What the CUDA graph path does after its warm-up steps, on CPU: torch.optim keeps a dict
    per parameter, FusedAdam a tuple; both must come back to a fresh start, in place."""
    def stepped(optimizer_class):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        optimizer = optimizer_class(model.parameters())
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(8, 4)).square().sum().backward()
            optimizer.step()
        return model, optimizer

    make = (lambda params: torch.optim.Adam(params, lr=0.01)) if kind == "torch.optim.Adam" \
        else (lambda params: FusedAdam(params, 0.01, 0.0, False))
    model, optimizer = stepped(make)
    tensors = [v for state in optimizer.state.values()
               for v in (state.values() if isinstance(state, dict) else state)
               if isinstance(v, torch.Tensor)]
    assert tensors and any(bool(t.abs().sum()) for t in tensors)
    reset_optimizer_state(optimizer)
    assert all(not bool(t.abs().sum()) for t in tensors)  # the same tensors, zeroed


def test_training_that_diverges_stops_with_a_clear_message():
    """Weights gone to NaN (poisoned here after the first epoch, as a too-large learning rate
    does) stop training at the next epoch, instead of training on garbage."""
    from pipeline.engine import TrainingError

    def poison(row, model) -> None:
        if row.epoch == 1:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"training diverged at epoch 2: the loss is nan on "
                                            r"train.*lower the learning rate \(now 0.05\)"):
        fit(Linear(), TrainSettings(epochs=4, lr=0.05), toy_splits(), CPU, seed=0,
            log=lambda _: None, on_epoch=poison)


def rows(*values: tuple[float, float]) -> list[EpochRow]:
    """History rows from (valid loss, valid accuracy) pairs; train loss 1."""
    return [EpochRow(epoch, 1.0, 0.5, loss, accuracy, 0.01)
            for epoch, (loss, accuracy) in enumerate(values, 1)]


def stops(rule: EarlyStopping, history: list[EpochRow]) -> list[str | None]:
    stopper = EarlyStopper(rule)
    return [stopper.stop_reason(row) for row in history]


def test_early_stopping_counts_epochs_without_improvement_of_the_monitored_metric():
    history = rows((0.5, 0.8), (0.4, 0.8), (0.45, 0.9), (0.41, 0.9), (0.42, 0.9))
    assert stops(EarlyStopping(), history) == [None] * 5
    by_loss = stops(EarlyStopping(patience=3), history)
    assert by_loss == [None, None, None, None,
                       "valid loss not better than 0.4000 for 3 epochs"]
    by_accuracy = stops(EarlyStopping(patience=2, monitor="valid_accuracy"), history)
    assert by_accuracy[:4] == [None, None, None, None]
    assert by_accuracy[4] == "valid accuracy not better than 0.9000 for 2 epochs"
    # 0.4 -> 0.39 is no improvement by 0.05: the count goes on from epoch 2
    almost = rows((0.5, 0.8), (0.4, 0.8), (0.39, 0.8), (0.38, 0.8))
    assert stops(EarlyStopping(patience=2, min_delta=0.05), almost)[3] == (
        "valid loss not better than 0.4000 by 0.05 for 2 epochs")


def test_a_training_loss_above_max_loss_stops_at_once():
    history = [EpochRow(1, 0.7, 0.5, 0.6, 0.6, 0.01), EpochRow(2, 9.5, 0.5, 9.0, 0.5, 0.01)]
    assert stops(EarlyStopping(max_loss=5), history) == [
        None, "diverging: train loss 9.5 above early_stopping.max_loss 5"]


def test_early_stopping_ends_fit_and_keeps_the_best_weights():
    """On the toy problem valid accuracy reaches 1.0 within a few epochs and cannot improve:
    with patience 2 on accuracy the run stops 2 epochs after it got there."""
    settings = TrainSettings(epochs=40, lr=0.05, schedule="constant",
                             early_stopping=EarlyStopping(patience=2, monitor="valid_accuracy"))
    said: list[str] = []
    result = fit(Linear(), settings, toy_splits(), CPU, seed=0, log=said.append)
    epochs = len(result.history)
    assert epochs < 40 and result.stop_reason is not None
    best = max(row.valid_accuracy for row in result.history)
    first_best = next(row.epoch for row in result.history if row.valid_accuracy == best)
    kept = max(result.history, key=lambda r: (r.valid_accuracy, -r.valid_loss)).epoch
    assert epochs == first_best + 2 and result.best_epoch == kept
    assert said[-1] == (f"stopped early after epoch {epochs} of 40: {result.stop_reason}; "
                        f"keeping epoch {kept}'s weights (the best valid accuracy)")
    full = fit(Linear(), settings.model_copy(update={"early_stopping": EarlyStopping()}),
               toy_splits(), CPU, seed=0, log=lambda _: None)
    assert len(full.history) == 40 and full.stop_reason is None
    # the stopped run is the full run's first epochs, to the bit
    assert [r.valid_loss for r in full.history[:epochs]] == [r.valid_loss for r in result.history]


def test_each_epoch_line_ends_with_the_time_left():
    from pipeline.engine import duration

    assert [duration(s) for s in (0, 42.4, 725, 10_930)] == ["0:00", "0:42", "12:05", "3:02:10"]
    said: list[str] = []
    fit(Linear(), TrainSettings(epochs=3, lr=0.05), toy_splits(), CPU, seed=0, log=said.append)
    assert [line.split("  eta ")[0][:9] for line in said] == ["epoch   1", "epoch   2",
                                                             "epoch   3"]
    assert said[-1].endswith("  eta 0:00") and all("  eta " in line for line in said)
