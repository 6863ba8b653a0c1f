"""Random changes to training images (`train.augment`), a whole batch at once on its device.

Every image of a batch gets its own affine transform (shift, rotation, zoom, shear, and a
left-right mirror where the dataset allows one), applied with `F.affine_grid` and
`F.grid_sample` (bilinear, zeros outside: the datasets' dark background), and, with the
`erase` chance, a blanked rectangle of 2-25 % of its area. The random numbers are drawn on the
CPU from the training run's own generator, for the whole global batch, so the images a model
sees depend on the seed alone, not on the device or the number of data-parallel workers; the
generator's state is part of the resumable training state. Measurements: docs/performance.md,
"Augmentation".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.params import Augment

ERASED_AREA = (0.02, 0.25)  # share of the image a blanked rectangle covers
ERASED_ASPECT = (0.3, 3.3)  # its height / width


@dataclass
class Draws:
    """One batch's random parameters: an affine matrix per image (output to input coordinates,
    in affine_grid's [-1, 1] units) and an erased rectangle per image (rows, then columns, as
    shares of the side; empty where nothing is erased)."""

    theta: torch.Tensor  # N x 2 x 3
    erase: torch.Tensor  # N x 4: top, bottom, left, right

    def rows(self, part: slice) -> Draws:
        return Draws(self.theta[part], self.erase[part])


def draw(settings: Augment, count: int, generator: torch.Generator) -> Draws:
    """The parameters of `count` images; the same generator state gives the same draws."""
    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)

    def symmetric(amount: float) -> torch.Tensor:
        return uniform(-amount, amount)

    angle = symmetric(math.radians(settings.rotate))
    shear = symmetric(math.radians(settings.shear))
    zoom = 1.0 + symmetric(settings.scale)
    shift_x, shift_y = symmetric(2 * settings.translate), symmetric(2 * settings.translate)
    mirror = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if settings.flip else torch.ones(count)
    cos, sin, tan = angle.cos(), angle.sin(), shear.tan()
    # rotation @ shear, divided by the zoom; the mirror flips the output's x axis
    theta = torch.stack([
        torch.stack([cos * mirror / zoom, (cos * tan - sin) / zoom, shift_x], 1),
        torch.stack([sin * mirror / zoom, (sin * tan + cos) / zoom, shift_y], 1),
    ], 1)
    area = uniform(*ERASED_AREA)
    aspect = torch.exp(uniform(math.log(ERASED_ASPECT[0]), math.log(ERASED_ASPECT[1])))
    height, width = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    top, left = uniform(0, 1) * (1 - height), uniform(0, 1) * (1 - width)
    erased = uniform(0, 1) < settings.erase
    rectangle = torch.stack([top, top + height, left, left + width], 1)
    return Draws(theta.float(), torch.where(erased[:, None], rectangle, 0.0).float())


def apply(images: torch.Tensor, draws: Draws) -> torch.Tensor:
    """The float images (N x C x H x W) transformed and erased as `draws` says."""
    theta = draws.theta.to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    height, width = images.shape[-2:]
    erase = draws.erase.to(images.device)
    rows = (torch.arange(height, device=images.device) + 0.5) / height
    columns = (torch.arange(width, device=images.device) + 0.5) / width
    inside = ((rows[None, :, None] >= erase[:, 0, None, None])
              & (rows[None, :, None] < erase[:, 1, None, None])
              & (columns[None, None, :] >= erase[:, 2, None, None])
              & (columns[None, None, :] < erase[:, 3, None, None]))
    return moved.masked_fill(inside[:, None], 0.0)
