from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.params import ParamsError, load_params, parse_params
from tests.conftest import ROOT

BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def params_with(**changes) -> dict:
    """A copy of the repo's params.yaml with dotted keys set (None deletes)."""
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = raw
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return raw


def refused(raw: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    return str(caught.value)


def test_the_repository_params_are_valid(repo_params):
    assert repo_params.run.datasets == ["digits"]
    assert set(repo_params.run.models) <= set(repo_params.models)
    digits = repo_params.datasets["digits"]
    assert digits.shape == (1, 8, 8) and digits.max_pixel == 16


def test_unknown_keys_get_a_did_you_mean():
    message = refused(params_with(train__epochz=3))
    assert "train.epochz: unknown key (did you mean 'epochs'?)" in message
    message = refused(params_with(datasets__digits__hedaer=True))
    assert "datasets.digits.hedaer: unknown key (did you mean 'header'?)" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"train__epochs": 0}, "train.epochs = 0: Input should be greater than or equal to 1"),
        ({"train__lr": 0}, "train.lr = 0: Input should be greater than 0"),
        ({"train__batch_size": "big"}, "train.batch_size = 'big'"),
        ({"prepare__valid_fraction": 1.0}, "prepare.valid_fraction = 1.0"),
        ({"prepare__valid_fraction": 0}, "prepare.valid_fraction = 0"),
        ({"execution__device": "tpu"}, "execution.device = 'tpu'"),
        ({"models__cnn__kernel_size": 4}, "kernel_size must be odd"),
        ({"datasets__digits__shape": [8, 8]},
         "datasets.digits.shape = [8, 8]: expected [channels, height, width]"),
        ({"datasets__digits__classes": ["a", "a"]}, "class names must be unique"),
        ({"datasets__digits__classes": 1}, "a number of classes from 2 to 100,000, or their"),
        ({"datasets__digits__classes": 100_001}, "datasets.digits.classes = 100001"),
        ({"datasets__digits__classes": True}, "datasets.digits.classes = True"),
        ({"models__cnn3__activation": "gelu"}, "models.cnn3.activation = 'gelu'"),
        ({"models__cnn3__dropout": 1.0}, "models.cnn3.dropout = 1.0"),
        ({"models__cnn3__channels": []}, "models.cnn3.channels = []"),
        ({"train__schedule": "cosine"}, "train.schedule = 'cosine'"),
        ({"models__cnn__seeds": 0}, "models.cnn.seeds = 0: Input should be greater than or equal"),
        ({"models__cnn__seeds": 17}, "models.cnn.seeds = 17"),
        ({"execution__tensorboard": "sometimes"}, "execution.tensorboard = 'sometimes'"),
    ],
)
def test_bad_values_name_the_key_and_value(change, expected):
    assert expected in refused(params_with(**change))


def test_a_model_listed_to_run_must_be_defined():
    message = refused(params_with(run__models=["cnn", "cnnn"]))
    assert "run.models[1] = 'cnnn' is not defined under 'models:'" in message
    assert "did you mean 'cnn'?" in message


def test_a_file_source_needs_exactly_one_location():
    message = refused(params_with(datasets__digits__train={"url": "http://x/a.csv",
                                                           "path": "a.csv"}))
    assert "exactly one of url, name, path or resource" in message


def test_per_model_overrides_apply_on_top_of_the_train_section(repo_params):
    cnn = repo_params.training_for("cnn")
    linear = repo_params.training_for("linear")
    assert cnn.lr == repo_params.models["cnn"].train.lr != repo_params.train.lr
    assert linear.lr == repo_params.train.lr
    assert cnn.epochs == linear.epochs == repo_params.train.epochs


def test_yaml_errors_name_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("run:\n  datasets: [digits\n")
    with pytest.raises(ParamsError, match=r"not valid YAML at line \d+"):
        load_params(path)


def test_looking_up_an_undefined_dataset_or_model_suggests_a_name(repo_params):
    assert repo_params.model("cnn").arch == "cnn"
    with pytest.raises(ParamsError, match=r"'digts' is not defined under `datasets:`.*'digits'"):
        repo_params.dataset("digts")
    with pytest.raises(ParamsError, match="'vgg' is not defined under `models:`"):
        repo_params.model("vgg")


def test_each_architecture_has_its_own_fields_and_defaults(repo_params):
    assert repo_params.model("linearnet").architecture().hidden == [256, 64]
    assert repo_params.model("keras_cnn").architecture().hidden == []
    assert repo_params.model("cnn3").architecture().hidden == [625]
    spec = repo_params.model("cnn")
    assert spec.seeds == 3 and spec.train.lr == 0.03
    assert not hasattr(spec.architecture(), "seeds")


def test_the_arch_choices_come_from_the_model_registry():
    from pipeline.architectures import ARCHITECTURES

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["models"]["cnn"] = {"arch": "resnet"}
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    for name in ARCHITECTURES:
        assert f"'{name}'" in str(error.value)


def test_errors_name_the_key_path_without_internal_tags():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["datasets"]["cifar10"]["shape"] = [3, 32]
    raw["models"]["cnn"]["channelz"] = [4]
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    message = str(error.value)
    assert "  - datasets.cifar10.shape = [3, 32]: expected [channels, height, width]" in message
    assert "  - models.cnn.channelz: unknown key (did you mean 'channels'?)" in message


def test_per_model_overrides_have_every_train_setting_with_its_bounds():
    from pipeline.params import TrainOverrides, TrainSettings

    assert list(TrainOverrides.model_fields) == list(TrainSettings.model_fields)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["models"]["cnn"]["train"] = {"epochs": 0, "optimizer": "rmsprop"}
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    assert "models.cnn.train.epochs = 0: Input should be greater than or equal to 1" in str(
        error.value)
    assert "models.cnn.train.optimizer = 'rmsprop'" in str(error.value)


def test_a_count_names_numbered_classes_and_many_names_are_checked_in_linear_time():
    ten_thousand = parse_params(params_with(datasets__digits__classes=10_000))
    assert ten_thousand.dataset("digits").classes == [str(c) for c in range(10_000)]
    names = [f"class {c}" for c in range(100_000)]
    listed = parse_params(params_with(datasets__digits__classes=names))  # seconds if quadratic
    assert listed.dataset("digits").classes == names
    message = refused(params_with(datasets__digits__classes=[*names[:-1], "class 7"]))
    assert "repeated: ['class 7']" in message


def test_a_drawing_recipe_under_a_dataset_is_told_where_it_moved():
    old_place = params_with(datasets__digits__drawing={"fit": 1.0, "center": "box"})
    message = refused(old_place)
    assert "datasets.digits.drawing: moved to drawing.digits (a setting only inference uses" \
        in message
    assert "drawing.digtis: no dataset 'digtis' is defined under 'datasets:' (did you mean " \
           "'digits'?)" in refused(params_with(drawing={"digtis": {"fit": 1.0}}))


def test_an_older_revisions_drawing_recipes_are_read_where_they_are_now():
    from pipeline.params import upgrade

    old = params_with(drawing=None)
    old["datasets"]["digits"]["drawing"] = {"fit": 0.5, "center": "mass"}
    upgraded = parse_params(upgrade(old))
    assert upgraded.drawing["digits"].fit == 0.5 and upgraded.drawing["digits"].center == "mass"


def test_a_drawing_section_with_every_recipe_commented_out_holds_none():
    assert parse_params(params_with(drawing=None)).drawing == {}
    from pipeline.params import upgrade

    odd = params_with(drawing=["not", "a", "mapping"])
    odd["datasets"]["digits"]["drawing"] = {"fit": 0.5}
    assert upgrade(odd)["drawing"] == ["not", "a", "mapping"]  # left for the schema to refuse
