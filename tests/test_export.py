"""pipeline-export and pipeline-predict --backend onnx, through their console scripts: every
default architecture exports with its parity check, and the exported file classifies as the
checkpoint does, in a process where torch cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.artifacts import save_arrays
from pipeline.checkpoint import Checkpoint
from pipeline.params import load_params
from pipeline.portable import load_portable
from tests.conftest import ROOT, tool_env

pytestmark = pytest.mark.slow  # two processes importing torch per architecture

SHAPE = (1, 8, 8)
CLASSES = [str(d) for d in range(10)]
DEFAULT_MODELS = list(yaml.safe_load((ROOT / "params.yaml").read_text())["models"])
# torch made unimportable: the onnx backend must not need it
WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; from pipeline.predict import cli; "
                 "sys.argv[0] = 'pipeline-predict'; cli()")


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=tool_env(), capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def test_split(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("split") / "test.pkl"
    save_arrays(path, {"images": rng.integers(0, 256, (300, *SHAPE), dtype=np.uint8),
                       "labels": rng.integers(0, 10, 300), "classes": CLASSES,
                       "split": "test"})
    return path


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_every_default_model_exports_and_predicts_the_same_without_torch(tmp_path, test_split,
                                                                          name):
    spec = load_params(ROOT / "params.yaml").model(name)
    architecture = spec.architecture()
    torch.manual_seed(0)
    from pipeline.models import build

    states = [build(architecture, SHAPE, 10).state_dict() for _ in range(2)]
    checkpoint = tmp_path / f"{name}.pt"
    Checkpoint(architecture, SHAPE, CLASSES, states, states[0], "digits", name).save(checkpoint)
    exported = tmp_path / f"{name}.onnx"
    done = run(["pipeline-export", "--checkpoint", str(checkpoint), "--out", str(exported),
                "--test", str(test_split), "--params", str(ROOT / "params.yaml")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"digits/{name}, 2 seed copies, input 1x8x8, 10 classes; ONNX Runtime matches " \
           "PyTorch on 300 test images" in done.stderr

    portable = load_portable(exported)
    assert (portable.classes, portable.input_shape, portable.seeds) == (CLASSES, SHAPE, 2)
    assert portable.drawing is not None  # digits' recipe travels in the file

    rows = tmp_path / "rows.csv"  # the digits layout: 64 pixels, then the label
    pixels = np.random.default_rng(1).integers(0, 17, (5, 64))
    rows.write_text("".join(",".join(map(str, [*row, k])) + "\n" for k, row in enumerate(pixels)))
    arguments = ["--checkpoint", str(exported), "--backend", "onnx", str(rows), "--top-k", "3"]
    onnx_run = run([sys.executable, "-c", WITHOUT_TORCH, *arguments], ROOT)
    torch_run = run(["pipeline-predict", "--checkpoint", str(checkpoint), str(rows),
                     "--top-k", "3"], ROOT)
    assert onnx_run.returncode == torch_run.returncode == 0, onnx_run.stderr + torch_run.stderr
    assert onnx_run.stdout == torch_run.stdout and onnx_run.stdout.count("\n") == 5


def test_an_export_checked_against_another_datasets_split_is_refused(tmp_path, test_split):
    from pipeline.architectures import Linear
    from pipeline.models import build

    state = build(Linear(), (1, 4, 4), 10).state_dict()
    checkpoint = tmp_path / "small.pt"
    Checkpoint(Linear(), (1, 4, 4), CLASSES, [state], state, "digits", "linear").save(checkpoint)
    out = tmp_path / "small.onnx"
    done = run(["pipeline-export", "--checkpoint", str(checkpoint), "--out", str(out),
                "--test", str(test_split)], tmp_path)
    assert done.returncode == 1 and not out.exists()
    assert done.stderr == (f"error: {test_split}: images of 1x8x8, but {checkpoint} takes 1x4x4;"
                           " give its dataset's test split with --test\n")


def test_predict_refuses_what_is_not_an_export_in_one_line(tmp_path):
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not a model")
    done = run([sys.executable, "-c", WITHOUT_TORCH, "--checkpoint", str(garbage),
                str(tmp_path / "x.png")], ROOT)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {garbage}: not an ONNX model ONNX Runtime can load")
    assert done.stderr.count("\n") == 1
    pt = run(["pipeline-predict", "--checkpoint", str(garbage), "--backend", "torch",
              str(tmp_path / "x.png")], ROOT)
    assert pt.stderr == f"error: {garbage}: an ONNX model; run it with --backend onnx\n"


def test_an_export_whose_metadata_does_not_fit_its_graph_is_refused(tmp_path, test_split):
    import onnx

    from pipeline.architectures import Linear
    from pipeline.models import build

    state = build(Linear(), SHAPE, 10).state_dict()
    checkpoint = tmp_path / "linear.pt"
    Checkpoint(Linear(), SHAPE, CLASSES, [state], state, "digits", "linear").save(checkpoint)
    exported = tmp_path / "linear.onnx"
    assert run(["pipeline-export", "--checkpoint", str(checkpoint), "--out", str(exported),
                "--test", str(test_split)], tmp_path).returncode == 0
    model = onnx.load(str(exported))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        "pipeline.classes": '["a", "b"]'})
    onnx.save(model, str(exported))
    done = run([sys.executable, "-c", WITHOUT_TORCH, "--checkpoint", str(exported),
                str(tmp_path / "x.png")], ROOT)
    assert done.returncode == 1
    assert done.stderr == (f"error: {exported}: its graph does not take `pixels` of 1x8x8 or "
                           "give `probabilities` of 2 classes as its metadata says; export it "
                           "again with pipeline-export\n")
