"""train.augment: the batch transforms (pipeline/augment.py), their params, training with them."""

from __future__ import annotations

import pytest
import torch

from pipeline import augment
from pipeline.architectures import Linear
from pipeline.engine import fit
from pipeline.params import Augment, TrainSettings
from tests.conftest import CPU, toy_splits
from tests.test_params import params_with, refused


def images(count: int = 16, side: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.rand((count, 1, side, side), generator=generator)


def draws(settings: Augment, count: int = 16, seed: int = 0) -> augment.Draws:
    return augment.draw(settings, count, torch.Generator().manual_seed(seed))


def test_the_same_seed_draws_the_same_changes_and_another_seed_others():
    recipe = Augment(translate=0.1, rotate=15, scale=0.1, shear=5, erase=0.5, flip=True)
    first = augment.apply(images(), draws(recipe))
    assert torch.equal(first, augment.apply(images(), draws(recipe)))
    assert not torch.equal(first, augment.apply(images(), draws(recipe, seed=1)))


def test_nothing_asked_changes_nothing_but_float_rounding():
    assert not Augment().active
    same = augment.apply(images(), draws(Augment()))
    torch.testing.assert_close(same, images(), atol=1e-5, rtol=0)


def test_flip_mirrors_about_half_the_images_exactly():
    batch = images(64)
    flipped = augment.apply(batch, draws(Augment(flip=True), 64))
    mirrored = [torch.allclose(f, torch.flip(b, dims=[-1]), atol=1e-5)
                for f, b in zip(flipped, batch, strict=True)]
    unchanged = [torch.allclose(f, b, atol=1e-5) for f, b in zip(flipped, batch, strict=True)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True))
    assert 16 < sum(mirrored) < 48


def test_erase_blanks_one_rectangle_of_the_stated_share():
    batch = torch.ones((200, 1, 20, 20))
    erased = augment.apply(batch, draws(Augment(erase=1.0), 200))
    shares = (erased == 0).float().mean((1, 2, 3))
    assert bool((shares > 0).all())
    low, high = augment.ERASED_AREA
    assert float(shares.min()) >= low / 2 and float(shares.max()) <= high * 1.5
    assert torch.equal(augment.apply(batch, draws(Augment(erase=0.0, rotate=0.001), 200)) > 0.99,
                       torch.ones_like(batch, dtype=torch.bool))


def test_a_shift_moves_the_ink_by_about_the_share_asked():
    batch = torch.zeros((400, 1, 20, 20))
    batch[:, :, 8:12, 8:12] = 1.0
    moved = augment.apply(batch, draws(Augment(translate=0.25), 400))
    columns = torch.arange(20.0)
    centre = (moved.sum(2)[:, 0] * columns).sum(1) / moved.sum((1, 2, 3))
    offsets = (centre - 9.5).abs()
    assert float(offsets.max()) <= 0.25 * 20 + 0.5 and float(offsets.max()) > 0.15 * 20


def test_one_worker_s_rows_are_changed_as_in_the_whole_batch():
    """Draws are made for the whole global batch, so a data-parallel worker's slice sees what
    one process would."""
    recipe = Augment(translate=0.1, rotate=10, erase=0.5)
    whole = augment.apply(images(), draws(recipe))
    part = augment.apply(images()[4:12], draws(recipe).rows(slice(4, 12)))
    assert torch.equal(part, whole[4:12])


def test_training_with_augmentation_is_deterministic_and_differs_from_training_without():
    recipe = Augment(translate=0.1, rotate=10, erase=0.3)
    settings = TrainSettings(epochs=3, lr=0.05, augment=recipe)
    first = fit(Linear(), settings, toy_splits(), CPU, seed=0, log=lambda _: None)
    again = fit(Linear(), settings, toy_splits(), CPU, seed=0, log=lambda _: None)
    plain = fit(Linear(), settings.model_copy(update={"augment": Augment()}), toy_splits(), CPU,
                seed=0, log=lambda _: None)
    assert [r.train_loss for r in first.history] == [r.train_loss for r in again.history]
    assert [r.train_loss for r in first.history] != [r.train_loss for r in plain.history]


@pytest.mark.parametrize(("change", "expected"), [
    ({"train__augment": {"rotate": 200}}, "train.augment.rotate = 200"),
    ({"train__augment": {"translate": -0.1}}, "train.augment.translate = -0.1"),
    ({"train__augment": {"scale": 1.0}}, "train.augment.scale = 1.0"),
    ({"train__augment": {"erase": 1.5}}, "train.augment.erase = 1.5"),
    ({"train__augment": {"flp": True}}, "train.augment.flp: unknown key (did you mean 'flip'?)"),
])
def test_bad_augmentation_values_name_the_key(change, expected):
    assert expected in refused(params_with(**change))


def test_flipping_digits_is_refused_where_it_is_set():
    message = refused(params_with(train__augment={"flip": True}))
    assert "train.augment.flip is true, but datasets.digits does not say a mirrored image " \
           "keeps its class (flip: true)" in message
    per_model = refused(params_with(models__cnn__train={"augment": {"flip": True}}))
    assert "models.cnn.train.augment.flip is true" in per_model
