from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from pipeline.architectures import Cnn, Linear
from pipeline.artifacts import ArtifactError
from pipeline.checkpoint import Checkpoint, load_checkpoint
from pipeline.engine import fit
from pipeline.params import TrainSettings
from tests.conftest import CPU, toy_splits


def trained_checkpoint(seeds=(0,)) -> tuple[Checkpoint, list]:
    results = [fit(Linear(), TrainSettings(epochs=3, lr=0.05), toy_splits(), CPU, seed=seed,
                   log=lambda _: None) for seed in seeds]
    checkpoint = Checkpoint(Linear(), (1, 4, 4), ["left", "right"],
                            [r.state_dict for r in results], results[0].initial_state_dict,
                            "toy", "linear", {"seeds": list(seeds), "bf16": False})
    return checkpoint, results


def test_a_checkpoint_round_trips_with_weights_only(tmp_path):
    checkpoint, _ = trained_checkpoint()
    checkpoint.save(tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.architecture == Linear() and loaded.classes == ["left", "right"]
    assert loaded.input_shape == (1, 4, 4) and loaded.run["seeds"] == [0]
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(loaded.build()(x), checkpoint.build()(x))
    initial = loaded.build(loaded.initial_state_dict)
    assert not torch.equal(initial(x), loaded.build()(x))


def test_seed_copies_round_trip_in_order(tmp_path):
    checkpoint, results = trained_checkpoint(seeds=(0, 1, 2))
    checkpoint.save(tmp_path / "m.pt")
    copies = load_checkpoint(tmp_path / "m.pt").seed_models()
    assert len(copies) == 3
    for copy, result in zip(copies, results, strict=True):
        for key, value in copy.state_dict().items():
            assert torch.equal(value, result.state_dict[key])
    assert not torch.equal(copies[0].state_dict()["fc.weight"],
                           copies[1].state_dict()["fc.weight"])


def test_saving_the_same_training_twice_gives_the_same_bytes(tmp_path):
    """Nothing time-dependent is in a checkpoint, so `dvc repro -f` keeps its hash."""
    for name in ("a.pt", "b.pt"):
        trained_checkpoint()[0].save(tmp_path / name)
    digests = {hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.pt", "b.pt")}
    assert len(digests) == 1


def test_a_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 2, "architecture": {"arch": "cnn"}, "extra": np.dtype}, path)
    with pytest.raises(ArtifactError, match="holds Python objects or code besides tensors .*"
                       "anything in the file ran, so nothing did"):
        load_checkpoint(path)


@pytest.mark.parametrize(("payload", "reason"), [
    (torch.zeros(3), "not a checkpoint written by this pipeline"),
    ({"config": {"arch": "cnn"}, "state_dict": {}}, "format 2"),
    ({"format": 2, "architecture": {"arch": "resnet"}}, "unknown architecture 'resnet'"),
    ({"format": 2, "architecture": {"arch": "linear"}, "input_shape": [1, 4, 4],
      "classes": ["a", "b"], "initial_state_dict": {}}, "KeyError"),
])
def test_foreign_payloads_are_refused_with_the_reason(tmp_path, payload, reason):
    path = tmp_path / "foreign.pt"
    torch.save(payload, path)
    with pytest.raises(ArtifactError, match=reason):
        load_checkpoint(path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    checkpoint, _ = trained_checkpoint()
    checkpoint.architecture = Cnn()
    checkpoint.save(tmp_path / "m.pt")
    with pytest.raises(ArtifactError, match="seed copy 0: unexpected keys 'fc.bias', "
                                            "'fc.weight'; missing keys 'conv1.bias'"):
        load_checkpoint(tmp_path / "m.pt")


def test_missing_folders_and_non_checkpoints_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match="missing; run the train stage"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ArtifactError, match="is a folder"):
        load_checkpoint(tmp_path)
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ArtifactError, match="not a checkpoint this pipeline can load"):
        load_checkpoint(tmp_path / "notes.pt")
