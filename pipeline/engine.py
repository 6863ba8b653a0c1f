"""The training engine: device, precision, optimizer, schedule, the batch `Runner` and `Training`.

The whole split lives on the device as uint8 tensors and each batch gathers its rows of a seeded
permutation: no per-sample Dataset, no DataLoader workers, no one-hot targets (the tutorials'
loop spends most of its time there). Loss and accuracy are summed on the device and read once per
epoch, so a CUDA run has no host sync per step. The forward pass runs under bf16 autocast where
the hardware computes in bf16 natively (CUDA; CPUs with AVX512-BF16 or AMX; emulated elsewhere,
where it is slower, so it stays off). The learning rate follows a one-cycle schedule by default:
with large batches it reaches the accuracy the tutorials' batch-32 constant-rate loop reaches in
the same number of epochs. On CUDA each full batch's step is one replayed CUDA graph
(`GraphedStep`). Where an epoch's time goes, and what was tried to cut it: docs/performance.md,
"A training epoch on the CPU".
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline import augment as augmentation
from pipeline import forward
from pipeline.architectures import Architecture
from pipeline.distributed import SINGLE_PROCESS, DistributedError, World
from pipeline.errors import PipelineError
from pipeline.models import build
from pipeline.optim import FusedAdam, OneCycle
from pipeline.params import Augment, EarlyStopping, ParamsError, TrainSettings
from pipeline.splits import Split
from pipeline.tracking import EpochRow, SeedSummary, Summary, keeps

Optimizer = torch.optim.Optimizer | FusedAdam
AUGMENT_STREAM = 2**32  # the augmentation generator's seed: the run's seed + this


def select_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ParamsError("execution.device is 'cuda' but no CUDA device is available; use 'auto'")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ParamsError("execution.device is 'mps' but MPS is not available; use 'auto'")
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


def make_optimizer(settings: TrainSettings, model: nn.Module, device: torch.device,
                   graphed: bool = False) -> Optimizer:
    """The optimizer; `graphed` (Adam, AdamW): its step can be captured in a CUDA graph (the
    learning rate a device tensor the schedule fills in, the step count on the device)."""
    params = model.parameters()
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    decoupled = settings.optimizer == "adamw"
    if device.type == "cpu":
        # torch's fused kernel, called without importing torch._dynamo (docs/performance.md)
        return FusedAdam(params, settings.lr, settings.weight_decay, decoupled)
    optimizer = torch.optim.AdamW if decoupled else torch.optim.Adam
    if graphed:
        lr = torch.tensor(settings.lr, device=device)
        return optimizer(params, lr=lr, weight_decay=settings.weight_decay, capturable=True)
    # on an H100 the fused kernel measured no faster, so other devices keep the default
    return optimizer(params, lr=settings.lr, weight_decay=settings.weight_decay)


def make_schedule(settings: TrainSettings, optimizer: Optimizer,
                  steps_per_epoch: int) -> OneCycle | None:
    """One-cycle: warm up to `lr` over the first 30 % of steps, then anneal to ~0."""
    if settings.schedule == "constant":
        return None
    return OneCycle(optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch,
                    cycle_momentum=settings.optimizer == "sgd")


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


def reset_optimizer_state(optimizer: Optimizer) -> None:
    """Zero every tensor of the optimizer's state in place (Adam's moments and step count back
    to a fresh start, where a captured CUDA graph reads them): torch.optim keeps a dict per
    parameter, pipeline.optim's fused Adam a tuple."""
    with torch.no_grad():
        for state in optimizer.state.values():
            values = state.values() if isinstance(state, dict) else state
            for value in values:
                if isinstance(value, torch.Tensor):
                    value.zero_()


class GraphedStep:
    """One whole training step (forward, loss, backward, optimizer step, the epoch's sums)
    captured as a CUDA graph for full batches and replayed with no per-layer Python or kernel
    launches; the batch is copied into its fixed input buffers first. A small model's eager
    step is launch-bound (docs/performance.md, "Training loop details")."""

    def __init__(self, runner: Runner, optimizer: Optimizer, data: DeviceData,
                 batch_size: int):
        device = runner.device
        self.images = data.images[:batch_size].clone()
        self.labels = data.labels[:batch_size].clone()
        self.totals = torch.zeros(2, device=device)
        weights = {name: value.clone() for name, value in runner.model.state_dict().items()}
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # capture needs the kernels' workspaces made beforehand
            for _ in range(3):
                self._step(runner, optimizer)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self._step(runner, optimizer)
        # the warm-up steps trained: back to the starting weights and a fresh optimizer state
        # (Adam's moments and step count start at zero), in place, where the graph reads them
        with torch.no_grad():
            for name, value in runner.model.state_dict().items():
                value.copy_(weights[name])
        reset_optimizer_state(optimizer)
        self.totals.zero_()

    def _step(self, runner: Runner, optimizer: Optimizer) -> None:
        logits = runner.logits(self.images, runner.trainable)
        loss = runner.loss_fn(logits, self.labels)
        optimizer.zero_grad(set_to_none=False)
        (loss / len(self.labels)).backward()
        optimizer.step()
        self.totals[0] += loss.detach()
        self.totals[1] += (logits.detach().argmax(1) == self.labels).sum()

    def run(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images.copy_(images, non_blocking=True)
        self.labels.copy_(labels, non_blocking=True)
        self.graph.replay()

    def take_totals(self) -> torch.Tensor:
        totals = self.totals.clone()
        self.totals.zero_()
        return totals


class Runner:
    """Runs batches of one model on one device with the chosen precision (`bf16`: autocast,
    emulated where the hardware lacks it) and memory format."""

    def __init__(self, model: nn.Module, device: torch.device, bf16: bool, channels_last: bool,
                 world: World = SINGLE_PROCESS):
        self.device = device
        self.amp = bf16
        self.channels_last = channels_last
        self.world = world
        self.model = model.to(device)
        if channels_last:
            # torch's stubs lack Module.to's memory_format overload, which it accepts
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # what training calls: the model itself, or its DDP wrapper that averages gradients
        self.trainable: nn.Module = self.model
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.trainable = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.loss_fn = nn.CrossEntropyLoss(reduction="sum")
        self.graphed: GraphedStep | None = None

    def logits(self, images: torch.Tensor, model: nn.Module | None = None,
               transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        return forward.logits(model or self.model, images, self.device.type, self.amp,
                              self.channels_last, transform)

    def train_epoch(self, data: DeviceData, optimizer: Optimizer, batch_size: int,
                    generator: torch.Generator, progress: tqdm | None = None,
                    schedule: OneCycle | None = None,
                    augment: tuple[Augment, torch.Generator] | None = None,
                    ) -> tuple[float, float]:
        """One pass over the shuffled training split; `augment`: the settings and the random
        generator of pipeline/augment.py's changes, drawn for each whole global batch."""
        self.model.train()
        order = torch.randperm(len(data), generator=generator).to(self.device)
        labels = torch.index_select(data.labels, 0, order)
        # Each batch gathers its images just before use, so they are still in cache when they
        # are converted (docs/performance.md, "Training loop details").
        # [loss sum, correct count], summed on the device and read once per epoch (float32:
        # MPS has no float64; counts stay exact below 2**24 images)
        totals = torch.zeros(2, device=self.device)
        world = self.world
        for start in range(0, len(data), batch_size):
            batch = min(batch_size, len(data) - start)
            if self.graphed is not None and batch == batch_size:
                self.graphed.run(torch.index_select(data.images, 0, order[start : start + batch]),
                                 labels[start : start + batch])
                if schedule is not None:
                    schedule.step()
                if progress is not None:
                    progress.update(batch)
                continue
            # this worker's slice of the global batch (all of it in one process)
            part = world.shard(batch)
            rows = slice(start + part.start, start + part.stop)
            targets = labels[rows]
            transform = None
            if augment is not None:
                draws = augmentation.draw(augment[0], batch, augment[1]).rows(part)
                transform = functools.partial(augmentation.apply, draws=draws)
            logits = self.logits(torch.index_select(data.images, 0, order[rows]), self.trainable,
                                 transform)
            loss = self.loss_fn(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            # the batch mean: DDP averages the workers' gradients, so each scales by its count
            (loss / (batch / world.size)).backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            totals[0] += loss.detach()
            totals[1] += (logits.detach().argmax(1) == targets).sum()
            if progress is not None:
                progress.update(batch)
        if self.graphed is not None:
            totals += self.graphed.take_totals()
        loss_sum, correct = world.all_sum(totals).tolist()
        return loss_sum / len(data), correct / len(data)

    @torch.no_grad()
    def evaluate(self, data: DeviceData) -> tuple[float, float, torch.Tensor]:
        """Loss, accuracy and logits of a whole split; with several workers each runs its
        share of the images and the sums and logits are combined."""
        self.model.eval()
        part = self.world.shard(len(data))
        images, labels = data.images[part], data.labels[part]
        logits = forward.batched_logits(self.model, images, self.device.type, self.amp,
                                        self.channels_last)
        totals = torch.stack([self.loss_fn(logits, labels),
                              (logits.argmax(1) == labels).sum().float()])
        loss_sum, correct = self.world.all_sum(totals).tolist()
        logits = self.world.gather_shards(logits, len(data))
        return loss_sum / len(data), correct / len(data), logits


class EarlyStopper:
    """Decides after each epoch whether training goes on (`train.early_stopping`)."""

    def __init__(self, rule: EarlyStopping):
        self.rule = rule
        self.best = math.inf  # the monitored value, as a loss (accuracy negated)
        self.epochs_without_improvement = 0

    def stop_reason(self, row: EpochRow) -> str | None:
        """Why training stops after this epoch, or None to go on."""
        rule = self.rule
        if rule.max_loss is not None and row.train_loss > rule.max_loss:
            return (f"diverging: train loss {row.train_loss:.4g} above early_stopping.max_loss "
                    f"{rule.max_loss:g}")
        if rule.patience is None:
            return None
        accuracy = rule.monitor == "valid_accuracy"
        value = -row.valid_accuracy if accuracy else row.valid_loss
        if value < self.best - rule.min_delta:
            self.best, self.epochs_without_improvement = value, 0
            return None
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement < rule.patience:
            return None
        shown = f"{-self.best:.4f}" if accuracy else f"{self.best:.4f}"
        return (f"{rule.monitor.replace('_', ' ')} not better than {shown}"
                + (f" by {rule.min_delta:g}" if rule.min_delta else "")
                + f" for {rule.patience} epoch{'s' if rule.patience > 1 else ''}")

    def state_dict(self) -> dict:
        return {"best": self.best, "epochs_without_improvement": self.epochs_without_improvement}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
        self.epochs_without_improvement = int(state["epochs_without_improvement"])


@dataclass
class TrainResult:
    history: list[EpochRow]
    best_epoch: int
    initial_state_dict: dict  # the weights training started from
    state_dict: dict  # the best-validation weights
    test_loss: float
    test_accuracy: float
    test_logits: np.ndarray
    epoch_seconds: list[float]  # timing: kept apart from everything a re-run must reproduce
    stop_reason: str | None = None  # why it stopped before `epochs`, if it did

    @property
    def train_seconds(self) -> float:
        return sum(self.epoch_seconds)

    def to_state(self) -> dict:
        """Plain tensors, lists and numbers, as torch.load(weights_only=True) reads them."""
        state = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        state["history"] = [dataclasses.astuple(row) for row in self.history]
        state["test_logits"] = torch.from_numpy(self.test_logits)
        return state

    @classmethod
    def from_state(cls, state: dict) -> TrainResult:
        return cls(**{**state, "history": [EpochRow(*row) for row in state["history"]],
                      "test_logits": state["test_logits"].numpy()})


class Training:
    """One model's training run, an epoch at a time: `fit()` drives it to the end, and the
    benchmark interleaves its epochs with the tutorial loop's so both see the same machine."""

    def __init__(self, architecture: Architecture, settings: TrainSettings,
                 splits: dict[str, Split], device: torch.device, seed: int, amp: bool = True,
                 channels_last: bool = True, world: World = SINGLE_PROCESS,
                 cuda_graphs: bool = False):
        seed_everything(seed)  # the same on every worker: the same initial weights
        self.settings = settings
        train = splits["train"]
        model = build(architecture, train.images.shape[1:], len(train.classes))
        self.initial_state = cpu_copy(model.state_dict())
        if world.distributed:  # but each worker its own dropout masks
            torch.manual_seed(seed + 7919 * world.rank)
        # bf16 only where the hardware runs it natively: emulated it is several times slower
        self.runner = Runner(model, device, amp and native_bf16(device),
                             channels_last and architecture.convolutional,
                             world)
        # Adam's capturable step reads its learning rate from the device; SGD's foreach step
        # reads it on the host, which a capture cannot do, so SGD runs eagerly
        graphed = (cuda_graphs and device.type == "cuda" and not world.distributed
                   and not settings.augment.active
                   and settings.optimizer in ("adam", "adamw")
                   and len(train.labels) >= settings.batch_size)
        self.optimizer = make_optimizer(settings, self.runner.model, device, graphed)
        self.data = {name: DeviceData.from_split(split, device) for name, split in splits.items()}
        steps_per_epoch = -(-len(self.data["train"]) // settings.batch_size)
        self.schedule = make_schedule(settings, self.optimizer, steps_per_epoch)
        if graphed:
            self.runner.graphed = GraphedStep(self.runner, self.optimizer, self.data["train"],
                                              settings.batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        # its own stream, so switching augmentation on leaves the shuffling as it was
        self.augment_generator = torch.Generator().manual_seed(seed + AUGMENT_STREAM)
        self.history: list[EpochRow] = []
        self.epoch_seconds: list[float] = []
        self.best = (-1.0, float("inf"))
        self.best_epoch = 0
        self.best_state: dict = {}
        self.stopper = EarlyStopper(settings.early_stopping)
        self.stop_reason: str | None = None

    def run_epoch(self, progress: tqdm | None = None) -> EpochRow:
        """Train one epoch, evaluate on valid, remember the best weights; the history row."""
        started = time.perf_counter()
        augment = self.settings.augment
        train_loss, train_acc = self.runner.train_epoch(
            self.data["train"], self.optimizer, self.settings.batch_size, self.generator,
            progress, self.schedule,
            (augment, self.augment_generator) if augment.active else None)
        seconds = time.perf_counter() - started
        valid_loss, valid_acc, _ = self.runner.evaluate(self.data["valid"])
        row = EpochRow(len(self.history) + 1, train_loss, train_acc, valid_loss, valid_acc,
                       float(self.optimizer.param_groups[0]["lr"]))  # a tensor when graphed
        self.history.append(row)
        self.epoch_seconds.append(seconds)
        if keeps(valid_acc, valid_loss, self.best):
            self.best = (valid_acc, valid_loss)
            self.best_epoch = row.epoch
            self.best_state = cpu_copy(self.runner.model.state_dict())
        if math.isfinite(row.train_loss) and math.isfinite(row.valid_loss) \
                and row.epoch < self.settings.epochs:  # the last planned epoch is no early stop
            self.stop_reason = self.stopper.stop_reason(row)
        return row

    def state_dict(self) -> dict:
        """Everything the rest of the run depends on, copied to the CPU (pipeline/resume.py)."""
        device = self.runner.device
        return {
            "model": cpu_copy(self.runner.model.state_dict()),
            "optimizer": optimizer_state(self.optimizer),
            "schedule_steps": self.schedule.step_count if self.schedule else 0,
            "generator": self.generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "mps_rng": torch.mps.get_rng_state() if device.type == "mps" else None,
            "history": [dataclasses.astuple(row) for row in self.history],
            "epoch_seconds": list(self.epoch_seconds),
            "best": self.best, "best_epoch": self.best_epoch, "best_state": self.best_state,
            "initial_state": self.initial_state, "stopper": self.stopper.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s copy; tensors are copied into the ones training (and
        a captured CUDA graph) already holds."""
        self.runner.model.load_state_dict(state["model"])
        restore_optimizer_state(self.optimizer, state["optimizer"])
        if self.schedule is not None:
            self.schedule.step_count = int(state["schedule_steps"])
            self.schedule.apply()
        self.generator.set_state(state["generator"])
        self.augment_generator.set_state(state["augment_generator"])
        torch.set_rng_state(state["cpu_rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.runner.device)
        if state.get("mps_rng") is not None:
            torch.mps.set_rng_state(state["mps_rng"])
        self.history = [EpochRow(*row) for row in state["history"]]
        self.epoch_seconds = list(state["epoch_seconds"])
        self.best, self.best_epoch = tuple(state["best"]), int(state["best_epoch"])
        self.best_state, self.initial_state = state["best_state"], state["initial_state"]
        self.stopper.load_state_dict(state["stopper"])
        self.stop_reason = None

    @property
    def done(self) -> bool:
        return self.stop_reason is not None or len(self.history) >= self.settings.epochs

    def finish(self) -> TrainResult:
        """Restore the best-validation weights and evaluate them on test."""
        difference = self.runner.world.replica_difference(self.runner.model)
        if difference != 0.0:
            raise DistributedError(f"the workers' weights differ by up to {difference:g} after "
                                   "training; data-parallel replicas must stay identical "
                                   "(is every worker running the same code and data?)")
        self.runner.model.load_state_dict(self.best_state)
        test_loss, test_acc, test_logits = self.runner.evaluate(self.data["test"])
        return TrainResult(
            history=self.history,
            best_epoch=self.best_epoch,
            initial_state_dict=self.initial_state,
            state_dict=self.best_state,
            test_loss=test_loss,
            test_accuracy=test_acc,
            test_logits=test_logits.float().cpu().numpy(),
            epoch_seconds=self.epoch_seconds,
            stop_reason=self.stop_reason,
        )


def cpu_copy(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def _parameters(optimizer: Optimizer) -> list[Any]:
    if isinstance(optimizer, FusedAdam):
        return optimizer.params
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_state(optimizer: Optimizer) -> list:
    """Each parameter's optimizer state in parameter order, copied to the CPU: a dict for
    torch.optim, a tuple for pipeline.optim's fused Adam, None before the first step."""
    def copied(value: Any) -> Any:
        return value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else value

    saved: list = []
    states: dict[Any, Any] = optimizer.state
    for parameter in _parameters(optimizer):
        state = states.get(parameter)
        if isinstance(state, dict):
            saved.append({key: copied(value) for key, value in state.items()})
        else:
            saved.append(None if state is None else tuple(copied(value) for value in state))
    return saved


def restore_optimizer_state(optimizer: Optimizer, saved: list) -> None:
    """Put `optimizer_state()`'s copy back, into the existing tensors where there are some."""
    parameters = _parameters(optimizer)
    if len(saved) != len(parameters):
        raise TrainingError(f"the saved optimizer state has {len(saved)} parameters, the model "
                            f"{len(parameters)}")
    states: dict[Any, Any] = optimizer.state
    with torch.no_grad():
        for parameter, state in zip(parameters, saved, strict=True):
            current = states.get(parameter)
            if state is None:
                states.pop(parameter, None)
            elif isinstance(state, dict):
                target = current if isinstance(current, dict) else {}
                for key, value in state.items():
                    if isinstance(value, torch.Tensor) and isinstance(target.get(key),
                                                                      torch.Tensor):
                        target[key].copy_(value)
                    elif isinstance(value, torch.Tensor):
                        target[key] = value.to(parameter.device if value.dim() else
                                               value.device)
                    else:
                        target[key] = value
                states[parameter] = target
            elif isinstance(current, tuple):
                for into, value in zip(current, state, strict=True):
                    into.copy_(value)
            else:
                states[parameter] = tuple(value.to(parameter.device) for value in state)


def fit(
    architecture: Architecture,
    settings: TrainSettings,
    splits: dict[str, Split],
    device: torch.device,
    seed: int,
    amp: bool = True,
    channels_last: bool = True,
    show_progress: bool = False,
    log=print,
    on_epoch: Callable[[EpochRow, nn.Module | None], None] | None = None,
    world: World = SINGLE_PROCESS,
    cuda_graphs: bool = False,
    resume: dict | None = None,
    save_state: Callable[[Training], None] | None = None,
    epochs_after: int = 0,
    stop_check: Callable[[EpochRow], str | None] | None = None,
) -> TrainResult:
    """Train for `settings.epochs` (or until early stopping says), keep the weights with the
    best validation accuracy; `on_epoch(row, model)` sees every history row (the tracker logs
    it). With `resume` (a `Training.state_dict()`), continue from there: the rows before it are
    passed to `on_epoch` again, without a model. `save_state(training)` is offered the run after
    every epoch that does not end it. `epochs_after`: epochs still to come after this run (the
    seed copies after it), counted in each epoch line's time left. `stop_check(row)`: asked
    after every epoch early stopping lets go on; a reason ends the run there as an early stop
    does (a sweep's pruner)."""
    training = Training(architecture, settings, splits, device, seed, amp, channels_last, world,
                        cuda_graphs)
    if resume is not None:
        training.load_state_dict(resume)
        for row in training.history:
            if on_epoch is not None:
                on_epoch(row, None)
    per_epoch = len(training.data["train"])
    started, first_epoch = time.perf_counter(), len(training.history)
    with tqdm(total=settings.epochs * per_epoch, initial=len(training.history) * per_epoch,
              unit="img", disable=not show_progress, leave=False,
              file=sys.__stderr__) as progress:
        while not training.done:
            row = training.run_epoch(progress if show_progress else None)
            if not (math.isfinite(row.train_loss) and math.isfinite(row.valid_loss)):
                raise TrainingError(
                    f"training diverged at epoch {row.epoch}: the loss is "
                    f"{row.train_loss:.4g} on train, {row.valid_loss:.4g} on valid; it was "
                    f"stopped and nothing was written: lower the learning rate (now "
                    f"{settings.lr:g}) or train without bf16 (train.amp: false)")
            per_epoch_s = (time.perf_counter() - started) / (row.epoch - first_epoch)
            line = (f"epoch {row.epoch:>3}/{settings.epochs}  train loss "
                    f"{row.train_loss:.4f} acc {row.train_accuracy:.4f}  valid loss "
                    f"{row.valid_loss:.4f} acc {row.valid_accuracy:.4f}  "
                    f"{training.epoch_seconds[-1]:.2f}s  "
                    f"eta {duration(per_epoch_s * (settings.epochs - row.epoch + epochs_after))}")
            if show_progress:
                progress.write(line)
            else:
                log(line)
            if on_epoch is not None:
                on_epoch(row, training.runner.model)
            if stop_check is not None and not training.done:
                training.stop_reason = stop_check(row)
            if training.stop_reason is not None:
                log(f"stopped early after epoch {row.epoch} of {settings.epochs}: "
                    f"{training.stop_reason}; keeping epoch {training.best_epoch}'s weights "
                    "(the best valid accuracy)")
            elif save_state is not None and not training.done:
                save_state(training)
    return training.finish()


def duration(seconds: float) -> str:
    """`0:42`, `12:05`, `3:02:10`: the ETA in an epoch's line."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class TrainingError(PipelineError):
    """Training cannot go on: the message says what happened and what to change."""


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def summarise(results: list[TrainResult], labels: np.ndarray, n_params: int) -> Summary:
    """The metrics summary: the first seed's run, plus its seed ensemble."""
    first = results[0]
    seeds = None
    if len(results) > 1:
        accuracies = np.array([r.test_accuracy for r in results])
        mean_logits = np.mean([r.test_logits for r in results], axis=0)
        seeds = SeedSummary(len(results), round(float(accuracies.mean()), 6),
                            round(float(accuracies.std(ddof=1)), 6),
                            round(accuracy(mean_logits, labels), 6))
    return Summary(
        test_accuracy=round(first.test_accuracy, 6),
        test_loss=round(first.test_loss, 6),
        best_epoch=first.best_epoch,
        best_valid_accuracy=round(max(h.valid_accuracy for h in first.history), 6),
        params=n_params,
        seeds=seeds,
    )
