from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from pipeline.analysis import layer_summary
from pipeline.architectures import (
    ARCHITECTURES,
    Cnn,
    ConvNet,
    ModelError,
    architecture_from_dict,
)
from pipeline.models import BUILDERS, build, count_params
from pipeline.params import load_params
from tests.conftest import ROOT


def build_arch(arch: str, shape=(1, 28, 28), classes=10, **fields) -> torch.nn.Module:
    return build(ARCHITECTURES[arch](**fields), shape, classes)


def test_every_architecture_has_a_builder():
    assert list(BUILDERS) == list(ARCHITECTURES)


@pytest.mark.parametrize(("arch", "expected"), [("linearnet", 218_058), ("cnn", 26_194),
                                                ("linear", 7_850), ("convnet", 50_186),
                                                ("simple_convnet", 433_890),
                                                ("deep_mnist", 3_274_634)])
def test_parameter_counts_of_the_source_material_at_1x28x28(arch, expected):
    assert count_params(build_arch(arch)) == expected


@pytest.mark.parametrize(("model", "expected"), [
    ("linearnet", 218_058), ("cnn", 26_194), ("keras_cnn", 50_186), ("cnn3", 1_379_557),
    ("simple_convnet", 433_890), ("deep_mnist", 3_274_634)])
def test_params_yaml_entries_build_the_models_they_name(model, expected):
    """The seed models are params entries only: the registry builds them from params.yaml."""
    spec = load_params(ROOT / "params.yaml").model(model)
    assert count_params(build(spec.architecture(), (1, 28, 28), 10)) == expected


def test_the_seed_models_have_the_published_layers():
    rows = layer_summary(build_arch("simple_convnet"), (1, 28, 28))
    assert [(r.name, r.output_shape[1:]) for r in rows if r.params] == [
        ("conv1", (30, 24, 24)), ("fc1", (100,)), ("fc2", (10,))]
    rows = layer_summary(build_arch("deep_mnist"), (1, 28, 28))
    assert [(r.kind, r.output_shape[1:]) for r in rows] == [
        ("Conv2d", (32, 28, 28)), ("ReLU", (32, 28, 28)), ("MaxPool2d", (32, 14, 14)),
        ("Conv2d", (64, 14, 14)), ("ReLU", (64, 14, 14)), ("MaxPool2d", (64, 7, 7)),
        ("Flatten", (3136,)), ("Linear", (1024,)), ("ReLU", (1024,)), ("Dropout", (1024,)),
        ("Linear", (10,))]


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 1, 1), (2, 5, 3)])
@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a != "simple_convnet"])
def test_every_architecture_fits_any_input_shape(arch, shape):
    model = build_arch(arch, shape=shape, classes=7)
    assert model(torch.zeros(4, *shape)).shape == (4, 7)


def test_simple_convnet_fits_small_images_and_refuses_a_kernel_larger_than_them():
    assert build_arch("simple_convnet", shape=(1, 8, 8))(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ModelError, match="kernel_size 5 is larger than the 3x3 images"):
        build_arch("simple_convnet", shape=(1, 3, 3))


def test_cnn_never_pools_below_1x1():
    rows = layer_summary(build_arch("cnn", shape=(1, 8, 8)), (1, 8, 8))
    pools = [r for r in rows if r.kind == "MaxPool2d"]
    assert [r.output_shape[-2:] for r in pools] == [(4, 4), (2, 2), (1, 1)]
    assert all(min(r.output_shape[-2:]) >= 1 for r in rows if len(r.output_shape) == 4)


def test_layer_summary_matches_torchsummary_for_the_tutorial_cnn():
    rows = layer_summary(build_arch("cnn"), (1, 28, 28))
    assert sum(r.params for r in rows) == 26_194
    convs = [(r.name, r.output_shape, r.params) for r in rows if r.kind == "Conv2d"]
    assert convs == [("conv1", (1, 8, 28, 28), 80), ("conv2", (1, 16, 14, 14), 1_168),
                     ("conv3", (1, 32, 7, 7), 4_640), ("conv4", (1, 64, 3, 3), 18_496)]
    assert rows[-1].output_shape == (1, 10)


def test_an_architecture_round_trips_through_a_plain_dict():
    original = Cnn(channels=[4, 8], head_hidden=12)
    assert architecture_from_dict(original.model_dump(mode="json")) == original
    with pytest.raises(ModelError, match="unknown architecture 'resnet'"):
        architecture_from_dict({"arch": "resnet"})


@pytest.mark.parametrize(("arch", "fields"), [("cnn", {"activation": "gelu"}),
                                              ("convnet", {"dropout": 1.0}),
                                              ("cnn", {"kernel_size": 4}),
                                              ("cnn", {"channels": []}),
                                              ("linear", {"hidden": [3]})])
def test_bad_architecture_fields_are_refused(arch, fields):
    with pytest.raises(ValidationError):
        ARCHITECTURES[arch](**fields)


@pytest.mark.parametrize(("shape", "classes"), [((28, 28), 10), ((1, 8, 8), 1)])
def test_bad_shapes_and_class_counts_are_refused(shape, classes):
    with pytest.raises(ModelError):
        build(Cnn(), shape, classes)


KERAS = {"channels": [32, 64], "activation": "relu", "dropout": 0.5}
CNN3 = {"channels": [32, 64, 128], "hidden": [625], "activation": "relu", "dropout": 0.3}


@pytest.mark.parametrize(("fields", "shape", "expected"), [
    (KERAS, (1, 28, 28), 50_186),
    (KERAS, (3, 32, 32), 60_362),
    (CNN3, (1, 28, 28), 1_379_557),
])
def test_convnet_matches_the_keras_example_and_the_3_conv_tutorial(fields, shape, expected):
    assert count_params(build(ConvNet(**fields), shape, 10)) == expected


def test_convnet_pools_like_the_padded_tutorial_and_drops_out_only_in_training():
    model = build(ConvNet(**CNN3), (1, 28, 28), 10)
    rows = layer_summary(model, (1, 28, 28))
    pools = [r.output_shape[-2:] for r in rows if r.kind == "MaxPool2d"]
    assert pools == [(14, 14), (7, 7), (4, 4)]
    assert [r.kind for r in rows].count("ReLU") == 4
    x = torch.rand(8, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
