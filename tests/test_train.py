from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.artifacts import ArtifactError
from pipeline.models import ModelConfig, build_model, count_params
from pipeline.params import ParamsError, TrainSettings
from pipeline.prepare import Split
from pipeline.train import (
    fit,
    load_checkpoint,
    make_optimizer,
    make_schedule,
    native_bf16,
    save_checkpoint,
    seed_models,
    select_device,
    summarise,
)

CPU = torch.device("cpu")


def toy_splits(seed: int = 0) -> dict[str, Split]:
    """Two easily separable classes of 1x4x4 images: bright left half vs bright right half."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> Split:
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 60, (n, 1, 4, 4)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 0, :, 2 * label : 2 * label + 2] += 180
        return Split(images, labels.astype(np.int64), ["left", "right"])

    return {"train": make(256), "valid": make(64), "test": make(64)}


@pytest.mark.parametrize("arch", ["linear", "linearnet", "cnn"])
def test_fit_learns_a_separable_problem(arch):
    config = ModelConfig(arch, (1, 4, 4), 2, hidden=(16,), channels=(4, 8), head_hidden=8)
    result = fit(config, TrainSettings(epochs=8, batch_size=32, lr=0.01), toy_splits(), CPU,
                 seed=0, log=lambda _: None)
    assert len(result.history) == 8
    assert result.test_accuracy >= 0.95
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.test_logits.shape == (64, 2)
    assert (result.test_logits.argmax(1) == toy_splits()["test"].labels).mean() == pytest.approx(
        result.test_accuracy)
    assert {"epoch", "train_loss", "valid_accuracy", "lr", "seconds"} <= set(result.history[0])


def test_training_is_deterministic_on_cpu():
    config = ModelConfig("cnn", (1, 4, 4), 2, channels=(4,), head_hidden=4)
    settings = TrainSettings(epochs=2, batch_size=16)
    first = fit(config, settings, toy_splits(), CPU, seed=3, log=lambda _: None)
    second = fit(config, settings, toy_splits(), CPU, seed=3, log=lambda _: None)
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]
    for key, value in first.state_dict.items():
        assert torch.equal(value, second.state_dict[key])


def test_the_best_validation_epoch_weights_are_kept():
    config = ModelConfig("linear", (1, 4, 4), 2)
    result = fit(config, TrainSettings(epochs=5, lr=0.05), toy_splits(), CPU, seed=0,
                 log=lambda _: None)
    best = max(result.history, key=lambda h: (h["valid_accuracy"], -h["valid_loss"]))
    assert result.best_epoch == best["epoch"]


def test_checkpoint_round_trips_with_weights_only(tmp_path):
    config = ModelConfig("cnn", (1, 8, 8), 10)
    model = build_model(config)
    path = tmp_path / "m.pt"
    save_checkpoint(path, config, [model.state_dict()], [str(i) for i in range(10)],
                    {"metrics": {"test_accuracy": 0.5}})
    loaded, payload = load_checkpoint(path)
    assert count_params(loaded) == count_params(model)
    assert payload["config"]["arch"] == "cnn"
    x = torch.rand(2, 1, 8, 8)
    model.eval()
    assert torch.equal(loaded(x), model(x))


def test_a_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"config": {"arch": "cnn"}, "state_dict": {}, "extra": np.dtype}, path)
    with pytest.raises(ArtifactError, match="cannot load checkpoint safely"):
        load_checkpoint(path)


def test_device_selection():
    assert select_device("cpu") == CPU
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ParamsError, match="no CUDA device"):
            select_device("cuda")


def test_seed_copies_round_trip_and_are_summarised_with_their_ensemble(tmp_path):
    config = ModelConfig("linear", (1, 4, 4), 2)
    settings = TrainSettings(epochs=3, lr=0.05)
    splits = toy_splits()
    results = [fit(config, settings, splits, CPU, seed=seed, log=lambda _: None)
               for seed in (0, 1, 2)]
    path = tmp_path / "m.pt"
    save_checkpoint(path, config, [r.state_dict for r in results], ["left", "right"], {})
    _, payload = load_checkpoint(path)
    copies = seed_models(payload)
    assert len(copies) == 3
    for copy, result in zip(copies, results, strict=True):
        for key, value in copy.state_dict().items():
            assert torch.equal(value, result.state_dict[key])
    assert not torch.equal(copies[0].state_dict()["fc.weight"],
                           copies[1].state_dict()["fc.weight"])

    labels = splits["test"].labels
    summary = summarise(results, labels, n_params=34)
    assert summary["test/accuracy"] == round(results[0].test_accuracy, 6)
    assert summary["params"] == 34 and summary["seeds/count"] == 3
    accuracies = [r.test_accuracy for r in results]
    assert summary["seeds/test_accuracy_mean"] == pytest.approx(np.mean(accuracies), abs=1e-6)
    mean_logits = np.mean([r.test_logits for r in results], axis=0)
    assert summary["seeds/ensemble_test_accuracy"] == pytest.approx(
        (mean_logits.argmax(1) == labels).mean(), abs=1e-6)
    assert "seeds/count" not in summarise(results[:1], labels, n_params=34)


def test_onecycle_warms_up_to_lr_and_anneals_while_constant_stays():
    model = build_model(ModelConfig("linear", (1, 2, 2), 2))
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
    model = build_model(ModelConfig("linear", (1, 2, 2), 2))
    optimizer = make_optimizer(TrainSettings(), model, CPU)
    assert optimizer.defaults["fused"] is True
    assert isinstance(native_bf16(CPU), bool)
    assert native_bf16(torch.device("meta")) is False


def test_bf16_autocast_training_on_a_native_bf16_cpu_still_learns():
    if not native_bf16(CPU):
        pytest.skip("this CPU has no native bf16, so training runs in fp32 here")
    config = ModelConfig("cnn", (1, 4, 4), 2, channels=(4, 8), head_hidden=8)
    result = fit(config, TrainSettings(epochs=8, batch_size=32, lr=0.01), toy_splits(), CPU,
                 seed=0, amp=True, log=lambda line: None)
    assert result.test_accuracy > 0.9
