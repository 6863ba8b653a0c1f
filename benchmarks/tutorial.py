"""The tutorials' training loop, kept faithful so the benchmark compares against what users had.

Per sample, `__getitem__` divides a float64 row by 255, builds a FloatTensor and one-hot encodes the
label; a shuffled DataLoader collates batches of 32 in the main process; the loss is
CrossEntropyLoss against the one-hot target; Adam at lr 0.001; fp32, default memory format and
thread count. Only the model classes are shared with the pipeline, so both loops train the same
architecture.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class TutorialDataset(Dataset):
    def __init__(self, pixels: np.ndarray, labels: np.ndarray, image_shape: tuple[int, ...] | None,
                 num_classes: int = 10):
        self.pixels = pixels.astype(np.float64)  # what DataFrame.values gives after read_csv
        self.labels = labels.astype(np.int64)
        self.image_shape = image_shape
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.FloatTensor(self.pixels[index] / 255.0)
        if self.image_shape is not None:
            image = image.view(*self.image_shape)
        target = torch.zeros(self.num_classes)
        target[self.labels[index]] = 1.0
        return image, target


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                loss_fn: nn.Module, device: torch.device) -> tuple[float, float, float]:
    """One epoch as the tutorial wrote it; (seconds, mean loss, accuracy)."""
    started = time.perf_counter()
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        optimizer.zero_grad()
        outputs = model(images)
        loss = loss_fn(outputs, targets)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(images)
        correct += (outputs.argmax(1) == targets.argmax(1)).sum().item()
        seen += len(images)
    return time.perf_counter() - started, total_loss / seen, correct / seen


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct, seen = 0, 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        correct += (model(images).argmax(1) == targets.argmax(1)).sum().item()
        seen += len(images)
    return correct / seen


def make_loaders(train: tuple[np.ndarray, np.ndarray], held_out: tuple[np.ndarray, np.ndarray],
                 image_shape: tuple[int, ...] | None, seed: int) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(TutorialDataset(*train, image_shape), batch_size=32, shuffle=True,
                              generator=generator)
    held_out_loader = DataLoader(TutorialDataset(*held_out, image_shape), batch_size=32)
    return train_loader, held_out_loader


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=0.001)
