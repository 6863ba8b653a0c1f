from __future__ import annotations

import pytest
import torch

from pipeline.models import ModelConfig, build_model, count_params, format_summary, layer_summary


def config(arch: str, shape=(1, 28, 28), classes=10, **kw) -> ModelConfig:
    return ModelConfig(arch=arch, input_shape=shape, num_classes=classes, **kw)


@pytest.mark.parametrize(("arch", "expected"), [("linearnet", 218_058), ("cnn", 26_194),
                                                ("linear", 7_850)])
def test_tutorial_parameter_counts_at_1x28x28(arch, expected):
    assert count_params(build_model(config(arch))) == expected


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 1, 1), (2, 5, 3)])
@pytest.mark.parametrize("arch", ["linear", "linearnet", "cnn", "convnet"])
def test_every_architecture_fits_any_input_shape(arch, shape):
    model = build_model(config(arch, shape=shape, classes=7))
    assert model(torch.zeros(4, *shape)).shape == (4, 7)


def test_cnn_never_pools_below_1x1():
    rows = layer_summary(build_model(config("cnn", shape=(1, 8, 8))), (1, 8, 8))
    pools = [r for r in rows if r.kind == "MaxPool2d"]
    assert [r.output_shape[-2:] for r in pools] == [(4, 4), (2, 2), (1, 1)]
    assert all(min(r.output_shape[-2:]) >= 1 for r in rows if len(r.output_shape) == 4)


def test_layer_summary_matches_torchsummary_for_the_tutorial_cnn():
    rows = layer_summary(build_model(config("cnn")), (1, 28, 28))
    assert sum(r.params for r in rows) == 26_194
    convs = [(r.output_shape, r.params) for r in rows if r.kind == "Conv2d"]
    assert convs == [((1, 8, 28, 28), 80), ((1, 16, 14, 14), 1_168), ((1, 32, 7, 7), 4_640),
                     ((1, 64, 3, 3), 18_496)]
    text = format_summary(rows)
    assert "Total params: 26,194" in text
    assert "[-1, 64, 1, 1]" in text


def test_config_round_trips_through_a_plain_dict():
    original = config("cnn", channels=(4, 8), head_hidden=12)
    assert ModelConfig.from_dict(original.to_dict()) == original


@pytest.mark.parametrize("kwargs", [{"arch": "resnet"}, {"input_shape": (28, 28)},
                                    {"num_classes": 1}, {"activation": "gelu"},
                                    {"dropout": 1.0}])
def test_bad_configs_are_refused(kwargs):
    fields = {"arch": "cnn", "input_shape": (1, 8, 8), "num_classes": 10, **kwargs}
    with pytest.raises(ValueError):
        ModelConfig(**fields)


KERAS = {"channels": (32, 64), "hidden": (), "activation": "relu", "dropout": 0.5}
CNN3 = {"channels": (32, 64, 128), "hidden": (625,), "activation": "relu", "dropout": 0.3}


@pytest.mark.parametrize(("kwargs", "shape", "expected"), [
    (KERAS, (1, 28, 28), 50_186),
    (KERAS, (3, 32, 32), 60_362),
    (CNN3, (1, 28, 28), 1_379_557),
])
def test_convnet_matches_the_keras_example_and_the_3_conv_tutorial(kwargs, shape, expected):
    assert count_params(build_model(config("convnet", shape=shape, **kwargs))) == expected


def test_convnet_pools_like_the_padded_tutorial_and_drops_out_only_in_training():
    model = build_model(config("convnet", **CNN3))
    rows = layer_summary(model, (1, 28, 28))
    pools = [r.output_shape[-2:] for r in rows if r.kind == "MaxPool2d"]
    assert pools == [(14, 14), (7, 7), (4, 4)]
    assert [r.kind for r in rows].count("ReLU") == 4
    x = torch.rand(8, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
