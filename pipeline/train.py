"""Stage 3: train one model on one dataset, keep the best-validation weights, evaluate on test.

The whole split lives on the device as uint8 tensors and is batched by slicing a seeded
permutation: no per-sample Dataset, no DataLoader workers, no one-hot targets (the tutorials'
loop spends most of its time there). Loss and accuracy are summed on the device and read once per
epoch, so a CUDA run has no host sync per step. The forward pass runs under bf16 autocast where
the hardware computes in bf16 natively (CUDA; CPUs with AVX512-BF16 or AMX, where it measured
1.6-2x faster than fp32; on other CPUs it is emulated and several times slower, so it stays off).
The learning rate follows a one-cycle schedule by default: with large batches it reaches the
accuracy the tutorials' batch-32 constant-rate loop reaches in the same number of epochs
(the README's Speed section has the measurements).

With `seeds: N` on a model, N copies are trained from seeds train.seed, train.seed+1, ...; the
first is the model, the others make its seed ensemble (mean of logits), kept in the checkpoint.

Writes the checkpoint (state_dicts + plain config, loadable with `weights_only=True`) and logs
through dvclive (pipeline/tracking.py): per-epoch curves, the metrics summary and the test
confusion matrix; TensorBoard event logs too when `train.tensorboard` is on.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.artifacts import ArtifactError, atomic_write, fresh_directory
from pipeline.models import CONV_ARCHITECTURES, ModelConfig, build_model, count_params
from pipeline.params import ModelSpec, ParamsError, TrainParams, TrainSettings, load_params
from pipeline.prepare import Split, load_split
from pipeline.tracking import RunTracker, describe_tensorboard_folder

EVAL_BATCH = 1024


def select_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ParamsError("train.device is 'cuda' but no CUDA device is available; use 'auto'")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ParamsError("train.device is 'mps' but MPS is not available; use 'auto'")
    return torch.device(requested)


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls and convolutions run in hardware rather than emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_config(spec: ModelSpec, shape: tuple[int, int, int], num_classes: int) -> ModelConfig:
    return ModelConfig(
        arch=spec.arch,
        input_shape=tuple(shape),
        num_classes=num_classes,
        hidden=tuple(spec.hidden_sizes()),
        channels=tuple(spec.channels),
        kernel_size=spec.kernel_size,
        head_hidden=spec.head_hidden,
        negative_slope=spec.negative_slope,
        activation=spec.activation,
        dropout=spec.dropout,
    )


def make_optimizer(settings: TrainSettings, model: nn.Module,
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    params = model.parameters()
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    optimizer = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    # The fused kernel made LinearNet epochs 1.5x faster on CPU (its per-tensor Adam loop was
    # 22 % of the step); on an H100 it measured no faster, so CUDA keeps the default.
    fused = True if device is not None and device.type == "cpu" else None
    return optimizer(params, lr=settings.lr, weight_decay=settings.weight_decay, fused=fused)


def make_schedule(settings: TrainSettings, optimizer: torch.optim.Optimizer,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """One-cycle: warm up to `lr` over the first 30 % of steps, then anneal to ~0."""
    if settings.schedule == "constant":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch,
        cycle_momentum=settings.optimizer == "sgd",
    )


@dataclass
class DeviceData:
    """One split resident on the device: uint8 images and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_split(cls, split: Split, device: torch.device) -> DeviceData:
        return cls(torch.from_numpy(split.images).to(device, non_blocking=True),
                   torch.from_numpy(split.labels).to(device, non_blocking=True))

    def __len__(self) -> int:
        return len(self.labels)


class Runner:
    """Runs batches of one model on one device with the chosen precision and memory format."""

    def __init__(self, model: nn.Module, device: torch.device, amp: bool, channels_last: bool):
        self.device = device
        self.amp = amp and native_bf16(device)
        self.channels_last = channels_last
        self.model = model.to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = nn.CrossEntropyLoss(reduction="sum")

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).div_(255.0)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model(self.inputs(images)).float()

    def train_epoch(self, data: DeviceData, optimizer: torch.optim.Optimizer, batch_size: int,
                    generator: torch.Generator, progress: tqdm | None = None,
                    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
                    ) -> tuple[float, float]:
        self.model.train()
        order = torch.randperm(len(data), generator=generator).to(self.device)
        # one gather per epoch, then contiguous slices: 188 small gathers were 10 % of a step
        # (index_select copies whole rows, 2.4x faster than advanced indexing on CPU)
        images = torch.index_select(data.images, 0, order)
        labels = torch.index_select(data.labels, 0, order)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        for start in range(0, len(data), batch_size):
            targets = labels[start : start + batch_size]
            logits = self.logits(images[start : start + batch_size])
            loss = self.loss_fn(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            (loss / len(targets)).backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == targets).sum()
            if progress is not None:
                progress.update(len(targets))
        return loss_sum.item() / len(data), correct.item() / len(data)

    @torch.no_grad()
    def evaluate(self, data: DeviceData) -> tuple[float, float, torch.Tensor]:
        self.model.eval()
        chunks = [self.logits(data.images[s : s + EVAL_BATCH])
                  for s in range(0, len(data), EVAL_BATCH)]
        logits = torch.cat(chunks)
        loss = self.loss_fn(logits, data.labels).item() / len(data)
        accuracy = (logits.argmax(1) == data.labels).float().mean().item()
        return loss, accuracy, logits


@dataclass
class TrainResult:
    history: list[dict]
    best_epoch: int
    state_dict: dict
    test_loss: float
    test_accuracy: float
    test_logits: np.ndarray
    train_seconds: float
    samples_per_second: float


class Training:
    """One model's training run, an epoch at a time: `fit()` drives it to the end, and the
    benchmark interleaves its epochs with the tutorial loop's so both see the same machine."""

    def __init__(self, config: ModelConfig, settings: TrainSettings, splits: dict[str, Split],
                 device: torch.device, seed: int, amp: bool = True, channels_last: bool = True):
        seed_everything(seed)
        self.settings = settings
        self.runner = Runner(build_model(config), device, amp,
                             channels_last and config.arch in CONV_ARCHITECTURES)
        self.optimizer = make_optimizer(settings, self.runner.model, device)
        self.data = {name: DeviceData.from_split(split, device) for name, split in splits.items()}
        steps_per_epoch = -(-len(self.data["train"]) // settings.batch_size)
        self.schedule = make_schedule(settings, self.optimizer, steps_per_epoch)
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[dict] = []
        self.best = (-1.0, float("inf"))
        self.best_epoch = 0
        self.best_state: dict = {}

    def run_epoch(self, progress: tqdm | None = None) -> dict:
        """Train one epoch, evaluate on valid, remember the best weights; the history row."""
        started = time.perf_counter()
        train_loss, train_acc = self.runner.train_epoch(
            self.data["train"], self.optimizer, self.settings.batch_size, self.generator,
            progress, self.schedule)
        seconds = time.perf_counter() - started
        valid_loss, valid_acc, _ = self.runner.evaluate(self.data["valid"])
        row = {"epoch": len(self.history) + 1, "train_loss": train_loss,
               "train_accuracy": train_acc, "valid_loss": valid_loss,
               "valid_accuracy": valid_acc, "lr": self.optimizer.param_groups[0]["lr"],
               "seconds": seconds}
        self.history.append(row)
        if (valid_acc, -valid_loss) > (self.best[0], -self.best[1]):
            self.best = (valid_acc, valid_loss)
            self.best_epoch = row["epoch"]
            self.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in self.runner.model.state_dict().items()}
        return row

    def finish(self) -> TrainResult:
        """Restore the best-validation weights and evaluate them on test."""
        self.runner.model.load_state_dict(self.best_state)
        test_loss, test_acc, test_logits = self.runner.evaluate(self.data["test"])
        train_seconds = sum(row["seconds"] for row in self.history)
        samples = len(self.history) * len(self.data["train"])
        return TrainResult(
            history=self.history,
            best_epoch=self.best_epoch,
            state_dict=self.best_state,
            test_loss=test_loss,
            test_accuracy=test_acc,
            test_logits=test_logits.float().cpu().numpy(),
            train_seconds=train_seconds,
            samples_per_second=samples / train_seconds if train_seconds > 0 else 0.0,
        )


def fit(
    config: ModelConfig,
    settings: TrainSettings,
    splits: dict[str, Split],
    device: torch.device,
    seed: int,
    amp: bool = True,
    channels_last: bool = True,
    show_progress: bool = False,
    log=print,
    on_epoch: Callable[[dict, nn.Module], None] | None = None,
) -> TrainResult:
    """Train for `settings.epochs`, keep the weights with the best validation accuracy;
    `on_epoch(row, model)` sees every history row (the tracker logs it)."""
    training = Training(config, settings, splits, device, seed, amp, channels_last)
    total = settings.epochs * len(training.data["train"])
    with tqdm(total=total, unit="img", disable=not show_progress, leave=False) as progress:
        for _ in range(settings.epochs):
            row = training.run_epoch(progress if show_progress else None)
            line = (f"epoch {row['epoch']:>3}/{settings.epochs}  train loss "
                    f"{row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  valid loss "
                    f"{row['valid_loss']:.4f} acc {row['valid_accuracy']:.4f}  "
                    f"{row['seconds']:.2f}s")
            if show_progress:
                progress.write(line)
            else:
                log(line)
            if on_epoch is not None:
                on_epoch(row, training.runner.model)
    return training.finish()


def save_checkpoint(path: Path, config: ModelConfig, state_dicts: list[dict], classes: list[str],
                    extra: dict) -> None:
    """The first state_dict is the model; any others are the rest of its seed ensemble."""
    buffer = io.BytesIO()
    torch.save({"config": config.to_dict(), "state_dict": state_dicts[0],
                "seed_state_dicts": state_dicts[1:], "classes": classes, **extra}, buffer)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a trained model; only tensors and plain values are unpickled."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; run the train stage (dvc repro)") from None
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ArtifactError(f"{path}: cannot load checkpoint safely ({error})") from None
    model = build_model(ModelConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload


def seed_models(payload: dict) -> list[nn.Module]:
    """Every trained copy in a checkpoint: the model first, then the rest of its seed ensemble."""
    models = []
    for state_dict in [payload["state_dict"], *payload.get("seed_state_dicts", [])]:
        model = build_model(ModelConfig.from_dict(payload["config"]))
        model.load_state_dict(state_dict)
        models.append(model.eval())
    return models


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def summarise(results: list[TrainResult], labels: np.ndarray, n_params: int) -> dict:
    """The metrics summary (dvclive names): the first seed's run, plus its seed ensemble."""
    first = results[0]
    summary = {
        "test/accuracy": round(first.test_accuracy, 6),
        "test/loss": round(first.test_loss, 6),
        "best/epoch": first.best_epoch,
        "best/valid_accuracy": round(max(h["valid_accuracy"] for h in first.history), 6),
        "params": n_params,
        "train_seconds": round(first.train_seconds, 3),
        "samples_per_second": round(first.samples_per_second, 1),
    }
    if len(results) > 1:
        accuracies = np.array([r.test_accuracy for r in results])
        mean_logits = np.mean([r.test_logits for r in results], axis=0)
        summary.update({
            "seeds/count": len(results),
            "seeds/test_accuracy_mean": round(float(accuracies.mean()), 6),
            "seeds/test_accuracy_std": round(float(accuracies.std(ddof=1)), 6),
            "seeds/ensemble_test_accuracy": round(accuracy(mean_logits, labels), 6),
        })
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, type=Path, help="data/prepared/<dataset>")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--live", required=True, type=Path,
                        help="folder for dvclive's metrics.json and plots")
    parser.add_argument("--tensorboard", required=True, type=Path,
                        help="folder for TensorBoard event logs (only a README unless "
                             "train.tensorboard is on)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    params.dataset(args.dataset)
    spec = params.model(args.model)
    train_params: TrainParams = params.train
    settings = params.training_for(args.model)
    if train_params.threads:
        torch.set_num_threads(train_params.threads)
    device = select_device(train_params.device)

    splits = {name: load_split(args.data / f"{name}.pkl") for name in ("train", "valid", "test")}
    classes = splits["train"].classes
    config = model_config(spec, splits["train"].images.shape[1:], len(classes))
    n_params = count_params(build_model(config))
    bf16 = train_params.amp and native_bf16(device)
    seeds = [train_params.seed + k for k in range(spec.seeds)]
    print(f"{args.dataset}/{args.model}: {config.arch}, {n_params:,} parameters, on {device}, "
          f"{settings.epochs} epochs, batch {settings.batch_size}, {settings.optimizer} "
          f"lr {settings.lr:g} ({settings.schedule}), bf16 {'on' if bf16 else 'off'}"
          + (f", seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else ""))

    # Both folders are built aside and swapped in whole, so a failed run leaves no half-log.
    with contextlib.ExitStack() as stack:
        live_dir = stack.enter_context(fresh_directory(args.live))
        tensorboard_dir = stack.enter_context(fresh_directory(args.tensorboard))
        describe_tensorboard_folder(tensorboard_dir, f"{args.dataset}/{args.model}",
                                    train_params.tensorboard)
        tracker = RunTracker(live_dir, tensorboard_dir if train_params.tensorboard else None)
        results = []
        for seed in seeds:
            prefix = f"seed {seed}  " if len(seeds) > 1 else ""
            results.append(fit(
                config, settings, splits, device, seed, train_params.amp,
                train_params.channels_last, show_progress=sys.stderr.isatty(),
                log=lambda line, prefix=prefix: print(prefix + line),
                on_epoch=tracker.log_epoch if seed == seeds[0] else None))
        labels = splits["test"].labels
        summary = summarise(results, labels, n_params)
        tracker.log_summary(summary)
        predicted = results[0].test_logits.argmax(1)
        tracker.log_confusion([classes[i] for i in labels], [classes[i] for i in predicted])
        tracker.log_hyperparameters(
            {"dataset": args.dataset, "model": args.model, "arch": config.arch,
             **settings.model_dump()},
            {"test_accuracy": summary["test/accuracy"], "test_loss": summary["test/loss"]})
        tracker.close()
        run_info = {
            "seeds": seeds,
            "bf16": bool(bf16),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "torch_version": str(torch.__version__),
            **settings.model_dump(),
        }
        save_checkpoint(args.checkpoint, config, [r.state_dict for r in results], classes,
                        {"dataset": args.dataset, "model": args.model, "run": run_info,
                         "metrics": summary})
    first = results[0]
    print(f"{args.dataset}/{args.model}: test accuracy {first.test_accuracy:.4f}, "
          f"loss {first.test_loss:.4f} (best epoch {first.best_epoch}), "
          f"{first.samples_per_second:,.0f} samples/s"
          + (f"; {len(seeds)} seeds {summary['seeds/test_accuracy_mean']:.4f} "
             f"+- {summary['seeds/test_accuracy_std']:.4f}, their ensemble "
             f"{summary['seeds/ensemble_test_accuracy']:.4f}" if len(seeds) > 1 else ""))


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage(main)
