"""The tools users would pick instead: PyTorch Lightning and Keras 3 on its torch backend.

Each peer trains the same model as the pipeline's loop (the torch module the pipeline builds,
or a Keras copy of it with the same initial weights) on the same split, with the same batch size,
Adam settings, one-cycle schedule, epochs and bf16 policy, set up the way its documentation shows:

- Lightning: a `LightningModule` whose `training_step` returns the cross-entropy and logs loss and
  accuracy per epoch; `Trainer.fit` over a shuffled `DataLoader` of a `TensorDataset` of float
  images; `precision="bf16-mixed"` where the pipeline uses bf16; `pin_memory` on CUDA; no logger,
  checkpointing or progress bar (the pipeline's timed epoch has none either).
- Keras: `model.fit` on numpy arrays with `SparseCategoricalCrossentropy(from_logits=True)` and
  an accuracy metric, the `mixed_bfloat16` policy where the pipeline uses bf16 (output layer in
  float32, as the Keras mixed-precision guide says), the one-cycle schedule as a
  `LearningRateSchedule`.

The settings that are a choice (DataLoader workers, Keras `jit_compile` and image data format)
are the fastest measured on the machine: see PEER_SETTINGS.

Every framework's `fit()` is blocking, so each runs as a greenlet that stops at the end of every
epoch (`EpochTurns`): the benchmark interleaves their epochs with the pipeline's, only one loop
runs at a time, and a machine that speeds up or slows down affects all alike.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

os.environ.setdefault("KERAS_BACKEND", "torch")  # read when keras is first imported

from pipeline.params import TrainSettings
from pipeline.splits import Split

# The fastest of each choice, measured on the 2-core CPU (60,000-row benchmark, 4 epochs):
# DataLoader workers 0 (2 workers: cnn epoch the same, 3.5 s; LinearNet 0.58 s instead of 0.39 s,
# as they compete with the compute threads for the 2 cores); Keras jit_compile on (torch.compile:
# LinearNet 0.25 s instead of 0.43 s, cnn 3.39 s instead of 3.49 s, after a first epoch of
# 22 s and 65 s compiling) and channels_first (cnn 2.99 s instead of Keras's default 3.49 s).
PEER_SETTINGS = {"num_workers": 0, "jit_compile": True, "data_format": "channels_first"}


class EpochTurns:
    """Runs a framework's blocking `fit()` as a greenlet that pauses at the end of every epoch;
    `run_epoch()` lets it run one more epoch and returns that epoch's seconds.

    A greenlet, not a thread: torch's OpenMP pool belongs to the OS thread that calls it, and a
    paused thread keeps its pool alive. With two pools on 2 cores libgomp throttles its spinning
    and every loop slowed down (LinearNet's epoch 0.12 s -> 0.24-0.29 s, measured), so all loops
    take their turns on the benchmark's own thread."""

    def __init__(self, name: str, fit: Callable[[], None]):
        from greenlet import greenlet

        self.name = name
        self.epoch_seconds: list[float] = []
        self._loop = greenlet(fit)
        self._started = 0.0

    # called by the framework's callbacks, inside fit()
    def epoch_begin(self) -> None:
        self._started = time.perf_counter()

    def epoch_end(self) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._started)
        # fit() leaves grad mode and autocast (thread state, shared with the other loops) as
        # it found them between steps; checked so that no loop runs in another's mode
        if not torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            raise RuntimeError(f"{self.name}: grad mode or autocast changed at the epoch's end")
        self._loop.parent.switch()

    def run_epoch(self) -> float:
        done = len(self.epoch_seconds)
        self._loop.switch()  # an exception inside fit() is raised here
        if len(self.epoch_seconds) == done:
            raise RuntimeError(f"{self.name}: fit() ended after {done} epochs")
        return self.epoch_seconds[-1]

    def finish(self) -> None:
        """Let fit() return after its last epoch."""
        if self.epoch_seconds and not self._loop.dead:
            self._loop.switch()
        if not self._loop.dead:
            raise RuntimeError(f"{self.name}: fit() wants more epochs than were run")


def torch_recipe(settings: TrainSettings, model: nn.Module, device: torch.device,
                 steps_per_epoch: int):
    """The pipeline's optimizer and schedule as torch.optim's classes, which Lightning expects
    (pipeline/optim.py computes the same steps; tests/test_optim.py checks it)."""
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(
        settings.optimizer)
    if optimizer_class is None:
        raise ValueError("the peers are set up for Adam and AdamW, the benchmark's optimizers")
    optimizer = optimizer_class(model.parameters(), lr=settings.lr,
                                weight_decay=settings.weight_decay,
                                fused=True if device.type == "cpu" else None)
    if settings.schedule == "constant":
        return optimizer, None
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch,
        cycle_momentum=False)


def float_images(split: Split) -> np.ndarray:
    return (split.images.astype(np.float32) / 255.0).reshape(split.images.shape)


# --- Lightning ----------------------------------------------------------------------------------

class LightningRun:
    """`Trainer.fit` on a LightningModule wrapping the pipeline's model."""

    def __init__(self, model: nn.Module, settings: TrainSettings, train: Split, held: Split,
                 device: torch.device, bf16: bool, seed: int):
        import lightning as L
        from torch.nn import functional as F
        from torch.utils.data import DataLoader, TensorDataset

        steps_per_epoch = -(-len(train.labels) // settings.batch_size)

        class Classifier(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, images: torch.Tensor) -> torch.Tensor:
                return self.model(images)

            def training_step(self, batch, batch_index: int) -> torch.Tensor:
                images, labels = batch
                logits = self(images)
                loss = F.cross_entropy(logits, labels)
                accuracy = (logits.argmax(1) == labels).float().mean()
                self.log_dict({"train_loss": loss, "train_acc": accuracy},
                              on_step=False, on_epoch=True)
                return loss

            def configure_optimizers(self):
                optimizer, schedule = torch_recipe(settings, self.model, device,
                                                   steps_per_epoch)
                if schedule is None:
                    return optimizer
                return {"optimizer": optimizer,
                        "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

        class Turns(L.Callback):
            def on_train_epoch_start(self, trainer, module) -> None:
                turns.epoch_begin()

            def on_train_epoch_end(self, trainer, module) -> None:
                turns.epoch_end()

        workers = PEER_SETTINGS["num_workers"]
        loader = DataLoader(
            TensorDataset(torch.from_numpy(float_images(train)), torch.from_numpy(train.labels)),
            batch_size=settings.batch_size, shuffle=True, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed))
        self.module = Classifier()
        self.held = held
        self.device = device
        self.trainer = L.Trainer(
            accelerator=device.type, devices=1, max_epochs=settings.epochs,
            precision="bf16-mixed" if bf16 else "32-true", logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[Turns()])
        turns = EpochTurns("lightning", lambda: self.trainer.fit(self.module, loader))
        self.turns = turns

    def run_epoch(self) -> float:
        return self.turns.run_epoch()

    @torch.no_grad()
    def accuracy(self) -> float:
        self.turns.finish()
        model = self.module.model.to(self.device).eval()
        images = torch.from_numpy(float_images(self.held)).to(self.device)
        predicted = torch.cat([model(images[s : s + 1024]).argmax(1)
                               for s in range(0, len(images), 1024)]).cpu().numpy()
        return float((predicted == self.held.labels).mean())


# --- Keras --------------------------------------------------------------------------------------

def keras_copy(model: nn.Module, input_shape: tuple[int, int, int], dtype: str,
               data_format: str):
    """A Keras model with the same layers and the same weights as a torch `nn.Sequential`."""
    import keras

    channels, height, width = input_shape
    shape = input_shape if data_format == "channels_first" else (height, width, channels)
    layers, weights = [], []
    modules = list(model.children())
    for position, module in enumerate(modules):
        last = position == len(modules) - 1
        layer_dtype = "float32" if last else dtype  # the mixed-precision guide's float32 output
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0]
            if (module.stride, module.dilation, module.groups) != ((1, 1), (1, 1), 1) or \
                    module.padding != (k // 2, k // 2):
                raise ValueError(f"no Keras copy for {module}: only stride-1 'same' convolutions")
            layers.append(keras.layers.Conv2D(module.out_channels, k, padding="same",
                                              data_format=data_format, dtype=layer_dtype))
            weights.append([module.weight.detach().permute(2, 3, 1, 0).numpy(),
                            module.bias.detach().numpy()])
        elif isinstance(module, nn.Linear):
            layers.append(keras.layers.Dense(module.out_features, dtype=layer_dtype))
            weights.append([module.weight.detach().T.numpy(), module.bias.detach().numpy()])
        elif isinstance(module, nn.MaxPool2d) and module.kernel_size == 2 and not module.ceil_mode:
            layers.append(keras.layers.MaxPooling2D(2, data_format=data_format, dtype=dtype))
        elif isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            layers.append(keras.layers.GlobalAveragePooling2D(data_format=data_format,
                                                               dtype=dtype))
        elif isinstance(module, nn.Flatten):
            layers.append(keras.layers.Flatten(dtype=dtype))
        elif isinstance(module, nn.LeakyReLU):
            layers.append(keras.layers.LeakyReLU(module.negative_slope, dtype=dtype))
        elif isinstance(module, nn.ReLU):
            layers.append(keras.layers.ReLU(dtype=dtype))
        elif isinstance(module, nn.Dropout):
            layers.append(keras.layers.Dropout(module.p, dtype=dtype))
        else:
            raise ValueError(f"no Keras copy for {type(module).__name__}")
        if len(weights) < len(layers):
            weights.append(None)
    copy = keras.Sequential([keras.Input(shape), *layers])
    for layer, values in zip(layers, weights, strict=True):
        if values is not None:
            layer.set_weights(values)
    return copy


def one_cycle(settings: TrainSettings, steps_per_epoch: int):
    """torch's OneCycleLR (cosine, 30 % warm-up, div_factor 25, final_div_factor 1e4, the
    pipeline's schedule) as a Keras schedule of the optimizer's step count."""
    import keras
    from keras import ops

    total = settings.epochs * steps_per_epoch
    peak = settings.lr
    initial, final = peak / 25, peak / 25 / 1e4
    warmup_end, anneal_end = 0.3 * total - 1, total - 1

    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = ops.cast(step, "float32")
            warming = step <= warmup_end
            fraction = ops.where(warming, step / warmup_end,
                                 (step - warmup_end) / (anneal_end - warmup_end))
            start, end = ops.where(warming, initial, peak), ops.where(warming, peak, final)
            return end + (start - end) / 2 * (ops.cos(math.pi * fraction) + 1)

        def get_config(self) -> dict:
            return {}

    return OneCycle()


class KerasRun:
    """`model.fit` on numpy arrays with a Keras copy of the pipeline's model."""

    def __init__(self, model: nn.Module, settings: TrainSettings, train: Split, held: Split,
                 device: torch.device, bf16: bool, seed: int):
        import keras

        keras.utils.set_random_seed(seed)
        data_format = PEER_SETTINGS["data_format"]
        self.model = keras_copy(model.cpu(), train.images.shape[1:],
                                "mixed_bfloat16" if bf16 else "float32", data_format)
        steps_per_epoch = -(-len(train.labels) // settings.batch_size)
        schedule = (one_cycle(settings, steps_per_epoch) if settings.schedule == "onecycle"
                    else settings.lr)
        if settings.optimizer != "adam":
            raise ValueError("the Keras peer is set up for Adam, the benchmark's optimizer")
        self.model.compile(
            optimizer=keras.optimizers.Adam(schedule, epsilon=1e-8),  # torch's epsilon
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"], jit_compile=PEER_SETTINGS["jit_compile"])
        self.held = self._arrays(held, data_format)
        turns = None

        class Turns(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None) -> None:
                turns.epoch_begin()

            def on_epoch_end(self, epoch, logs=None) -> None:
                turns.epoch_end()

        images, labels = self._arrays(train, data_format)
        turns = EpochTurns("keras", lambda: self.model.fit(
            images, labels, batch_size=settings.batch_size, epochs=settings.epochs,
            shuffle=True, verbose=0, callbacks=[Turns()]))
        self.turns = turns

    @staticmethod
    def _arrays(split: Split, data_format: str) -> tuple[np.ndarray, np.ndarray]:
        images = float_images(split)
        if data_format == "channels_last":
            images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        return images, split.labels

    def run_epoch(self) -> float:
        return self.turns.run_epoch()

    def accuracy(self) -> float:
        self.turns.finish()
        images, labels = self.held
        return float(self.model.evaluate(images, labels, batch_size=1024, verbose=0,
                                         return_dict=True)["accuracy"])


PEERS = {"lightning": LightningRun, "keras": KerasRun}
